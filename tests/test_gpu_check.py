"""scripts/gpu-check: the report format, the CPU-capable sections, the budget and the skips (docs/gpu-check.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check"
SECTION_KEYS = {"name", "ok", "seconds", "limit_s", "metrics", "error", "reason"}


def _run(tmp_path: Path, *args: str, name: str = "report.json") -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    return proc, json.loads(out.read_text()) if out.exists() else None


def _check_format(report: dict[str, Any], sections: list[str]) -> None:
    assert report["schema"] == "nfpi-gpu-check/1"
    assert {"started_utc", "device", "smoke", "budget_s", "sizes", "environment", "sections", "seconds", "ok"} <= set(report)
    env = report["environment"]
    assert env["torch"] == torch.__version__
    assert {"cuda_runtime", "gpus", "driver", "nccl", "python", "git_commit"} <= set(env)
    assert [s["name"] for s in report["sections"]] == sections
    for s in report["sections"]:
        assert SECTION_KEYS <= set(s), s
        assert s["ok"] in (True, False, None)
        assert (s["ok"] is None) == (s["reason"] is not None)  # a skip says why
        assert (s["ok"] is False) == (s["error"] is not None)  # a failure says what
    assert report["ok"] == all(s["ok"] is not False for s in report["sections"])


@pytest.mark.slow  # ~30 s of CPU time (six interpreters importing torch, a Dynamo trace); 3-5 min wall on the busy 2-core box
def test_smoke_on_cpu_runs_every_section_and_writes_the_documented_report(tmp_path: Path) -> None:
    empty = tmp_path / "override.yaml"
    empty.write_text("{}\n")  # config/cifar10.yaml as it is: the smoke run only dry-runs it
    # aot_eager: Dynamo and AOT autograd without inductor's C++ build (minutes on this CPU)
    proc, report = _run(tmp_path, "--device", "cpu", "--smoke", "--budget-s", "1500", "--compile-backend", "aot_eager",
                        "--paper-override", str(empty), "--paper-data-root", str(tmp_path / "cifar10"))
    assert report is not None, proc.stderr
    _check_format(report, ["bf16", "compile", "ddp", "throughput", "paper"])
    assert proc.returncode == 0 and report["ok"], json.dumps(report["sections"], indent=1)
    sec = {s["name"]: s for s in report["sections"]}
    assert all(s["ok"] is True for s in sec.values())
    bf16 = sec["bf16"]["metrics"]
    assert bf16["skipped_steps"] == 0 and bf16["final_loss"] == pytest.approx(bf16["final_loss"])  # finite
    assert bf16["inverse_err_fp32"] < 1e-3 and bf16["bf16_pixels_changed_fraction"] < 1e-3
    assert bf16["pixels_changed_fraction_cudnn_default"] < 1e-3
    comp = sec["compile"]["metrics"]
    assert comp["backend"] == "aot_eager" and comp["max_abs_latent_diff"] < 1e-3 and comp["compile_s"] > 0
    ddp = sec["ddp"]["metrics"]
    assert ddp["backend"] == "gloo" and ddp["world_size"] == 1 and ddp["env"]["WORLD_SIZE"] == "1"
    assert ddp["all_reduce_ok"] and ddp["ddp_grad_rel_diff"] < 1e-5
    thr = sec["throughput"]["metrics"]
    assert set(thr) == {"train_bf16", "train_fp32", "extract_fp32", "train_bf16_b8", "train_fp32_b8", "extract_fp32_b8"}
    assert {r["batch"] for r in thr.values()} == {4, 8}  # batch 64 and the paper's 512, at smoke size
    assert all(r["images_per_s"] > 0 and r["peak_gpu_memory_gb"] is None for r in thr.values())
    paper = sec["paper"]["metrics"]
    assert paper["dry_run"] and paper["jobs"]["pretrain"] == 1 and paper["jobs"]["total"] > 1
    assert paper["data_root"] == str(tmp_path / "cifar10")


def test_paper_section_is_skipped_when_the_override_is_absent(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--device", "cpu", "--smoke", "--sections", "paper",
                        "--paper-override", str(tmp_path / "absent.yaml"))
    assert report is not None, proc.stderr
    _check_format(report, ["paper"])
    (paper,) = report["sections"]
    assert paper["ok"] is None and "absent.yaml" in paper["reason"]
    assert report["ok"] and proc.returncode == 0  # a skip is not a failure


def test_a_section_past_its_limit_is_killed_and_recorded(tmp_path: Path) -> None:
    # 30 s of budget, 11 s for the compile section: it is still tracing the flow when its limit comes
    proc, report = _run(tmp_path, "--device", "cpu", "--smoke", "--sections", "compile", "--budget-s", "30")
    assert report is not None, proc.stderr
    _check_format(report, ["compile"])
    (comp,) = report["sections"]
    assert comp["ok"] is False and comp["error"].startswith("timed out after")
    assert proc.returncode == 1 and report["ok"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_a_gpu_fails_clearly(tmp_path: Path) -> None:
    proc, report = _run(tmp_path)
    assert proc.returncode == 2 and report is None
    assert "no CUDA device is visible" in proc.stderr and "--device cpu --smoke" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_and_throughput_sections_pass_on_a_gpu(tmp_path: Path) -> None:
    proc, report = _run(tmp_path, "--sections", "bf16", "throughput", "--budget-s", "240")
    assert report is not None, proc.stderr
    _check_format(report, ["bf16", "throughput"])
    assert report["ok"], json.dumps(report["sections"], indent=1)
    assert report["sections"][0]["metrics"]["bf16_autocast_active"] is True
    assert all(r["peak_gpu_memory_gb"] > 0 for r in report["sections"][1]["metrics"].values())
