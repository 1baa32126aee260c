"""profiles/slurm/preflight.py: sinfo parsing and the checks (pure functions; no cluster needed).

The same checks against a live cluster run in test_slurm.py (integration).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("nfpi_slurm_preflight", ROOT / "profiles" / "slurm" / "preflight.py")
assert _spec is not None and _spec.loader is not None
pf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = pf  # dataclasses look their module up by name
_spec.loader.exec_module(pf)

# what `sinfo -h -o '%P|%G|%c|%m|%a'` prints on a cluster with a default CPU partition and a GPU
# partition of two node types (lines of one partition merge into its largest node)
SINFO = """cpu*|(null)|64|256000|up
gpu|gpu:a100:4(S:0-1)|32|512000|up
gpu|gpu:h100:8,shard:16|96|1024000|up
old|(null)|8|16000|down
"""


@pytest.mark.parametrize(
    ("gres", "n"),
    [("(null)", 0), ("", 0), (None, 0), ("gpu:2", 2), ("gpu:a100:4(S:0-1)", 4), ("gpu:1,shard:8", 1),
     ("shard:8", 0), ("gpu:tesla:2,gpu:k80:1", 3)],
)
def test_gpu_count(gres: str | None, n: int) -> None:
    assert pf.gpu_count(gres) == n


def test_parse_sinfo_merges_node_groups_and_marks_the_default() -> None:
    parts = pf.parse_sinfo(SINFO)
    assert set(parts) == {"cpu", "gpu", "old"}
    assert parts["cpu"].default and not parts["gpu"].default
    assert (parts["gpu"].max_gpus, parts["gpu"].max_cpus, parts["gpu"].max_mem_mb) == (8, 96, 1024000)
    assert parts["cpu"].max_gpus == 0 and not parts["old"].up


def R(rule: str = "r", partition: str | None = None, gpus: int = 0, cpus: int = 1, mem: int | None = 1000):
    return pf.Request(rule, partition, gpus, cpus, mem)


def test_fitting_requests_pass() -> None:
    parts = pf.parse_sinfo(SINFO)
    assert pf.check([R(), R("t", "gpu", gpus=8, cpus=96, mem=1024000), R("c", "cpu", cpus=64)], parts) == []


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (R(partition="nope"), "partition 'nope' (resource slurm_partition) does not exist"),
        (R(gpus=1), "has no node with GPUs. Fix: --set-resources r:slurm_partition=gpu"),
        (R(partition="gpu", gpus=9), "asks for 9 GPUs but nodes of partition 'gpu' have at most 8"),
        (R(cpus=65), "asks for 65 CPUs (threads)"),
        (R(mem=256001), "asks for 256001 MB (resource mem_mb)"),
        (R(partition="old"), "partition 'old' is not up"),
    ],
)
def test_each_bad_request_is_named_with_its_fix(req: object, needle: str) -> None:
    problems = pf.check([req], pf.parse_sinfo(SINFO))
    assert len(problems) == 1 and needle in problems[0], problems


def test_gpu_rule_on_a_cluster_without_gpus_says_to_run_on_cpu() -> None:
    parts = pf.parse_sinfo("debug*|(null)|2|8000|up\n")
    (msg,) = pf.check([R("pretrain", gpus=2)], parts)
    assert "rule 'pretrain' asks for 2 GPU(s)" in msg and "resources.gpus: 0" in msg


def test_no_default_partition_and_none_given() -> None:
    parts = pf.parse_sinfo("a|(null)|2|8000|up\nb|(null)|2|8000|up\n")
    (msg,) = pf.check([R()], parts)
    assert "no default partition" in msg and "a, b" in msg


def test_same_request_reported_once() -> None:
    assert len(pf.check([R(partition="x"), R(partition="x")], pf.parse_sinfo(SINFO))) == 1
