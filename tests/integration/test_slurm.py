"""The workflow through a real SLURM: `scripts/slurm-local` + `profiles/slurm` (snakemake-executor-plugin-slurm).

A single-node cluster (munged, slurmctld, slurmd; two fake GPUs; no accounting database) is brought
up for the module and torn down at its end. The checks:

* the tiny workflow (`.test/config/config.yaml`), typed as a user would
  (`snakemake --profile slurm all --configfile .test/config/config.yaml` from the project root), runs
  every non-local job as a SLURM job: each was submitted (Snakemake's "submitted with SLURM jobid"),
  its plugin log `.snakemake/slurm_logs/rule_<rule>/.../<jobid>.log` exists, its own log names the
  same `SLURM_JOB_ID`, and slurmctld (squeue, no sacct) reports it COMPLETED under the run's name;
* a failing job fails the workflow with the job's own error message (not a hang, not a bare code);
* bad inputs give a clear message fast: a partition that does not exist, more GPUs than any node
  has, and a GPU rule on a cluster without GPUs (sbatch's refusal surfaced by the plugin);
* a GPU rule gets exactly the GPUs it asked for (CUDA_VISIBLE_DEVICES set by SLURM's GRES);
* `scripts/slurm-local down` leaves no daemon and no system config behind.

Timings (2-core shared VM): see docs/bench/ci.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
SLURM_LOCAL = ROOT / "scripts" / "slurm-local"
STATE = ROOT / ".slurm-local"
TINY_CONFIG = ".test/config/config.yaml"
# The whole tiny workflow by default; CI may name a smaller target (e.g. results/tiny/metrics/nfpi.json)
# when its time budget is tight.
TARGET = os.environ.get("NFPI_IT_TARGET", "all")
# Status polling: the profile's 10 s first poll is right for a real cluster; the tests only shorten it
# (the plugin keeps squeue as long as MinJobAge >= 3 x this value; the local cluster has 300 s).
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "3"]
VENV_BIN = str(Path(sys.executable).parent)

SUBMITTED_RE = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", re.M)
# one block per scheduled job in Snakemake's output: "rule x:" / "localrule x:" then indented fields
JOB_BLOCK_RE = re.compile(r"^(local)?rule (\w+):\n((?:    .*\n)+)", re.M)
JOB_ID_IN_LOG_RE = re.compile(r"SLURM_JOB_ID\D{0,3}(\d+)")


@dataclass(frozen=True)
class Run:
    """One finished `snakemake` invocation."""

    returncode: int
    output: str  # stdout + stderr
    workdir: Path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"  # a shared 2-core machine: jobs must not each spawn a thread per core
    env.pop("SLURM_CONF", None)  # the cluster is found through /etc/slurm/slurm.conf, like on a real one
    return env


def slurm_local(*args: str, check: bool = True, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = _env() | (extra_env or {})
    return subprocess.run(
        [str(SLURM_LOCAL), *args], cwd=ROOT, env=env, text=True, capture_output=True, check=check, timeout=300
    )


def snakemake(workdir: Path, *args: str, timeout: float = 900) -> Run:
    """`snakemake --profile slurm ...` in `workdir` (which has the `slurm` profile link, like the repo root)."""
    cmd = [str(Path(VENV_BIN) / "snakemake"), "--profile", "slurm", *FAST_POLL, *args]
    proc = subprocess.run(cmd, cwd=workdir, env=_env(), text=True, capture_output=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr, workdir)


def squeue_states() -> dict[str, tuple[str, str]]:
    """job id -> (state, job name) for every job slurmctld still remembers (MinJobAge=300 s)."""
    out = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%j"],
        env=_env(),
        text=True,
        capture_output=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


def daemon_pids() -> dict[str, int]:
    pids = {}
    for f in (STATE / "run").glob("*.pid") if (STATE / "run").is_dir() else []:
        text = f.read_text().strip()
        if text.isdigit():
            pids[f.stem] = int(text)
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs its daemons as root (CI runs as root)")
    if Path("/etc/slurm/slurm.conf").exists() and not Path("/etc/slurm/slurm.conf").is_symlink():
        pytest.skip("this machine has a real SLURM configuration; not shadowing it with a local cluster")
    slurm_local("up")
    try:
        yield
    finally:
        slurm_local("down", check=False)


def _mini_workflow(tmp: Path, body: str) -> Path:
    """A throwaway workflow (for failure and bad-input cases) with the project's `slurm` profile link."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "Snakefile").write_text(body)
    (tmp / "slurm").symlink_to(ROOT / "profiles" / "slurm")
    return tmp


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project as a user has it (Snakefile, workflow/, config/, .test/, profiles, `slurm` link, nfpi/),
    copied so the run neither races other work in the checkout nor leaves results there."""
    if not (ROOT / TINY_CONFIG).is_file():
        pytest.fail(f"{TINY_CONFIG} is missing: the tiny CI workflow config is needed for this test")
    dest = tmp_path_factory.mktemp("project") / "nfpi"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", ".slurm-local", "__pycache__", "*.pyc", ".pytest_cache", "data"
    )
    shutil.copytree(ROOT, dest, symlinks=True, ignore=ignore)
    assert (dest / "slurm").resolve() == (dest / "profiles" / "slurm").resolve(), "./slurm must link profiles/slurm"
    return dest


def _jobs(output: str) -> dict[str, tuple[str, list[str]]]:
    """Snakemake jobid -> (rule, log files) for the jobs this run scheduled on SLURM (local rules left out)."""
    jobs = {}
    for m in JOB_BLOCK_RE.finditer(output):
        if m.group(1):  # localrule: runs in the main process by design (e.g. `all`)
            continue
        fields = dict(
            line.strip().split(": ", 1) for line in m.group(3).splitlines() if ": " in line.strip()
        )
        if "jobid" in fields:
            logs = [s.strip() for s in fields.get("log", "").split(",") if s.strip()]
            jobs[fields["jobid"]] = (m.group(2), logs)
    return jobs


def test_tiny_workflow_runs_every_job_as_a_slurm_job(cluster: None, project_copy: Path) -> None:
    # target first: --configfile takes several values and would swallow a target written after it
    run = snakemake(project_copy, TARGET, "--configfile", TINY_CONFIG)
    assert run.returncode == 0, run.output[-6000:]

    submitted = {m.group(1): (m.group(2), Path(m.group(3))) for m in SUBMITTED_RE.finditer(run.output)}
    jobs = _jobs(run.output)
    assert jobs, "no job ran: " + run.output[-3000:]
    missing = sorted(j for j in jobs if j not in submitted)
    assert not missing, f"jobs that did not go through sbatch: {[jobs[j][0] for j in missing]}"

    queue = squeue_states()
    for jobid, (rule, logs) in jobs.items():
        slurm_id, plugin_log = submitted[jobid]
        # the plugin's own per-job log (sbatch --output), kept by the profile
        assert plugin_log.is_file(), f"rule {rule}: no SLURM log {plugin_log}"
        assert plugin_log.name == f"{slurm_id}.log" and f"rule_{rule}" in plugin_log.parts
        # slurmctld's record of the job, read with squeue (this cluster has no sacct database)
        assert slurm_id in queue, f"rule {rule}: SLURM job {slurm_id} unknown to squeue"
        state, name = queue[slurm_id]
        assert state == "COMPLETED", f"rule {rule}: SLURM job {slurm_id} is {state}"
        # the job's own log: the stage module logs SLURM_JOB_ID at start
        assert logs, f"rule {rule} has no log: file; every rule must log (and its stage logs SLURM_JOB_ID)"
        text = (project_copy / logs[0]).read_text()
        ids = JOB_ID_IN_LOG_RE.findall(text)
        assert ids and ids[0] == slurm_id, f"rule {rule}: log {logs[0]} names SLURM_JOB_ID {ids}, expected {slurm_id}"
    # one workflow run = one SLURM job name (the run id the plugin polls squeue by)
    names = {queue[submitted[j][0]][1] for j in jobs}
    assert len(names) == 1, names


def test_two_gpu_training_job_launches_torchrun_with_two_processes(cluster: None, project_copy: Path) -> None:
    """resources.gpus: 2 -> the training rule asks SLURM for --gpus=2 and starts torchrun with 2 processes.

    The fake GPUs have no device behind them, so the two ranks fall back to CPU (gloo): the same code path
    as on a GPU node, minus CUDA.
    """
    import yaml

    run_name = yaml.safe_load((project_copy / TINY_CONFIG).read_text())["run"]
    target = f"results/{run_name}/flows/pretrain.pt"
    # a second config file on top of the tiny one (--config cannot set a nested integer)
    two_gpus = project_copy / "two_gpus.yaml"
    two_gpus.write_text("resources:\n  gpus: 2\n")
    run = snakemake(project_copy, target, "--configfile", TINY_CONFIG, str(two_gpus), "--forcerun", "pretrain")
    assert run.returncode == 0, run.output[-6000:]
    # torchrun, or its module form `python -m torch.distributed.run` (the same launcher)
    assert re.search(r"(torchrun|-m torch\.distributed\.run) --standalone --nproc_per_node=2", run.output), run.output[-3000:]
    assert "gpu=2" in run.output  # the job's resources as Snakemake submitted them
    log = (project_copy / f"results/{run_name}/logs/pretrain.log").read_text()
    assert re.search(r"rank \d/2", log), log[-3000:]
    (slurm_id,) = [m.group(2) for m in SUBMITTED_RE.finditer(run.output)]
    assert JOB_ID_IN_LOG_RE.findall(log)[0] == slurm_id


FAILING = r'''
rule all:
    input: "ok.txt", "boom.txt"

rule ok:
    output: "ok.txt"
    log: "logs/ok.log"
    resources: mem_mb=100, runtime=5
    shell: "echo SLURM_JOB_ID=$SLURM_JOB_ID > {log}; touch {output}"

rule boom:
    output: "boom.txt"
    log: "logs/boom.log"
    resources: mem_mb=100, runtime=5
    shell: "python -c 'import sys; sys.exit(\"nfpi-it: deliberate failure in rule boom\")' 2> {log}"
'''


def test_failing_job_fails_the_workflow_with_its_error(cluster: None, tmp_path: Path) -> None:
    wd = _mini_workflow(tmp_path / "wf", FAILING)
    run = snakemake(wd, "all", timeout=300)
    assert run.returncode != 0
    assert "Error in rule boom" in run.output
    # the job's own message reaches the user (show-failed-logs), not just an exit code
    assert "nfpi-it: deliberate failure in rule boom" in run.output, run.output[-3000:]
    ids = [m.group(2) for m in SUBMITTED_RE.finditer(run.output)]
    states = {squeue_states()[i][0] for i in ids}
    assert "FAILED" in states, states
    assert not (wd / "boom.txt").exists()


GPU = r'''
rule gpu:
    output: "gpu.txt"
    log: "logs/gpu.log"
    threads: 1
    resources: mem_mb=100, runtime=5, gpu=2
    shell: "echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {log}; touch {output}"

rule cpu:
    output: "cpu.txt"
    log: "logs/cpu.log"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "echo SLURM_JOB_ID=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES:-unset}} > {log}; touch {output}"
'''


def test_gpu_rule_gets_its_gpus_and_cpu_rule_none(cluster: None, tmp_path: Path) -> None:
    wd = _mini_workflow(tmp_path / "wf", GPU)
    run = snakemake(wd, "gpu.txt", "cpu.txt", timeout=300)
    assert run.returncode == 0, run.output[-3000:]
    assert "CUDA_VISIBLE_DEVICES=0,1" in (wd / "logs/gpu.log").read_text()
    assert "CUDA_VISIBLE_DEVICES=unset" in (wd / "logs/cpu.log").read_text()


def test_unknown_partition_is_a_clear_error(cluster: None, tmp_path: Path) -> None:
    wd = _mini_workflow(tmp_path / "wf", FAILING)
    run = snakemake(wd, "ok.txt", "--default-resources", "slurm_partition=no-such-partition", timeout=120)
    assert run.returncode != 0
    assert "SLURM sbatch failed" in run.output and "Invalid partition name specified" in run.output, run.output[-3000:]


def test_more_gpus_than_any_node_is_a_clear_error(cluster: None, tmp_path: Path) -> None:
    wd = _mini_workflow(tmp_path / "wf", GPU)
    run = snakemake(wd, "gpu.txt", "--set-resources", "gpu:gpu=64", timeout=120)
    assert run.returncode != 0
    assert "Requested node configuration is not available" in run.output, run.output[-3000:]


# the hook the project's Snakefile runs (profiles/slurm/preflight.py), on a throwaway workflow
PREFLIGHT = f"""
import sys
sys.path.insert(0, {str(ROOT / "profiles" / "slurm")!r})
from preflight import check_workflow

onstart:
    check_workflow(workflow)
"""


def test_preflight_refuses_bad_requests_before_submitting(cluster: None, tmp_path: Path) -> None:
    wd = _mini_workflow(tmp_path / "wf", PREFLIGHT + GPU)
    run = snakemake(
        wd, "gpu.txt", "cpu.txt", "--set-resources", "gpu:gpu=64", "cpu:slurm_partition=no-such-partition", timeout=120
    )
    assert run.returncode != 0
    assert "SLURM pre-flight check" in run.output, run.output[-3000:]
    assert "rule 'gpu' asks for 64 GPUs but nodes of partition 'debug' have at most 2" in run.output
    assert "rule 'cpu': partition 'no-such-partition' (resource slurm_partition) does not exist" in run.output
    assert not SUBMITTED_RE.search(run.output), "the pre-flight check must stop the run before any sbatch"


def test_gpu_rule_on_a_cluster_without_gpus_is_a_clear_error(cluster: None, tmp_path: Path) -> None:
    # the same cluster restarted with no GRES at all (a CPU-only partition)
    slurm_local("down")
    slurm_local("up", extra_env={"SLURM_LOCAL_GPUS": "0"})
    try:
        # without the pre-flight hook: sbatch's refusal, surfaced by the plugin; the CPU rule still runs
        wd = _mini_workflow(tmp_path / "plain", GPU)
        run = snakemake(wd, "gpu.txt", "cpu.txt", "--keep-going", timeout=120)
        assert run.returncode != 0
        assert "Error in rule gpu" in run.output
        assert re.search(
            r"sbatch: error: .*(Requested node configuration is not available|Invalid generic resource)", run.output
        ), run.output[-3000:]
        assert (wd / "cpu.txt").exists(), "the CPU rule must still run on a CPU-only cluster"
        # with it: refused at start, naming the rule and the fix
        wd = _mini_workflow(tmp_path / "checked", PREFLIGHT + GPU)
        run = snakemake(wd, "gpu.txt", "cpu.txt", timeout=120)
        assert run.returncode != 0
        assert "rule 'gpu' asks for 2 GPU(s)" in run.output and "has no node with GPUs" in run.output, run.output[-3000:]
        assert not SUBMITTED_RE.search(run.output)
    finally:
        slurm_local("down")
        slurm_local("up")


def test_sigterm_from_slurm_checkpoints_and_the_retried_job_resumes(cluster: None, project_copy: Path) -> None:
    """SLURM's warning before a time limit (`--signal=TERM@<s>`, here sent at once with `scancel --signal=TERM`)
    reaches the training stage through the job step: it writes its resume checkpoint at the step it is at and
    fails; Snakemake's retry (`--retries 1`) submits a new SLURM job, which resumes from that step."""
    target = "results/kill/flows/pretrain.pt"  # .test/config/kill.yaml: 60 steps, a checkpoint every 10
    state = project_copy / "results/kill/flows/pretrain.pt.resume/state.pt"
    log = project_copy / "results/kill/logs/pretrain.log"
    out = project_copy / "slurm-sigterm.out"
    cmd = [str(Path(VENV_BIN) / "snakemake"), "--profile", "slurm", *FAST_POLL, target,
           "--configfile", TINY_CONFIG, ".test/config/kill.yaml", "--retries", "1"]
    with open(out, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=project_copy, env=_env(), stdout=fh, stderr=subprocess.STDOUT, text=True)

    def poll(what: str, cond, timeout: float = 900):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            value = cond()
            if value:
                return value
            if proc.poll() is not None:
                pytest.fail(f"snakemake ended ({proc.returncode}) before {what}:\n{out.read_text()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"timed out waiting for {what}")

    def checkpointed_job() -> str | None:
        import torch

        try:
            step = int(torch.load(state, map_location="cpu", weights_only=True)["step"])
        except (FileNotFoundError, RuntimeError, EOFError):
            return None
        if step < 10:
            return None
        rows = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i|%k"], env=_env(),
                              text=True, capture_output=True, check=True).stdout.split()
        ids = [r.split("|")[0] for r in rows if "pretrain" in r]
        return ids[0] if ids else None

    first = poll("a pretrain checkpoint", checkpointed_job)
    subprocess.run(["scancel", "--signal=TERM", first], env=_env(), check=True)
    stopped = poll("the stop line", lambda: re.search(r"stopped at step (\d+) of 60 on SIGTERM",
                                                        log.read_text() if log.exists() else ""))
    assert proc.wait(timeout=900) == 0, out.read_text()[-6000:]
    text = out.read_text()
    assert squeue_states()[first][0] == "FAILED"  # exit code 143: the stage stopped on the signal
    pretrain_ids = [m.group(2) for m in SUBMITTED_RE.finditer(text)][1:]  # the first job is `prepare`
    assert len(pretrain_ids) == 2 and pretrain_ids[0] == first, text[-4000:]
    assert squeue_states()[pretrain_ids[1]][0] == "COMPLETED"
    final = log.read_text()
    assert f"resumed from step {stopped.group(1)} of 60" in final, final[-3000:]
    assert JOB_ID_IN_LOG_RE.findall(final)[0] == pretrain_ids[1]


def test_down_leaves_nothing_running(cluster: None) -> None:
    pids = daemon_pids()
    assert set(pids) == {"munged", "slurmctld", "slurmd"}, pids
    assert all(alive(p) for p in pids.values())
    slurm_local("down")
    assert not any(alive(p) for p in pids.values()), "a SLURM daemon survived `slurm-local down`"
    assert not Path("/etc/slurm/slurm.conf").is_symlink(), "`down` must remove its /etc/slurm/slurm.conf link"
    status = slurm_local("status", check=False)
    assert status.returncode == 3 and "stopped" in status.stdout
    # idempotent: a second `down` is a no-op
    assert slurm_local("down", check=False).returncode == 0
