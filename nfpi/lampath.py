"""The lambda path: NFPI solved along a geometric grid of lambda by continuation, lambda chosen on validation.

Eq. 4's lambda trades the class likelihood against the KLD repulsion (Eq. 3).  Instead of a hand-picked
value, :func:`solve_path` solves the fixed point of Prop. 1 at ``lam_1 < lam_2 < ... < lam_P`` (a
geometric grid), each solve warm-started from the previous fixed point (continuation: the fixed point
moves smoothly with lambda, so a warm start needs a fraction of a cold solve's iterations), and records
at every point:

* the solver's iterations, objective (Eq. 4) and whitened fixed-point residual (a point is *certified*
  when the residual is below ``tol``: the residual is the metric gradient of Eq. 4 for the means and
  the log fixed-point map residual for the variances, so certified points are stationary),
* the separation of the Gaussians: the smallest and the median pairwise KL (Eq. 3's KL),
* the NF-Acc of those Gaussians on the flow's validation latents: ``argmax_y log N(z; mu_y, v_y)``,
  one pass of the prior over the latents (the log-determinant of the flow is the same for every class,
  so it does not change the argmax; no fine-tuning is needed).

The iteration diverges above some lambda (e.g. with learned variances); the first grid point at which
it does is the *divergence boundary*: it is reported as a number and the path stops there.  lambda is
chosen by a documented rule on the validation split only (:func:`choose`): the largest validation NF-Acc
among certified points, ties (within ``tie_tol``) to the smaller lambda.  One cold solve at the chosen
lambda checks that continuation did not land on another fixed point; the record keeps both objectives.

Example::

    >>> from nfpi.fpi import ClassStats, FPIConfig
    >>> path = solve_path(stats, FPIConfig(lam="auto", learn="mean", init="identity"), z_val, y_val)
    >>> path.chosen, path.boundary, path.points[0].val_acc
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nfpi.fpi import DTYPE, ClassStats, FPIConfig, FPIResult, LambdaPathConfig, pairwise_kl, solve_fpi_from_stats

__all__ = ["PathPoint", "LambdaPath", "geometric_grid", "separation", "gaussian_accuracy", "choose", "solve_path",
           "cold_grid", "path_table"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PathPoint:
    """One lambda of the path: how the solve went and what its Gaussians give."""

    lam: float
    status: str  #: "converged" | "max_iter" | "diverged" (FPIResult.status)
    iterations: int  #: accepted fixed-point iterations of this solve (warm-started)
    objective: float  #: Eq. 4 at the point (NaN when diverged)
    residual: float  #: whitened fixed-point residual at the point
    certified: bool  #: residual <= tol: a stationary point of Eq. 4
    min_kl: float  #: smallest pairwise KL(N_y || N_y'), y != y'
    median_kl: float  #: median pairwise KL over y != y'
    val_acc: float  #: NF-Acc of these Gaussians on the validation latents (NaN when diverged)
    seconds: float  #: wall time of the solve and its evaluation


@dataclass(frozen=True)
class LambdaPath:
    """The whole path, the boundary, the choice and its Gaussians."""

    points: tuple[PathPoint, ...]
    grid: tuple[float, ...]  #: the planned grid (the path stops early at the boundary)
    boundary: float | None  #: smallest grid lambda at which the FPI diverged; None: none on the grid
    chosen: float  #: the chosen lambda
    chosen_index: int  #: its index in ``points``
    rule: str  #: the selection rule, in words
    reason: str  #: why this lambda (the numbers behind the choice)
    result: FPIResult  #: the fixed point at the chosen lambda (from the path)
    cold: dict[str, Any]  #: the cold solve at the chosen lambda: objective, iterations, same_point, distance

    @property
    def total_iterations(self) -> int:
        return sum(p.iterations for p in self.points)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record (the solve stage writes it beside the Gaussians)."""
        return {
            "grid": list(self.grid),
            "points": [dataclasses.asdict(p) for p in self.points],
            "boundary": self.boundary,
            "chosen": self.chosen,
            "chosen_index": self.chosen_index,
            "rule": self.rule,
            "reason": self.reason,
            "total_iterations": self.total_iterations,
            "cold": dict(self.cold),
        }


def geometric_grid(lam_min: float, lam_max: float, points: int) -> list[float]:
    """``points`` values from ``lam_min`` to ``lam_max``, equally spaced in log lambda (both ends included)."""
    if not (0 < lam_min < lam_max) or points < 2:
        raise ValueError(f"need 0 < lam_min < lam_max and points >= 2, got {lam_min}, {lam_max}, {points} "
                         "(config keys fpi.path.lam_min / lam_max / points)")
    r = math.log(lam_max / lam_min) / (points - 1)
    return [float(lam_min * math.exp(r * i)) for i in range(points - 1)] + [float(lam_max)]


def separation(means: torch.Tensor, variances: torch.Tensor) -> tuple[float, float]:
    """Smallest and median pairwise KL between distinct classes (Eq. 3's KL; one matrix product)."""
    k = means.shape[0]
    if k < 2:
        return math.nan, math.nan
    kl = pairwise_kl(means.to(DTYPE), variances.to(DTYPE))
    off = kl[~torch.eye(k, dtype=torch.bool)]
    return float(off.min()), float(off.median())


def gaussian_accuracy(means: torch.Tensor, variances: torch.Tensor, z: torch.Tensor, y: torch.Tensor,
                      *, chunk: int = 8192) -> float:
    """Fraction of ``z`` whose ``argmax_y log N(z; mu_y, v_y)`` is its label ``y`` (NF-Acc of a prior on latents).

    :meth:`nfpi.density.ClassGaussianPrior.classify` (three matrix products for all classes at once), in
    float64, chunked so memory stays O(chunk x (d + K)).
    """
    from nfpi.density import ClassGaussianPrior

    if z.shape[0] == 0:
        return math.nan
    prior = ClassGaussianPrior(means.to(DTYPE), variances.to(DTYPE))
    correct = sum(int((prior.classify(z[s:s + chunk].to(DTYPE)) == y[s:s + chunk].to(torch.long)).sum())
                  for s in range(0, z.shape[0], chunk))
    return correct / z.shape[0]


RULE = "largest validation NF-Acc among certified (converged) points, ties within tie_tol to the smaller lambda"


def choose(points: Sequence[PathPoint], tie_tol: float = 0.0) -> tuple[int, str]:
    """Index of the chosen point and the reason (:data:`RULE`); uses only what the points hold (validation).

    Raises ``ValueError`` when no point is certified (every solve diverged or hit ``max_iter``).
    """
    ok = [i for i, p in enumerate(points) if p.certified and math.isfinite(p.val_acc)]
    if not ok:
        raise ValueError("lambda path: no lambda of the grid gave a converged fixed point; lower fpi.path.lam_min or "
                         "raise fpi.max_iter (statuses: " + ", ".join(f"{p.lam:g}: {p.status}" for p in points) + ")")
    best = max(points[i].val_acc for i in ok)
    i = min((j for j in ok if points[j].val_acc >= best - tie_tol), key=lambda j: points[j].lam)
    ties = [points[j].lam for j in ok if points[j].val_acc >= best - tie_tol]
    reason = (f"validation NF-Acc {points[i].val_acc:.4f} at lambda={points[i].lam:g} (best {best:.4f}"
              + (f"; tied within {tie_tol:g} at lambda in {[float(f'{t:.4g}') for t in ties]}, the smallest kept"
                 if len(ties) > 1 else "") + ")")
    return i, reason


def _options(cfg: FPIConfig) -> dict[str, Any]:
    return {"config": cfg}  # the solver's options are the config's (keyword overrides beside it)


def _distance(a: FPIResult, b: FPIResult) -> float:
    """Largest whitened difference between two fixed points (means in units of sqrt(v), variances in log)."""
    dm = ((a.means - b.means).abs() / torch.sqrt(torch.minimum(a.variances, b.variances))).max()
    dv = (torch.log(a.variances) - torch.log(b.variances)).abs().max()
    return float(torch.maximum(dm, dv))


def _predict(a: FPIResult, b: FPIResult, ta: float, tb: float, t: float, cfg: FPIConfig
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Secant predictor of continuation: the fixed point at ``t = log lambda`` extrapolated linearly from
    the last two (means linearly, variances in log space, then clipped to the variance bounds).

    The fixed point moves smoothly with log lambda, so the extrapolation starts the corrector (the FPI)
    much closer than the last fixed point does; the corrector's step control makes a poor prediction
    cost iterations, never correctness.
    """
    w = (t - tb) / (tb - ta)
    means = b.means + w * (b.means - a.means)
    logv = torch.log(b.variances) + w * (torch.log(b.variances) - torch.log(a.variances))
    return means, torch.exp(logv).clamp(cfg.var_min, cfg.var_max)


def solve_path(
    stats: ClassStats,
    cfg: FPIConfig,
    z_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_point: Callable[[PathPoint], None] | None = None,
) -> LambdaPath:
    """Solve Prop. 1 along ``cfg.path``'s geometric grid by continuation and choose lambda on validation.

    The first point starts from ``start`` (e.g. the previous fine-tuning round's chosen Gaussians) or
    from ``cfg.init``; the second from the first fixed point; every later point from the secant
    prediction of the last two (:func:`_predict`; ``path.predictor: false``: the last fixed point).  Divergence is flagged,
    never raised: the first diverging lambda is the boundary and the path stops there.  ``z_val``,
    ``y_val`` are the validation latents and labels (the only data the choice sees).
    """
    if cfg.method != "fpi":
        raise ValueError(f"fpi.lam: auto needs method 'fpi' (diagonal FPI), got {cfg.method!r}")
    p: LambdaPathConfig = cfg.path
    grid = geometric_grid(p.lam_min, p.lam_max, p.points)
    opts = {**_options(cfg), "on_divergence": "flag"}
    x = start
    points: list[PathPoint] = []
    results: list[FPIResult] = []
    boundary: float | None = None
    for j, lam in enumerate(grid):
        t0 = time.perf_counter()
        if len(results) >= 2 and p.predictor:
            x = _predict(results[-2], results[-1], math.log(grid[j - 2]), math.log(grid[j - 1]), math.log(lam), cfg)
        warm = {} if x is None else {"init_means": x[0], "init_variances": x[1]}
        r = solve_fpi_from_stats(stats, lam=lam, **opts, **warm)
        last = r.history[-1] if r.history else {}
        diverged = r.status == "diverged"
        lo, med = separation(r.means, r.variances)
        acc = math.nan if diverged else gaussian_accuracy(r.means, r.variances, z_val, y_val)
        res = float(last.get("residual", math.nan))
        pt = PathPoint(lam=lam, status=r.status, iterations=r.iterations,
                       objective=float(last.get("objective", math.nan)) if not diverged else math.nan,
                       residual=res, certified=r.status == "converged" and res <= cfg.tol, min_kl=lo, median_kl=med,
                       val_acc=acc, seconds=time.perf_counter() - t0)
        points.append(pt)
        results.append(r)
        if on_point is not None:
            on_point(pt)
        log.info("lambda path: lambda=%g %s in %d iterations, residual %.3g, min/median KL %.3g/%.3g, val NF-Acc %.4f",
                 lam, r.status, r.iterations, res, lo, med, acc)
        if diverged:
            boundary = lam
            log.info("lambda path: the FPI diverges at lambda=%g (boundary); the path stops here", lam)
            break
        x = (r.means, r.variances)
    i, reason = choose(points, p.tie_tol)
    chosen = results[i]
    t0 = time.perf_counter()
    cold = solve_fpi_from_stats(stats, lam=points[i].lam, **opts)
    dist = _distance(chosen, cold) if cold.status != "diverged" else math.inf
    cold_obj = float(cold.history[-1]["objective"]) if cold.history else math.nan
    cold_rec = {"lam": points[i].lam, "status": cold.status, "iterations": cold.iterations, "objective": cold_obj,
                "path_objective": points[i].objective, "distance": dist, "same_point": dist <= p.same_point_tol,
                "seconds": time.perf_counter() - t0}
    if not cold_rec["same_point"]:
        log.warning("lambda path: at lambda=%g the warm-started fixed point differs from a cold solve's (whitened "
                    "distance %.3g; objectives %.6g warm vs %.6g cold); the warm one is used (it is the continuation "
                    "of the path)", points[i].lam, dist, points[i].objective, cold_obj)
    settings = {**chosen.settings, "lam": points[i].lam, "lam_auto": True}
    result = dataclasses.replace(chosen, settings=settings,
                                 message=f"lambda={points[i].lam:g} chosen by the lambda path: {reason}")
    return LambdaPath(points=tuple(points), grid=tuple(grid), boundary=boundary, chosen=points[i].lam, chosen_index=i,
                      rule=RULE, reason=reason, result=result, cold=cold_rec)


def cold_grid(stats: ClassStats, cfg: FPIConfig, grid: Sequence[float]) -> list[FPIResult]:
    """Independent cold solves at every lambda of ``grid`` (what the path replaces; for benchmarks and tests)."""
    opts = {**_options(cfg), "on_divergence": "flag"}
    return [solve_fpi_from_stats(stats, lam=float(lam), **opts) for lam in grid]


def path_table(record: dict[str, Any], source: str, *, stamp: dict[str, str] | None = None) -> Any:
    """The path as a :class:`nfpi.report.tables.Table` (one row per lambda), from a solve record's ``path``.

    Every cell points back to ``source`` (the solve record JSON) and its key, like the paper's tables.
    """
    from nfpi.report.tables import Cell, Table

    path = record["path"]
    rows = []
    for i, p in enumerate(path["points"]):
        key = f"path.points.{i}"
        mark = ("chosen" if i == path["chosen_index"] else
                "boundary (diverged)" if p["status"] == "diverged" else "")
        acc = p["val_acc"] if p["val_acc"] == p["val_acc"] else None  # NaN -> empty cell
        rows.append([
            Cell(p["lam"], source, f"{key}.lam", fmt="{:.4g}"),
            Cell(p["status"], source, f"{key}.status"),
            Cell(p["iterations"], source, f"{key}.iterations", fmt="{:d}"),
            Cell(p["residual"], source, f"{key}.residual", fmt="{:.1e}"),
            Cell(p["min_kl"], source, f"{key}.min_kl", fmt="{:.3g}"),
            Cell(p["median_kl"], source, f"{key}.median_kl", fmt="{:.3g}"),
            Cell(None if acc is None else 100.0 * acc, source, f"{key}.val_acc", note="-"),
            Cell(mark),
        ])
    cold = path["cold"]
    notes = [
        f"Rule: {path['rule']}. Chosen: lambda = {path['chosen']:.4g}: {path['reason']}.",
        ("Divergence boundary: lambda = %.4g (the path stops there)." % path["boundary"]) if path["boundary"] is not None
        else f"No divergence up to lambda = {path['grid'][-1]:.4g} (the end of the grid).",
        f"Path: {path['total_iterations']} fixed-point iterations in all, each point warm-started from the previous one. "
        f"A cold solve at the chosen lambda took {cold['iterations']} iterations and "
        + ("reached the same fixed point" if cold["same_point"] else
           f"reached another fixed point (whitened distance {cold['distance']:.3g}; objective {cold['objective']:.6g} "
           f"cold vs {cold['path_objective']:.6g} on the path)") + ".",
    ]
    return Table("lambda_path", "Lambda path: NFPI solved along a geometric grid of lambda (continuation), "
                 "lambda chosen on the validation split",
                 ["lambda", "status", "iterations", "residual", "min KL", "median KL", "val NF-Acc (%)", ""],
                 rows, notes=notes, stamp=dict(stamp or {}))
