"""Tests for nfpi.lampath: the lambda path (continuation over a geometric grid, choice on validation).

float64 throughout.  Properties: every certified point is a stationary point of Eq. 4 like a cold
solve; continuation costs fewer iterations than cold solves of the same grid; the divergence boundary
is reported as a number and the path stops there; the choice sees only the validation split and
breaks ties towards the smaller lambda.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from nfpi.density import load_gaussians
from nfpi.config import ConfigError, from_mapping
from nfpi.fpi import ClassStats, FPIConfig, LambdaPathConfig, objective, pairwise_kl, pi_normaliser, solve
from nfpi.lampath import (PathPoint, acc_tolerance, choose, cold_grid, gaussian_accuracy, geometric_grid, separation,
                          separation_ratio, solve_path, stop_reason)

from tinyflow import tiny_pretrained

F64 = torch.float64


def make_split(k: int, d: int, n: int, sep: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=F64) * sep
    scales = 0.5 + torch.rand(k, d, generator=g, dtype=F64)
    y = torch.arange(k).repeat_interleave(n)
    return centers[y] + torch.randn(k * n, d, generator=g, dtype=F64) * scales[y], y


def problem(k: int = 6, d: int = 5, seed: int = 0) -> tuple[ClassStats, torch.Tensor, torch.Tensor]:
    # validation: the same class centres (same seed), jittered by independent noise (seed + 100)
    z, y = make_split(k, d, 60, 0.6, seed)
    zv, yv = make_split(k, d, 30, 0.6, seed)
    g = torch.Generator().manual_seed(seed + 100)
    zv = zv + 0.3 * torch.randn(zv.shape, generator=g, dtype=F64)
    return ClassStats.from_latents(z, y, k), zv, yv


def grad_norm(stats: ClassStats, mu: torch.Tensor, v: torch.Tensor, lam: float, cfg: FPIConfig) -> float:
    """Norm of the gradient of Eq. 4 (pi held at the point) in the learned parameters (log v for variances)."""
    mu = mu.clone().requires_grad_(cfg.learn != "var")
    logv = torch.log(v).clone().requires_grad_(cfg.learn != "mean")
    pv = pi_normaliser(pairwise_kl(mu.detach(), v), cfg.pi)
    obj = objective(mu, torch.exp(logv), stats, lam=lam, alpha=cfg.alpha, pi=cfg.pi, pi_value=pv)
    params = [t for t in (mu, logv) if t.requires_grad]
    return float(torch.sqrt(sum((g * g).sum() for g in torch.autograd.grad(obj, params))))


CFGS = {
    "mu_only": {"lam": "auto", "learn": "mean", "init": "identity", "tol": 1e-12, "max_iter": 3000,
                "path": {"lam_min": 1.0, "lam_max": 1000.0, "points": 7, "stop_early": False}},
    "both": {"lam": "auto", "learn": "both", "init": "data", "tol": 1e-12, "max_iter": 3000,
             "path": {"lam_min": 0.5, "lam_max": 10.0, "points": 6, "stop_early": False}},
}


@pytest.mark.parametrize("name", sorted(CFGS))
def test_every_point_is_certified_stationary_like_a_cold_solve(name: str) -> None:
    stats, zv, yv = problem()
    cfg = from_mapping(FPIConfig, CFGS[name], where="fpi")
    path = solve_path(stats, cfg, zv, yv)
    assert path.boundary is None and len(path.points) == cfg.path.points
    for pt in path.points:
        assert pt.certified and pt.status == "converged" and pt.residual <= cfg.tol
    # stationarity of the chosen point, checked by autograd on Eq. 4 (relative to the starting point's gradient)
    r = path.result
    g0 = grad_norm(stats, stats.mean, stats.var if cfg.init == "data" else torch.ones_like(stats.var), path.chosen, cfg)
    assert grad_norm(stats, r.means, r.variances, path.chosen, cfg) / g0 < 1e-8
    # the cold solve at the chosen lambda lands on the same fixed point here; both objectives recorded
    assert path.cold["same_point"] and math.isclose(path.cold["objective"], path.cold["path_objective"], rel_tol=1e-9)
    # every point equals an independent cold solve (unique fixed point on this problem)
    for pt, cold in zip(path.points, cold_grid(stats, cfg, [p.lam for p in path.points])):
        assert cold.status == "converged"
        assert math.isclose(pt.objective, cold.history[-1]["objective"], rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("name", sorted(CFGS))
def test_continuation_takes_fewer_iterations_than_cold_solves(name: str) -> None:
    stats, zv, yv = problem(seed=1)
    cfg = from_mapping(FPIConfig, CFGS[name], where="fpi")
    path = solve_path(stats, cfg, zv, yv)
    cold = cold_grid(stats, cfg, path.grid)
    assert path.total_iterations < sum(c.iterations for c in cold)


def test_the_path_and_its_cold_check_are_accelerated_and_the_record_says_so() -> None:
    from nfpi.lampath import ANDERSON

    stats, zv, yv = problem(seed=3)
    cfg = from_mapping(FPIConfig, CFGS["mu_only"], where="fpi")
    path = solve_path(stats, cfg, zv, yv)
    d = path.to_dict()
    assert ANDERSON > 0 and d["anderson"] == ANDERSON and d["cold"]["anderson"] == ANDERSON
    assert path.result.settings["anderson"] == ANDERSON
    for q in d["points"]:  # one evaluation a step at least, plus the first; rejected proposals on top
        assert q["evaluations"] >= q["iterations"] + 1
    # the plain iteration from the same cold start: the same fixed point, more iterations
    plain = cold_grid(stats, cfg, [path.chosen])[0]
    assert plain.status == "converged" and d["cold"]["iterations"] < plain.iterations
    assert math.isclose(d["cold"]["objective"], plain.history[-1]["objective"], rel_tol=1e-9)


def test_separation_grows_along_the_path() -> None:
    stats, zv, yv = problem(seed=2)
    path = solve_path(stats, from_mapping(FPIConfig, CFGS["mu_only"], where="fpi"), zv, yv)
    med = [p.median_kl for p in path.points]
    assert all(b > a for a, b in zip(med, med[1:])), med


def test_divergence_boundary_is_reported_and_stops_the_path() -> None:
    # pi="pair" with learned variances: the lagged objective is unbounded above lambda ~ K alpha e^(1/alpha) / 2
    stats, zv, yv = problem(k=10, d=8, seed=0)
    # rule accuracy reads the whole grid, so the path runs on to the boundary
    cfg = from_mapping(FPIConfig, {"lam": "auto", "pi": "pair", "learn": "both", "max_iter": 500,
                                   "path": {"lam_min": 1.0, "lam_max": 3000.0, "points": 9, "rule": "accuracy"}},
                       where="fpi")
    path = solve_path(stats, cfg, zv, yv)
    assert path.boundary is not None and isinstance(path.boundary, float)
    assert path.points[-1].lam == path.boundary and path.points[-1].status == "diverged"
    assert len(path.points) < len(path.grid)
    assert all(p.status != "diverged" for p in path.points[:-1])
    assert path.chosen < path.boundary and path.points[path.chosen_index].certified
    d = path.to_dict()
    assert d["boundary"] == path.boundary and math.isnan(d["points"][-1]["val_acc"])
    assert "boundary" in path.stop
    # the default rule (separation) on the whole grid: the same boundary, a choice below it
    full = solve_path(stats, from_mapping(FPIConfig, {**cfg_map(cfg), "path": {**cfg_map(cfg)["path"],
                                                                               "rule": "separation",
                                                                               "stop_early": False}}, where="fpi"),
                      zv, yv)
    assert full.boundary == path.boundary and full.chosen < full.boundary


def cfg_map(cfg: FPIConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def pt(lam: float, acc: float, ok: bool = True, ratio: float = 0.0) -> PathPoint:
    return PathPoint(lam, "converged" if ok else "max_iter", 5, 1.0, 0.0, ok, 1.0, 2.0, acc, 0.0, ratio)


def rule(name: str, tie_tol: float | str = 0.0, sep: float = 1.0, guard: bool = True) -> LambdaPathConfig:
    return LambdaPathConfig(rule=name, tie_tol=tie_tol, separation=sep, guard=guard)  # type: ignore[arg-type]


def test_rule_accuracy_ties_go_to_the_smaller_lambda() -> None:
    acc = rule("accuracy")
    assert choose([pt(1, 0.8), pt(10, 0.9), pt(100, 0.9)], acc, 100)[0] == 1
    assert choose([pt(1, 0.8), pt(10, 0.89), pt(100, 0.9)], rule("accuracy", 0.02), 100)[0] == 1
    assert choose([pt(1, 0.8), pt(10, 0.95, ok=False), pt(100, 0.9)], acc, 100)[0] == 2  # uncertified never win
    assert stop_reason([pt(1, 0.9), pt(10, 0.1)], acc, 100) == ""  # it needs the whole grid
    for name in ("accuracy", "largest", "separation"):
        with pytest.raises(ValueError, match="no lambda of the grid"):
            choose([pt(1, 0.8, ok=False)], rule(name), 100)


def test_rule_largest_keeps_the_largest_lambda_within_the_tolerance_and_stops_at_the_first_drop() -> None:
    pts = [pt(1, 0.8), pt(10, 0.9), pt(100, 0.89), pt(1000, 0.85), pt(1e4, 0.9)]
    p = rule("largest", 0.02)
    i, reason = choose(pts, p, 100)
    assert i == 2 and "lambda=100" in reason  # 0.85 < 0.9 - 0.02 ends the run; 1e4 is never reached
    assert [bool(stop_reason(pts[:j], p, 100)) for j in range(1, 6)] == [False, False, False, True, True]
    assert choose(pts[:4], p, 100)[0] == choose(pts, p, 100)[0]  # stopping at the drop cannot change the choice
    assert choose([pt(1, 0.8), pt(10, 0.99, ok=False), pt(100, 0.79)], p, 100)[0] == 2


def test_rule_separation_takes_the_first_lambda_reaching_the_target_within_the_accuracy_guard() -> None:
    p = rule("separation", 0.05, sep=1.0)
    pts = [pt(1, 0.9, ratio=0.2), pt(10, 0.88, ratio=0.6), pt(100, 0.87, ratio=1.1), pt(1000, 0.9, ratio=1.5)]
    i, reason = choose(pts, p, 100)
    assert i == 2 and "1.1 >= 1" in reason
    assert [bool(stop_reason(pts[:j], p, 100)) for j in range(1, 5)] == [False, False, True, True]
    assert choose(pts[:3], p, 100) == (i, reason)
    # an uncertified point reaching the target does not count
    assert choose([pt(1, 0.9, ratio=0.2), pt(10, 0.9, ok=False, ratio=2.0), pt(100, 0.9, ratio=1.2)], p, 100)[0] == 2
    # the accuracy guard ends the path before the target: the largest lambda within the tolerance
    guarded = [pt(1, 0.9, ratio=0.2), pt(10, 0.88, ratio=0.6), pt(100, 0.7, ratio=1.1)]
    i, reason = choose(guarded, p, 100)
    assert i == 1 and "not reached" in reason and stop_reason(guarded, p, 100)
    # the target never reached: the largest lambda of the path
    assert choose(pts[:2], p, 100)[0] == 1 and stop_reason(pts[:2], p, 100) == ""


def test_rule_separation_without_the_guard_ignores_the_pretrained_accuracy() -> None:
    """The default (fpi.path.guard false): a falling validation NF-Acc neither ends the path nor moves the choice;
    the choice is a function of the separation ratios alone."""
    p = rule("separation", 0.05, sep=1.0, guard=False)
    assert LambdaPathConfig().guard is False
    falling = [pt(1, 0.9, ratio=0.2), pt(10, 0.88, ratio=0.6), pt(100, 0.7, ratio=0.9), pt(1000, 0.5, ratio=1.1)]
    i, reason = choose(falling, p, 100)
    assert i == 3 and "1.1 >= 1" in reason and "not used" in reason
    assert [bool(stop_reason(falling[:j], p, 100)) for j in range(1, 5)] == [False, False, False, True]
    rising = [pt(1, 0.1, ratio=0.2), pt(10, 0.3, ratio=0.6), pt(100, 0.9, ratio=0.9), pt(1000, 0.95, ratio=1.1)]
    assert choose(rising, p, 100)[0] == i
    # never reached: the largest certified lambda, whatever its accuracy
    assert choose(falling[:3], p, 100)[0] == 2 and stop_reason(falling[:3], p, 100) == ""


def test_se_tolerance_is_one_binomial_standard_error() -> None:
    q = 127 / 146  # 126 of 144 correct, (c + 1) / (n + 2)
    assert acc_tolerance(126 / 144, 144, "se") == pytest.approx(math.sqrt(q * (1 - q) / 144))
    assert acc_tolerance(1.0, 50, "se") > 0 and acc_tolerance(0.9, 50, 0.01) == 0.01
    # more validation latents, a tighter tolerance
    assert acc_tolerance(0.9, 1000, "se") < acc_tolerance(0.9, 100, "se")


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_separation_ratio(scale: float) -> None:
    mu = torch.tensor([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 10.0, 0.0]], dtype=F64)
    v = torch.ones_like(mu)
    spread = torch.full_like(mu, 3.0)  # each class's radius sqrt(3 * 3) = 3
    assert separation_ratio(mu, v, spread) == pytest.approx(6.0 / (3 + 3))  # the closest pair: distance 6
    # units do not matter: scaling the latents scales means, variances and spreads together
    assert separation_ratio(scale * mu, scale**2 * v, scale**2 * spread) == pytest.approx(1.0)
    assert math.isnan(separation_ratio(mu[:1], v[:1], spread[:1]))


def test_stopping_early_does_not_change_the_choice() -> None:
    stats, zv, yv = problem(seed=5)
    for name in ("separation", "largest", "accuracy"):
        base = {**CFGS["mu_only"], "path": {**CFGS["mu_only"]["path"], "rule": name, "separation": 0.8,
                                            "stop_early": True}}
        early = solve_path(stats, from_mapping(FPIConfig, base, where="fpi"), zv, yv)
        full = solve_path(stats, from_mapping(FPIConfig, {**base, "path": {**base["path"], "stop_early": False}},
                                              where="fpi"), zv, yv)
        assert early.chosen == full.chosen and early.reason == full.reason, name
        assert len(early.points) <= len(full.points) == len(full.grid) and early.stop
        if name == "separation":
            ratios = [q.sep_ratio for q in full.points]
            assert ratios == sorted(ratios)  # the means move apart along the path
            assert early.points[early.chosen_index].sep_ratio >= 0.8 > early.points[early.chosen_index - 1].sep_ratio
            assert len(early.points) == early.chosen_index + 1 < len(full.grid)


def test_choice_uses_validation_only() -> None:
    # the path reads nothing but (stats, validation latents): permuting the training labels' names
    # changes the Gaussians, relabelling the validation set changes only the accuracies
    stats, zv, yv = problem(seed=3)
    cfg = from_mapping(FPIConfig, CFGS["mu_only"], where="fpi")
    a = solve_path(stats, cfg, zv, yv)
    b = solve_path(stats, cfg, zv.clone(), yv.clone())
    assert a.chosen == b.chosen and [p.val_acc for p in a.points] == [p.val_acc for p in b.points]


def test_warm_start_from_a_previous_choice() -> None:
    stats, zv, yv = problem(seed=4)
    cfg = from_mapping(FPIConfig, CFGS["mu_only"], where="fpi")
    first = solve_path(stats, cfg, zv, yv)
    again = solve_path(stats, cfg, zv, yv, start=(first.result.means, first.result.variances))
    assert again.chosen == first.chosen
    torch.testing.assert_close(again.result.means, first.result.means, rtol=1e-8, atol=1e-8)


def test_the_cold_check_is_skipped_only_where_the_chosen_point_is_itself_a_cold_solve() -> None:
    stats, zv, yv = problem(seed=6)
    smallest = {**CFGS["mu_only"], "path": {**CFGS["mu_only"]["path"], "rule": "accuracy", "tie_tol": 1.0}}
    cfg = from_mapping(FPIConfig, smallest, where="fpi")
    path = solve_path(stats, cfg, zv, yv)  # every point ties: the smallest lambda, the first point, a cold start
    assert path.chosen_index == 0 and path.cold["is_first_point"] and path.cold["same_point"]
    assert path.cold["iterations"] == path.points[0].iterations
    warm = solve_path(stats, cfg, zv, yv, start=(path.result.means + 0.1, path.result.variances))
    assert warm.chosen_index == 0 and not warm.cold["is_first_point"]  # warm-started: checked by a cold solve
    assert warm.cold["same_point"]


def test_helpers() -> None:
    g = geometric_grid(1.0, 1000.0, 4)
    assert g[0] == 1.0 and g[-1] == 1000.0 and math.isclose(g[1], 10.0) and math.isclose(g[2], 100.0)
    with pytest.raises(ValueError, match="fpi.path"):
        geometric_grid(10.0, 1.0, 3)
    mu = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=F64)
    v = torch.ones_like(mu)
    lo, med = separation(mu, v)
    assert math.isclose(lo, 0.5) and math.isclose(med, 4.5)  # KLs 4.5, 0.5, 5.0, each twice: the lower median
    z = mu + 0.01
    assert gaussian_accuracy(mu, v, z, torch.arange(3)) == 1.0
    assert gaussian_accuracy(mu, v, z, torch.tensor([1, 0, 2]), chunk=1) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="lampath.solve_path"):
        solve(ClassStats.from_latents(z, torch.arange(3), 3), FPIConfig(lam="auto"))


# ---------------------------------------------------------------- through the stages (solve, lambda_path, finetune)

AUTO = {"method": "fpi", "lam": "auto", "learn": "mean", "init": "identity", "max_iter": 300,
        "path": {"lam_min": 1.0, "lam_max": 1000.0, "points": 4, "stop_early": False}}


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Capped digits, a tiny 4-bit pretrained flow, its train / val latents, and the NFPI solve under lam: auto."""
    import json

    from nfpi.stages import solve as solve_stage
    from nfpi.data import PreparedData
    from nfpi.evaluation import extract_latents
    from nfpi.latents import write_latents
    from nfpi.training import load_trained_flow

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lampath")
    data, pre = tiny_pretrained(root)
    trained = load_trained_flow(pre)
    d = PreparedData(data)
    lat = {}
    for split in ("train", "val"):
        lat[split] = root / f"{split}.parquet"
        write_latents(lat[split], extract_latents(trained.flow, d.dataset(split), n_bits=4),
                      dim=trained.flow.latent_dim, split=split, num_rows=len(d.labels(split)))
    args = ["--latents", str(lat["train"]), "--val-latents", str(lat["val"]), "--data-dir", str(data)]
    solve_stage.main(["--config", json.dumps({"setting": AUTO}), *args, "--out", str(root / "nfpi.pt"),
                      "--out-json", str(root / "nfpi.json"), "--name", "nfpi"])
    return {"root": root, "data": data, "pre": pre, "args": args, "record": json.loads((root / "nfpi.json").read_text())}


def test_solve_stage_records_the_path_and_uses_the_chosen_lambda(staged: dict[str, Any]) -> None:
    rec = staged["record"]
    path = rec["path"]
    assert len(path["points"]) == 4 and path["rule"].startswith("separation") and path["reason"] and path["stop"]
    assert all(p["sep_ratio"] > 0 for p in path["points"])
    assert rec["lam"] == path["chosen"] == path["points"][path["chosen_index"]]["lam"]
    assert rec["result"]["settings"]["lam_auto"] is True and "lambda path" in rec["result"]["message"]
    _, g_record = load_gaussians(staged["root"] / "nfpi.pt")
    assert g_record["path"]["chosen"] == path["chosen"]


def test_changing_test_labels_cannot_change_the_choice(staged: dict[str, Any]) -> None:
    import json
    import shutil

    import numpy as np

    from nfpi.stages import solve as solve_stage

    data2 = staged["root"] / "data_relabelled"
    shutil.copytree(staged["data"], data2)
    labels = np.load(data2 / "test_labels.npy")
    np.save(data2 / "test_labels.npy", np.roll(labels, 1))
    args = [a if a != str(staged["data"]) else str(data2) for a in staged["args"]]
    solve_stage.main(["--config", json.dumps({"setting": AUTO}), *args, "--out", str(staged["root"] / "again.pt"),
                      "--out-json", str(staged["root"] / "again.json")])
    again = json.loads((staged["root"] / "again.json").read_text())["path"]
    first = staged["record"]["path"]
    assert again["chosen"] == first["chosen"]
    assert [p["val_acc"] for p in again["points"]] == [p["val_acc"] for p in first["points"]]


def test_gd_under_auto_takes_the_nfpi_choice_and_the_figure_stage_draws_the_path(staged: dict[str, Any]) -> None:
    import json

    from nfpi.stages import lambda_path, solve as solve_stage

    root = staged["root"]
    gd = {**AUTO, "method": "gd", "steps": 30, "lr": 0.05}
    with pytest.raises(ConfigError, match="--lam-from"):
        solve_stage.main(["--config", json.dumps({"setting": gd}), *staged["args"], "--out", str(root / "gd.pt"),
                          "--out-json", str(root / "gd.json")])
    solve_stage.main(["--config", json.dumps({"setting": gd}), *staged["args"], "--lam-from", str(root / "nfpi.json"),
                      "--out", str(root / "gd.pt"), "--out-json", str(root / "gd.json")])
    assert json.loads((root / "gd.json").read_text())["lam"] == staged["record"]["path"]["chosen"]
    lambda_path.main(["--record", str(root / "nfpi.json"), "--tables-dir", str(root / "tables"),
                      "--figure", str(root / "lambda_path.png")])
    md = (root / "tables" / "lambda_path.md").read_text()
    assert "chosen" in md and md.count("| converged") + md.count("| max_iter") == 4
    assert (root / "lambda_path.png").stat().st_size > 5000
    with pytest.raises(ConfigError, match="no lambda path"):
        lambda_path.main(["--record", str(root / "gd.json"), "--tables-dir", str(root / "t2"),
                          "--figure", str(root / "x.png")])


def test_finetune_rounds_rerun_the_path_warm_started(staged: dict[str, Any]) -> None:
    import json

    from nfpi.stages import finetune

    root = staged["root"]
    out = root / "ft" / "nfpi.pt"
    train = {"steps": 4, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "rounds": 2}
    finetune.main(["--config", json.dumps({"train": train, "setting": AUTO}), "--data-dir", str(staged["data"]),
                   "--init", str(staged["pre"]), "--gaussians", str(root / "nfpi.pt"), "--out", str(out),
                   "--metrics", str(root / "ft.json")])
    rounds = json.loads((root / "ft.json").read_text())["rounds"]
    resolve = rounds[1]["solve"]
    assert resolve["path"]["chosen"] == resolve["lam"] and len(resolve["path"]["points"]) == 4
    assert all(p["certified"] for p in resolve["path"]["points"])
