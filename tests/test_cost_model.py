"""benchmarks/cost_model.py: docs/cost-model.md is fresh, the FLOP counter agrees with hand counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import cost_model  # noqa: E402


def test_committed_doc_matches_the_current_configs() -> None:
    assert cost_model.main(["--check"]) == 0, (
        "docs/cost-model.md was generated from other configs / presets; rerun: python benchmarks/cost_model.py")


def test_a_config_edit_makes_the_doc_stale() -> None:
    configs = {c: cost_model.resolved_config(c) for c in cost_model.PAPER_CONFIGS}
    before = cost_model.inputs_digest(configs)
    configs["cifar10"]["finetune"]["steps"] += 1
    assert cost_model.inputs_digest(configs) != before


def test_counter_agrees_with_a_hand_count_for_a_convolution_and_a_linear_layer() -> None:
    conv, lin = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(192, 10)
    x = torch.randn(2, 3, 8, 8)
    # forward: 2 FLOPs per multiply-add; conv: B * Cout * H * W * Cin * k * k MACs; linear: B * in * out
    fwd = 2 * (2 * 4 * 8 * 8 * 3 * 3 * 3) + 2 * (2 * 192 * 10)
    with torch.no_grad():
        assert cost_model.count_flops(lambda: lin(conv(x).flatten(1)[:, :192])) == fwd
    # backward with a leaf input: the gradients of the input and of the weights cost a forward each
    x.requires_grad_(True)
    assert cost_model.count_flops(lambda: lin(conv(x).flatten(1)[:, :192]).sum().backward()) == 3 * fwd


def test_flow_flops_are_per_image_and_training_costs_about_three_forwards() -> None:
    cfg = {"preset": "digits"}
    one = cost_model.flow_flops(cfg, (1, 8, 8), batch=1)
    four = cost_model.flow_flops(cfg, (1, 8, 8), batch=4)
    assert one["forward"] > 0 and one["forward"] == pytest.approx(four["forward"], rel=0.05)
    assert 2.5 < one["train"] / one["forward"] < 3.5
    assert one["inverse"] == pytest.approx(one["forward"], rel=0.25)


def test_split_sizes_follow_the_stratified_val_carve() -> None:
    cfg = cost_model.resolved_config("cifar10")
    n = cost_model.split_sizes(cfg)
    assert n == {"train": 45_000, "val": 5_000, "test": 10_000, "classes": 10}
    cfg["data"]["max_train_per_class"] = 100
    assert cost_model.split_sizes(cfg)["train"] + cost_model.split_sizes(cfg)["val"] == 1_000
    assert cost_model.image_shape(cost_model.resolved_config("mnist"), 3) == (1, 32, 32)  # 28 padded to 32


def test_stage_totals_are_jobs_times_images_times_epochs_times_flops() -> None:
    cfg = cost_model.resolved_config("cifar10")
    n = cost_model.split_sizes(cfg)
    flops = {k: {"forward": 1.0, "train": 3.0, "inverse": 1.0} for k in ("flow", "cnn", "swin", "eva02")}
    jobs = {"pretrain": 1, "finetune": 2, "extract": 2, "evaluate": 2, "sample": 1, "cnn": 1, "swin": 4}
    st = {s.name: s for s in cost_model.stages(cfg, jobs, flops, n)}
    pre = cfg["pretrain"]
    assert st["pretrain"].total == pre["steps"] * pre["batch_size"] * 3.0
    assert st["pretrain"].epochs == pytest.approx(pre["steps"] * pre["batch_size"] / 45_000)
    assert st["extract"].total == 2 * 60_000
    assert st["swin"].jobs == 2 and st["swin (+NF aug.)"].images == 2 * 45_000
    assert "eva02" not in st  # no job, no row


def _report(tmp_path: Path, smoke: bool) -> Path:
    """A gpu-check report as the script writes it (the fields cost_model reads)."""
    import json

    rate = {"images_per_s": 0.0, "step_s_median": 1.0, "peak_gpu_memory_gb": 1.0, "peak_rss_gb": 1.0, "batch": 64,
            "params": 1}
    rep = {"schema": "nfpi-gpu-check/1", "device": "cuda", "smoke": smoke, "environment": {"gpus": [{"name": "GPU X"}]},
           "sections": [{"name": "throughput", "ok": True, "metrics": {
               "train_bf16": {**rate, "images_per_s": 500.0}, "train_fp32": {**rate, "images_per_s": 300.0},
               "extract_fp32": {**rate, "images_per_s": 2000.0}}}]}
    path = tmp_path / "gpu-check.json"
    path.write_text(json.dumps(rep))
    return path


def test_measured_rates_add_hours_at_the_measured_images_per_second(tmp_path: Path) -> None:
    measured = cost_model.measured_rates(_report(tmp_path, smoke=False))
    assert measured["train"] == 500.0 and measured["extract"] == 2000.0 and measured["gpu"] == "GPU X"
    cfg = cost_model.resolved_config("cifar10")
    fl = {k: {"forward": 1e9, "train": 3e9, "inverse": 1e9, "params": 1} for k in ("flow", "cnn", "swin", "eva02")}
    result = {"name": "cifar10", "config": cfg, "shape": (3, 32, 32), "splits": cost_model.split_sizes(cfg),
              "flops": fl, "jobs": {"pretrain": 1, "extract": 1}}
    # the rates were measured on the CIFAR preset (main() adds its FLOPs); a flow with twice the FLOPs per
    # image is charged half the rate, i.e. twice the hours
    measured["cifar_flops"] = {"train": 3e9, "forward": 1e9}
    hours = cfg["pretrain"]["steps"] * cfg["pretrain"]["batch_size"] / 500.0 / 3600
    for scale in (1, 2):
        fl2 = {**fl, "flow": {k: v * scale for k, v in fl["flow"].items()}}
        text = cost_model.render([{**result, "flops": fl2}], "digest", measured)
        pretrain = next(line for line in text.splitlines() if line.startswith("| pretrain |"))
        h = hours * scale
        assert pretrain.rstrip(" |").endswith(f"{h:,.1f}" if h >= 1 else f"{h:.2f}")
    assert "GPU-h at measured rate" in text and "<!-- inputs: digest -->" in text
    with pytest.raises(SystemExit, match="full size"):
        cost_model.measured_rates(_report(tmp_path, smoke=True))
