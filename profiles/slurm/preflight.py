"""Pre-flight check of a SLURM run: refuse at start-up what sbatch would refuse hours later.

sbatch itself rejects a job that names an unknown partition or asks for GPUs no node has, and the
executor plugin surfaces that message; but it does so only when the job is *submitted*, which for a GPU
rule can be after hours of CPU jobs. The workflow's ``onstart`` calls :func:`check_workflow`, which
compares every job still to run with what ``sinfo`` reports and fails before the first submission,
naming the rule, the resource and the fix.

Usable without Snakemake too (the same check from the command line)::

    python profiles/slurm/preflight.py --partition gpu --gpus 2 --mem-mb 16000 --cpus 8
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Partition", "Request", "parse_sinfo", "gpu_count", "check", "check_workflow", "main"]

# sinfo: one line per (partition, node group): name with '*' on the default | GRES | CPUs | memory MB | up?
SINFO_FORMAT = "%P|%G|%c|%m|%a"
_GPU_RE = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


@dataclass(frozen=True)
class Partition:
    """What one partition offers, as the largest node of it (a job runs on one node here)."""

    name: str
    default: bool  # sinfo marks the cluster's default partition with '*'
    max_gpus: int  # most GPUs (GRES gpu) on one node
    max_cpus: int
    max_mem_mb: int
    up: bool


@dataclass(frozen=True)
class Request:
    """What one rule's jobs ask SLURM for (the plugin's resource names)."""

    rule: str
    partition: str | None  # resource slurm_partition; None: the cluster's default partition
    gpus: int  # resource gpu (or the count in gres="gpu[:model]:N")
    cpus: int  # threads (cpus_per_task when set)
    mem_mb: int | None


def gpu_count(gres: str | None) -> int:
    """GPUs in a GRES string: ``gpu:2``, ``gpu:a100:4(S:0-1)``, ``gpu:1,shard:8`` -> 2, 4, 1; ``(null)`` -> 0."""
    if not gres:
        return 0
    return sum(int(n) for n in _GPU_RE.findall(gres.strip()))


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from ``sinfo -h -o '%P|%G|%c|%m|%a'`` output (several lines per partition merge)."""
    parts: dict[str, Partition] = {}
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        raw, gres, cpus, mem, avail = fields
        name = raw.rstrip("*")
        mem_mb = int(re.sub(r"\D.*", "", mem) or 0)
        cpu_n = int(re.sub(r"\D.*", "", cpus) or 0)
        new = Partition(name, raw.endswith("*"), gpu_count(gres), cpu_n, mem_mb, avail.strip() == "up")
        old = parts.get(name)
        if old is not None:
            new = Partition(
                name,
                old.default or new.default,
                max(old.max_gpus, new.max_gpus),
                max(old.max_cpus, new.max_cpus),
                max(old.max_mem_mb, new.max_mem_mb),
                old.up or new.up,
            )
        parts[name] = new
    return parts


def check(requests: Iterable[Request], parts: Mapping[str, Partition]) -> list[str]:
    """Problems (one message each, with the fix) of these requests on these partitions; [] when fine."""
    problems: list[str] = []
    default = next((p for p in parts.values() if p.default), None)
    names = ", ".join(sorted(parts)) or "(none)"
    seen: set[Request] = set()
    for req in requests:
        if req in seen:
            continue
        seen.add(req)
        where = f"rule '{req.rule}'"
        if req.partition is None:
            if default is None:
                problems.append(
                    f"{where}: no slurm_partition given and this cluster has no default partition; "
                    f"fix: --default-resources slurm_partition=<one of: {names}>"
                )
                continue
            part = default
        elif req.partition not in parts:
            problems.append(
                f"{where}: partition '{req.partition}' (resource slurm_partition) does not exist on this "
                f"cluster; partitions: {names}. Fix: --set-resources {req.rule}:slurm_partition=<one of them> "
                f"or change slurm_partition in profiles/slurm/config.yaml"
            )
            continue
        else:
            part = parts[req.partition]
        if not part.up:
            problems.append(f"{where}: partition '{part.name}' is not up (sinfo); pick another with slurm_partition")
        if req.gpus > 0 and part.max_gpus == 0:
            gpu_parts = sorted(p.name for p in parts.values() if p.max_gpus > 0)
            problems.append(
                f"{where} asks for {req.gpus} GPU(s) (resource gpu, from config resources.gpus) but partition "
                f"'{part.name}' has no node with GPUs. Fix: "
                + (
                    f"--set-resources {req.rule}:slurm_partition={gpu_parts[0]} (GPU partitions: {', '.join(gpu_parts)})"
                    if gpu_parts
                    else "this cluster has no GPUs: set resources.gpus: 0 in the config (the stages run on CPU)"
                )
            )
        elif req.gpus > part.max_gpus:
            problems.append(
                f"{where} asks for {req.gpus} GPUs but nodes of partition '{part.name}' have at most "
                f"{part.max_gpus}; fix: resources.gpus <= {part.max_gpus} in the config"
            )
        if part.max_cpus and req.cpus > part.max_cpus:
            problems.append(
                f"{where} asks for {req.cpus} CPUs (threads) but nodes of partition '{part.name}' have at most "
                f"{part.max_cpus}; fix: lower its threads in the config's threads: section"
            )
        if req.mem_mb and part.max_mem_mb and req.mem_mb > part.max_mem_mb:
            problems.append(
                f"{where} asks for {req.mem_mb} MB (resource mem_mb) but nodes of partition '{part.name}' have "
                f"at most {part.max_mem_mb} MB; fix: lower resources.mem_mb in the config"
            )
    return problems


def read_sinfo() -> dict[str, Partition]:
    if shutil.which("sinfo") is None:
        raise RuntimeError("sinfo not found: this is not a SLURM submit host (or SLURM's bin is not on PATH)")
    out = subprocess.run(
        ["sinfo", "-h", "-o", SINFO_FORMAT], text=True, capture_output=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"sinfo failed ({out.returncode}): {out.stderr.strip()}")
    return parse_sinfo(out.stdout)


def _as_int(value: object, default: int = 0) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def check_workflow(workflow: object) -> None:
    """``onstart`` hook: check every job still to run against sinfo; raise naming each problem.

    Does nothing unless the run uses the slurm executor (local runs, dry runs and the jobs themselves
    are untouched: Snakemake runs no hooks inside cluster jobs).
    """
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "name", None) != "slurm":
        return
    requests = []
    for job in workflow.dag.needrun_jobs():  # type: ignore[attr-defined]
        if job.is_local:
            continue
        res = job.resources
        gpus = _as_int(res.get("gpu"))
        if not gpus and "gpu" in str(res.get("gres") or ""):
            gpus = gpu_count(str(res.get("gres"))) or 1
        requests.append(
            Request(
                rule=job.rule.name,
                partition=res.get("slurm_partition") or None,
                gpus=gpus,
                cpus=_as_int(res.get("cpus_per_task"), 0) or _as_int(job.threads, 1),
                mem_mb=_as_int(res.get("mem_mb"), 0) or None,
            )
        )
    problems = check(requests, read_sinfo())
    if problems:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(
            "SLURM pre-flight check (profiles/slurm/preflight.py) failed, nothing was submitted:\n  - "
            + "\n  - ".join(problems)
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--partition", default=None, help="partition to check (default: the cluster's default)")
    ap.add_argument("--gpus", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--mem-mb", type=int, default=None)
    args = ap.parse_args(argv)
    problems = check([Request("cli", args.partition, args.gpus, args.cpus, args.mem_mb)], read_sinfo())
    for p in problems:
        print(f"preflight: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
