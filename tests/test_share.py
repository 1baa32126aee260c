"""nfpi.share: which settings' Gaussians are equal within the tolerance, and how the tables print them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from nfpi.experiments import GD_POLICIES, lineage_hash, settings_from_config, tables_slice
from nfpi.io import atomic_write_json
from nfpi.share import gaussian_distance, group_settings, share_slice
from nfpi.stages.tabulate import main as tabulate_main

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())


def _gaussians(seed: int, k: int = 10, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g) * 5, torch.rand(k, d, generator=g) + 0.5


def test_distance_is_zero_only_for_equal_symmetric_and_scale_free() -> None:
    mu, v = _gaussians(0)
    assert gaussian_distance(mu, v, mu.clone(), v.clone()) == 0.0
    mu2 = mu.clone()
    mu2[3, 7] += 0.01 * v[3, 7].sqrt()  # a hundredth of a standard deviation
    d = gaussian_distance(mu, v, mu2, v)
    assert d == pytest.approx(0.01, rel=1e-4) and d == pytest.approx(gaussian_distance(mu2, v, mu, v))
    # latents in other units (z -> 3 z): means x3, variances x9, the same distance
    assert gaussian_distance(3 * mu, 9 * v, 3 * mu2, 9 * v) == pytest.approx(d, rel=1e-4)
    v2 = v.clone()
    v2[0, 0] *= 1.02
    assert gaussian_distance(mu, v, mu, v2) == pytest.approx(0.02, rel=1e-3)
    assert gaussian_distance(mu, v, mu[:5], v[:5]) == float("inf")


def test_grouping_needs_the_same_objective_and_the_tolerance() -> None:
    mu, v = _gaussians(1)
    near = (mu + 1e-5 * v.sqrt(), v)  # within 1e-3 standard deviations
    far = (mu + 0.1 * v.sqrt(), v)
    gs = {"nfpi": (mu, v), "gd_a": near, "gd_b": far, "other": (mu.clone(), v.clone())}
    objective = {"nfpi": {"lam": 1.0}, "gd_a": {"lam": 1.0}, "gd_b": {"lam": 1.0}, "other": {"lam": 2.0}}
    groups = group_settings(gs, list(gs), objective, 1e-3)
    assert groups["nfpi"] == ("nfpi", 0.0) and groups["gd_a"][0] == "nfpi" and 0 < groups["gd_a"][1] <= 1e-3
    assert groups["gd_b"] == ("gd_b", 0.0)  # 0.1 sd away: fine-tuned on its own
    assert groups["other"] == ("other", 0.0)  # identical Gaussians, another objective: never shared
    assert all(r == s for s, (r, _) in group_settings(gs, list(gs), objective, 0.0).items())  # tol 0: paper protocol


def test_share_slice_objective_ignores_solver_options() -> None:
    s = settings_from_config(CONFIG)
    names = ["nfpi", "gd_linear", "baseline1"]
    obj = share_slice(CONFIG, names, 1e-3)["objective"]
    assert obj["nfpi"] == obj["gd_linear"] != obj["baseline1"]
    assert s["nfpi"].spec != s["gd_linear"].spec


def test_tables_print_the_representatives_numbers_and_say_so(tmp_path: Path) -> None:
    cfg = copy.deepcopy(CONFIG)
    cfg["experiments"].update(lambdas=[], ablation=False, swin=False, eva02=False, gd_policies=list(GD_POLICIES))
    cfg["fpi"]["lam"] = 1000.0  # a fixed lambda: the row labels name it (the default's auto reads the path's record)
    r = tmp_path / "results"
    accs = {"nfpi": 0.9889, "baseline1": 0.9331, "gd_superlinear_v1": 0.9861, "gd_superlinear_v2": 0.9833}
    for s, acc in accs.items():
        atomic_write_json(r / "metrics" / f"{s}.json", {
            "test": {"nf_acc": acc, "bpd_conditional": 2.2}, "val": {"nf_acc": acc}, "solver": {"status": "converged"},
            "provenance": {"config_hash": lineage_hash(cfg, s, "evaluate")}})
    rep = {s: s for s in accs} | {"gd_sublinear_v1": "nfpi", "gd_sublinear_v2": "nfpi", "gd_linear": "nfpi"}
    atomic_write_json(r / "shared.json", {"tol": 1e-3, "representative": rep,
                                          "distance_to_representative": {"gd_linear": 8.5e-4}})
    tabulate_main(["--config", json.dumps(tables_slice(cfg)), "--results", str(r), "--out-dir", str(r / "tables"),
                   "--shared", str(r / "shared.json")])
    rows = json.loads((r / "summary.json").read_text())["tables"]["table1"]
    by_label = {row[0]: row for row in rows}
    linear = by_label["Baseline 2, converged on fixed latents (GD + Linear) [= NFPI (lambda = 1000)]"]
    assert linear[1] == "98.89" and linear[4] == "shares nfpi's fine-tuning"
    assert by_label["Baseline 2, converged on fixed latents (GD + Superlinear v2)"][1] == "98.33"  # not shared: its own numbers
    md = (r / "tables" / "table1.md").read_text()
    assert "share_tol = 0.001" in md and "gd_linear -> nfpi (0.00085)" in md
    assert json.loads((r / "summary.json").read_text())["shared"] == {
        "gd_sublinear_v1": "nfpi", "gd_sublinear_v2": "nfpi", "gd_linear": "nfpi"}
