"""The classifier rules and prepare on a real Snakemake (dry runs under the SLURM executor; no cluster
needed: a dry run submits nothing) and the start-up check of the EVA02 weights file.

Runs in temporary working directories, like tests/test_workflow.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def _snakemake(args: list[str], cwd: Path, overlay: dict) -> subprocess.CompletedProcess[str]:
    cfg = cwd / "overlay.yaml"
    cfg.write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(SNAKEMAKE + args + ["--configfile", str(cfg)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _jobs(dry_run: str) -> dict[str, list[str]]:
    """``{rule: [job block, ...]}`` of a ``-n -p`` listing."""
    out: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", dry_run):
        m = re.search(r"^(?:local)?(?:rule|checkpoint) (\w+):", block, re.M)
        if m:
            out.setdefault(m.group(1), []).append(block)
    return out


# Which rules Snakemake runs on the submit host under the SLURM executor: its own Workflow.is_local
# with the slurm plugin in place (a dry run prints no local/remote decision, and no cluster is needed).
# `_workflow` / `_executor_plugin` are Snakemake 9 internals (pinned in requirements-lock.txt).
_LOCAL_RULES = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), snakefile=Path(sys.argv[1]), workdir=Path.cwd(),
                      config_settings=ConfigSettings(configfiles=[Path(sys.argv[2])]))._workflow
    wf._executor_plugin = ExecutorPluginRegistry().get_plugin("slurm")
    print(json.dumps(sorted(r.name for r in wf.rules if wf.is_local(r))))
"""


def _local_rules_under_slurm(tmp_path: Path, overlay: dict) -> list[str]:
    import json

    cfg = tmp_path / "overlay.yaml"
    cfg.write_text(yaml.safe_dump(overlay))
    proc = subprocess.run([sys.executable, "-c", _LOCAL_RULES, str(ROOT / "Snakefile"), str(cfg)], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("download", [True, False])
def test_under_slurm_prepare_runs_on_the_submit_host_only_when_it_downloads(tmp_path: Path, download: bool) -> None:
    root = tmp_path / "cifar"
    if not download:  # the workflow checks at start-up that the files are there (nfpi.validation)
        (root / "cifar-10-batches-py").mkdir(parents=True)
    local = _local_rules_under_slurm(tmp_path, {"run": "dl", "data": {"name": "cifar10", "root": str(root),
                                                                      "download": download}})
    assert ("prepare" in local) is download
    assert "pretrain" not in local and "swin" not in local  # the compute stays on the cluster
    assert {"all", "tables"} <= set(local)  # rules without a command are local anyway


def test_with_two_gpus_the_transformer_runs_launch_torchrun_on_both(tmp_path: Path) -> None:
    # No GPU is reserved idle: swin / eva02 run one DDP process per GPU, like the flow rules.
    proc = _snakemake(["all", "-n", "-p", "--executor", "slurm", "--jobs", "1"], tmp_path,
                      {"run": "gpus2", "resources": {"gpus": 2, "mem_mb": {"cpu": 1000, "train": 2000, "infer": 1000},
                                                     "runtime_min": {"cpu": 10, "train": 10, "infer": 10}}})
    assert proc.returncode == 0, proc.stderr[-4000:]
    jobs = _jobs(proc.stdout)
    torchrun2 = "-m torch.distributed.run --standalone --nproc_per_node=2 -m nfpi "
    (pretrain,) = jobs["pretrain"]
    assert "gpu=2," in pretrain and torchrun2 + "pretrain " in pretrain
    for rule in ("swin", "eva02"):
        assert len(jobs[rule]) in (2, 4)  # the standard-augmentation rows only with experiments.standard_aug
        for block in jobs[rule]:
            assert "gpu=2," in block and f"{torchrun2}classify --section {rule} " in block
    # CNN-Acc (inference-sized runs) keeps one GPU and one process.
    assert jobs["cnn"] and all("gpu=1," in b and "torch.distributed.run" not in b and "--section cnn " in b
                               for b in jobs["cnn"])


def test_a_missing_eva02_checkpoint_fails_before_any_job(tmp_path: Path) -> None:
    overlay = {"run": "nockpt", "eva02": {"pretrained_file": "ckpt/eva.pth"}}
    proc = _snakemake(["all", "--cores", "1"], tmp_path, overlay)
    assert proc.returncode != 0
    assert "config key 'eva02.pretrained_file' = 'ckpt/eva.pth': weights file not found" in proc.stderr
    assert "timm.create_model('eva02_base_patch14_448.mim_in22k_ft_in22k_in1k', pretrained=True).state_dict()" in proc.stderr
    assert not (tmp_path / "results").exists()
    # Table 6 switched off: the same file is not needed.
    off = _snakemake(["all", "-n", "--cores", "1"], tmp_path,
                     {"run": "nockpt", "eva02": {"pretrained_file": "ckpt/eva.pth"}, "experiments": {"eva02": False}})
    assert off.returncode == 0, off.stderr[-3000:]


def test_the_classify_stage_parses_its_slice_on_the_sections_preset(tmp_path: Path) -> None:
    # A real Swin job of the workflow on a few digits, then the stage itself given a two-key slice.
    import dataclasses
    import json

    from nfpi.classifiers import PRESETS

    overlay = {"run": "preset", "data": {"max_train_per_class": 6, "max_test_per_class": 3},
               "swin": {"epochs": 1, "batch_size": 16}}
    target = "results/preset/swin/none_none.json"
    proc = _snakemake([target, "--cores", "1"], tmp_path, overlay)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / target).read_text())["config"]["epochs"] == 1
    out = tmp_path / "swin_preset.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "nfpi", "classify", "--section", "swin", "--config",
                    '{"classifier": {"epochs": 1, "batch_size": 16, "device": "cpu"}}', "--real-train",
                    "--data-dir", str(tmp_path / "results/preset/data"), "--out", str(out)],
                   check=True, env=env, capture_output=True, timeout=600)
    want = dataclasses.asdict(dataclasses.replace(PRESETS["swin"], epochs=1, batch_size=16, device="cpu"))
    assert json.loads(out.read_text())["config"] == want  # warm-up 10, crop + flip: the Swin preset's
