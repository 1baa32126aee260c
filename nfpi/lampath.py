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

* the separation ratio of the Gaussians against the spread of the classes' training latents
  (:func:`separation_ratio`).

The iteration diverges above some lambda (e.g. with learned variances); the first grid point at which
it does is the *divergence boundary*: it is reported as a number and the path stops there.  lambda is
chosen by a documented rule (``fpi.path.rule``, :data:`RULES`, :func:`choose`) that sees the training
statistics and the validation split, never the test split:

* ``separation`` (the default): the smallest lambda whose Gaussians are separated by at least
  ``fpi.path.separation`` times the classes' own spread (:func:`separation_ratio`).  Fine-tuning moves
  each class's latents towards its Gaussian; the rule asks for a repulsion at which the classes' latent
  clouds, so moved, stand apart by twice their radii (default target 2).  The NF-Acc of the Gaussians on
  the *pretrained* latents cannot tell this: along the path it is flat (digits28: 59-62 %) or falls
  (digits: 78 -> 72 %) while the fine-tuned NF-Acc rises (digits28: 77 % at lambda 1000, 95 % at 10^5;
  docs/bench/generalise.md).  With ``fpi.path.guard`` it still ends the path where it falls out of
  ``tie_tol``; by default it is recorded, not used.
* ``largest``: the largest lambda whose validation NF-Acc stays within ``tie_tol`` of the best so far.
* ``accuracy``: the largest validation NF-Acc, ties (within ``tie_tol``) to the smaller lambda.

The first two rules read the path in order of lambda, so with ``stop_early`` the path stops where
their choice is final (the separation target reached, or the NF-Acc fallen out of the tolerance)
and the choice is the same as on the whole grid.  One cold solve at the chosen lambda checks that
continuation did not land on another fixed point; the record keeps both objectives.

The path's solves are Anderson-accelerated (:data:`ANDERSON`; ``nfpi.fpi.solve_fpi_from_stats(...,
anderson=m)``): the fixed point and its certificate are the plain iteration's (the same stopping test on
the plain map's residual), reached in a third to a fifth of the iterations.  The cold check starts from
``cfg.init`` and is accelerated the same way (its record says so: ``cold.anderson``).

Example::

    >>> from nfpi.fpi import ClassStats, FPIConfig
    >>> path = solve_path(stats, FPIConfig(lam="auto", learn="mean", init="identity"), z_val, y_val)
    >>> path.chosen, path.boundary, path.points[0].val_acc, path.stop
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

__all__ = ["PathPoint", "LambdaPath", "RULES", "geometric_grid", "separation", "separation_ratio", "gaussian_accuracy",
           "acc_tolerance", "choose", "stop_reason", "rule_text", "solve_path", "cold_grid", "path_table"]

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
    sep_ratio: float = math.nan  #: :func:`separation_ratio` of these Gaussians (the rule separation's measure)
    evaluations: int = 0  #: evaluations of the fixed-point map (iterations + rejected steps + the first one)


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
    stop: str = ""  #: why the path ended where it did (end of the grid, the boundary, or the rule's choice final)
    anderson: int = 0  #: Anderson memory of the path's solves and of the cold check (0: the plain iteration)

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
            "stop": self.stop,
            "anderson": self.anderson,
        }


def geometric_grid(lam_min: float, lam_max: float, points: int) -> list[float]:
    """``points`` values from ``lam_min`` to ``lam_max``, equally spaced in log lambda (both ends included)."""
    if not (0 < lam_min < lam_max) or points < 2:
        raise ValueError(f"need 0 < lam_min < lam_max and points >= 2, got {lam_min}, {lam_max}, {points} "
                         "(config keys fpi.path.lam_min / lam_max / points)")
    r = math.log(lam_max / lam_min) / (points - 1)
    return [float(lam_min * math.exp(r * i)) for i in range(points - 1)] + [float(lam_max)]


def separation(means: torch.Tensor, variances: torch.Tensor, *, kl: torch.Tensor | None = None) -> tuple[float, float]:
    """Smallest and median pairwise KL between distinct classes (Eq. 3's KL; one matrix product, or ``kl``
    when the caller has it already)."""
    k = means.shape[0]
    if k < 2:
        return math.nan, math.nan
    kl = pairwise_kl(means.to(DTYPE), variances.to(DTYPE)) if kl is None else kl
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


def separation_ratio(means: torch.Tensor, variances: torch.Tensor, spread: torch.Tensor, *,
                     kl: torch.Tensor | None = None) -> float:
    """How far apart the Gaussians are against the spread of the classes: the rule ``separation``'s measure.

    ``min_{a != b} sqrt(2 KL(N_a || N_b)) / (r_a + r_b)`` with ``r_y = sqrt(sum_j s_yj / v_yj)``, ``s_y``
    the variance of class y's training latents (``spread``, [K, d]) whitened by its Gaussian's variance.
    With equal variances ``sqrt(2 KL)`` is the whitened distance between the two means (Eq. 3's KL), and
    a class's latents lie at about ``r_y`` from their mean (a d-dimensional cloud concentrates on that
    radius): a ratio of 1 says that the two latent clouds, moved to their Gaussians by fine-tuning, no
    longer overlap.  One matrix product (:func:`nfpi.fpi.pairwise_kl`, or ``kl`` when the caller has it);
    NaN for K < 2.
    """
    k = means.shape[0]
    if k < 2:
        return math.nan
    v = variances.to(DTYPE)
    kl = pairwise_kl(means.to(DTYPE), v) if kl is None else kl
    r = torch.sqrt((spread.to(DTYPE) / v).sum(1))
    ratio = torch.sqrt(2.0 * kl) / (r[:, None] + r[None, :])
    return float(ratio[~torch.eye(k, dtype=torch.bool)].min())


RULES: dict[str, str] = {
    "separation": "the smallest lambda whose separation ratio (closest pair of means over the sum of their classes' "
                  "latent radii) reaches {separation:g}, among the certified points{guard}; if no point reaches it, "
                  "the largest such lambda",
    "largest": "the largest lambda (in order along the path) whose validation NF-Acc stays within {tol} of the best "
               "so far, among certified points",
    "accuracy": "the largest validation NF-Acc among certified points, ties within {tol} to the smaller lambda",
}


def acc_tolerance(best: float, n_val: int, tie_tol: float | str) -> float:
    """The NF-Acc tolerance of the rules: ``tie_tol``, or for ``"se"`` one binomial standard error of the best
    accuracy on ``n_val`` validation latents, ``sqrt(p (1 - p) / n)`` with ``p = (c + 1) / (n + 2)`` (``c`` the
    correct count; the +1 / +2 keeps it positive at 0 % and 100 %).  A drop smaller than that is noise."""
    if tie_tol != "se":
        return float(tie_tol)
    c = round(best * n_val)
    q = (c + 1) / (n_val + 2)
    return math.sqrt(q * (1 - q) / max(n_val, 1))


def _guarded(p: LambdaPathConfig) -> bool:
    """Whether a fall of the validation NF-Acc ends the path: always for ``largest`` (its definition), for
    ``separation`` only with ``fpi.path.guard``."""
    return p.rule != "separation" or p.guard


def _scan(points: Sequence[PathPoint], p: LambdaPathConfig, n_val: int
          ) -> tuple[list[int], int | None, int | None, float]:
    """Read the path in order of lambda: the certified points whose validation NF-Acc is within tolerance of
    the best before them, up to the first that falls out; that point's index (or None); the first of them
    reaching the separation target (or None); the best NF-Acc among them.  Every rule is a function of this
    prefix, so stopping the path at a fall-out or at the target cannot change the choice."""
    ok: list[int] = []
    best, target = -math.inf, None
    for i, pt in enumerate(points):
        if not (pt.certified and math.isfinite(pt.val_acc)):
            continue
        if ok and _guarded(p) and pt.val_acc < best - acc_tolerance(best, n_val, p.tie_tol):
            return ok, i, target, best
        best = max(best, pt.val_acc)
        ok.append(i)
        if target is None and pt.sep_ratio >= p.separation:
            target = i
    return ok, None, target, best


def stop_reason(points: Sequence[PathPoint], p: LambdaPathConfig, n_val: int) -> str:
    """Why the rule's choice can no longer change after ``points`` ("" while it can): the path may stop here."""
    if p.rule == "accuracy":
        return ""
    _, out, target, best = _scan(points, p, n_val)
    if p.rule == "separation" and target is not None:
        return (f"the separation target {p.separation:g} was reached at lambda={points[target].lam:.4g}; "
                "larger lambdas were not solved (fpi.path.stop_early)")
    if out is not None:
        return (f"the validation NF-Acc fell to {points[out].val_acc:.4f} at lambda={points[out].lam:.4g}, more than "
                f"{acc_tolerance(best, n_val, p.tie_tol):.4f} below the best {best:.4f}; larger lambdas were not solved "
                "(fpi.path.stop_early)")
    return ""


def rule_text(p: LambdaPathConfig) -> str:
    """The rule in words, with its parameters."""
    tol = "one standard error" if p.tie_tol == "se" else f"{float(p.tie_tol):g}"
    guard = (f" whose validation NF-Acc stays within {tol} of the best so far" if p.guard
             else " (the validation NF-Acc of each point is recorded, not used: fpi.path.guard is off)")
    return f"{p.rule}: " + RULES[p.rule].format(separation=p.separation, tol=tol, guard=guard)


def choose(points: Sequence[PathPoint], p: LambdaPathConfig, n_val: int) -> tuple[int, str]:
    """Index of the chosen point and the reason, by the rule ``p.rule`` (:data:`RULES`); it reads only what
    the points hold (the training statistics' separation and the validation NF-Acc), never the test split.

    Raises ``ValueError`` when no point is certified (every solve diverged or hit ``max_iter``).
    """
    ok, out, target, best = _scan(points, p, n_val)
    if not ok:
        raise ValueError("lambda path: no lambda of the grid gave a converged fixed point; lower fpi.path.lam_min or "
                         "raise fpi.max_iter (statuses: " + ", ".join(f"{q.lam:g}: {q.status}" for q in points) + ")")
    end = (f"the validation NF-Acc fell out of the tolerance at lambda={points[out].lam:.4g}" if out is not None
           else "the end of the path")
    if p.rule == "accuracy":
        cert = [i for i, q in enumerate(points) if q.certified and math.isfinite(q.val_acc)]
        top = max(points[i].val_acc for i in cert)
        tol = acc_tolerance(top, n_val, p.tie_tol)
        ties = [j for j in cert if points[j].val_acc >= top - tol]
        i = min(ties, key=lambda j: points[j].lam)
        reason = (f"validation NF-Acc {points[i].val_acc:.4f} at lambda={points[i].lam:.4g} (best {top:.4f}"
                  + (f"; tied within {tol:.4g} at lambda in {[float(f'{points[t].lam:.4g}') for t in ties]}, "
                     "the smallest kept" if len(ties) > 1 else "") + ")")
        return i, reason
    if p.rule == "separation" and target is not None:
        best = max(points[j].val_acc for j in ok if j <= target)  # the best before the choice, as the path saw it
    acc = (f"validation NF-Acc {{:.4f}}, within {acc_tolerance(best, n_val, p.tie_tol):.4f} of the best so far "
           f"{best:.4f}" if _guarded(p) else f"validation NF-Acc {{:.4f}} (best so far {best:.4f}; not used)")
    if p.rule == "separation" and target is not None:
        i = target
        before = [j for j in ok if j < i]
        prev = (f"; {points[before[-1]].sep_ratio:.3g} at lambda={points[before[-1]].lam:.4g}" if before else "")
        return i, (f"separation ratio {points[i].sep_ratio:.3g} >= {p.separation:g} first at "
                   f"lambda={points[i].lam:.4g}{prev}; " + acc.format(points[i].val_acc))
    i = ok[-1]
    if p.rule == "separation":
        top = max(ok, key=lambda j: points[j].sep_ratio)
        return i, (f"the separation target {p.separation:g} was not reached before {end} (largest ratio "
                   f"{points[top].sep_ratio:.3g} at lambda={points[top].lam:.4g}); the largest lambda"
                   + (" within the tolerance" if _guarded(p) else "")
                   + f" kept: lambda={points[i].lam:.4g}, " + acc.format(points[i].val_acc))
    return i, f"the largest lambda before {end}: lambda={points[i].lam:.4g}, " + acc.format(points[i].val_acc)


#: Anderson memory of the path's solves (:func:`nfpi.fpi.solve_fpi_from_stats`'s ``anderson``).  The plain
#: iteration converges linearly at a rate that nears 1 as lambda grows (413 iterations at lambda = 10^4 on
#: digits); Anderson mixing of the last 5 map values needs about a quarter of them (docs/bench/lampath.md).
#: The stopping test is the plain map's residual, so every point is certified as a plain solve's would be.
ANDERSON = 5


def _options(cfg: FPIConfig) -> dict[str, Any]:
    return {"config": cfg}  # the solver's options are the config's (keyword overrides beside it)


def _evaluations(r: FPIResult) -> int:
    """Evaluations of the fixed-point map a solve made: the first, one per accepted step, one per rejected one."""
    return len(r.history) + int(sum(h.get("backtracks", 0.0) for h in r.history[1:]))


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


# Long (88 lines): the continuation loop (predict, solve, certify, measure, stop) and the cold check share
# the path's state; the docstring is a quarter of it.
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
    never raised: the first diverging lambda is the boundary and the path stops there.  Each point is solved
    with Anderson acceleration (:data:`ANDERSON`), the cold check at the chosen lambda too.  With ``path.stop_early``
    the path also stops where the rule's choice is final (:func:`stop_reason`); ``LambdaPath.stop`` says why.  ``z_val``,
    ``y_val`` are the validation latents and labels (the only data the choice sees).
    """
    if cfg.method != "fpi":
        raise ValueError(f"fpi.lam: auto needs method 'fpi' (diagonal FPI), got {cfg.method!r}")
    p: LambdaPathConfig = cfg.path
    grid = geometric_grid(p.lam_min, p.lam_max, p.points)
    n_val = int(y_val.shape[0])
    stop = f"the end of the grid (lambda={grid[-1]:.4g})"
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
        r = solve_fpi_from_stats(stats, lam=lam, **opts, **warm, anderson=ANDERSON)
        last = r.history[-1] if r.history else {}
        diverged = r.status == "diverged"
        kl = pairwise_kl(r.means.to(DTYPE), r.variances.to(DTYPE)) if r.means.shape[0] > 1 else None  # once a point
        lo, med = separation(r.means, r.variances, kl=kl)
        acc = math.nan if diverged else gaussian_accuracy(r.means, r.variances, z_val, y_val)
        res = float(last.get("residual", math.nan))
        ratio = math.nan if diverged else separation_ratio(r.means, r.variances, stats.var, kl=kl)
        pt = PathPoint(lam=lam, status=r.status, iterations=r.iterations,
                       objective=float(last.get("objective", math.nan)) if not diverged else math.nan,
                       residual=res, certified=r.status == "converged" and res <= cfg.tol, min_kl=lo, median_kl=med,
                       val_acc=acc, seconds=time.perf_counter() - t0, sep_ratio=ratio, evaluations=_evaluations(r))
        points.append(pt)
        results.append(r)
        if on_point is not None:
            on_point(pt)
        log.info("lambda path: lambda=%g %s in %d iterations, residual %.3g, min/median KL %.3g/%.3g, separation "
                 "ratio %.3g, val NF-Acc %.4f", lam, r.status, r.iterations, res, lo, med, ratio, acc)
        if diverged:
            boundary = lam
            stop = f"the divergence boundary (lambda={lam:.4g})"
            log.info("lambda path: the FPI diverges at lambda=%g (boundary); the path stops here", lam)
            break
        if p.stop_early and (why := stop_reason(points, p, n_val)):
            stop = why
            log.info("lambda path: %s", why)
            break
        x = (r.means, r.variances)
    i, reason = choose(points, p, n_val)
    chosen = results[i]
    t0 = time.perf_counter()
    if i == 0 and start is None:  # the first point started from cfg.init: it is the cold solve, no second one needed
        cold, dist, cold_obj = chosen, 0.0, points[0].objective
    else:
        # from cfg.init, accelerated like the path: the check is about the start (another fixed point reached
        # from it), and it costs a plain solve's iterations at large lambda (286 at 10^4 on 16x16 glyphs);
        # tests and bench_lampath compare the accelerated points with plain cold solves at every lambda
        cold = solve_fpi_from_stats(stats, lam=points[i].lam, **opts, anderson=ANDERSON)
        dist = _distance(chosen, cold) if cold.status != "diverged" else math.inf
        cold_obj = float(cold.history[-1]["objective"]) if cold.history else math.nan
    cold_rec = {"lam": points[i].lam, "status": cold.status, "iterations": cold.iterations, "objective": cold_obj,
                "path_objective": points[i].objective, "distance": dist, "same_point": dist <= p.same_point_tol,
                "seconds": time.perf_counter() - t0, "is_first_point": cold is chosen, "evaluations": _evaluations(cold),
                "anderson": int(cold.settings.get("anderson", 0))}
    if not cold_rec["same_point"]:
        log.warning("lambda path: at lambda=%g the warm-started fixed point differs from a cold solve's (whitened "
                    "distance %.3g; objectives %.6g warm vs %.6g cold); the warm one is used (it is the continuation "
                    "of the path)", points[i].lam, dist, points[i].objective, cold_obj)
    settings = {**chosen.settings, "lam": points[i].lam, "lam_auto": True}
    result = dataclasses.replace(chosen, settings=settings,
                                 message=f"lambda={points[i].lam:g} chosen by the lambda path: {reason}")
    return LambdaPath(points=tuple(points), grid=tuple(grid), boundary=boundary, chosen=points[i].lam, chosen_index=i,
                      rule=rule_text(p), reason=reason, result=result, cold=cold_rec, stop=stop, anderson=ANDERSON)


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
        sep = p.get("sep_ratio", math.nan)
        rows.append([
            Cell(p["lam"], source, f"{key}.lam", fmt="{:.4g}"),
            Cell(p["status"], source, f"{key}.status"),
            Cell(p["iterations"], source, f"{key}.iterations", fmt="{:d}"),
            Cell(p["residual"], source, f"{key}.residual", fmt="{:.1e}"),
            Cell(p["min_kl"], source, f"{key}.min_kl", fmt="{:.3g}"),
            Cell(p["median_kl"], source, f"{key}.median_kl", fmt="{:.3g}"),
            Cell(sep if sep == sep else None, source, f"{key}.sep_ratio", fmt="{:.3g}", note="-"),
            Cell(None if acc is None else 100.0 * acc, source, f"{key}.val_acc", note="-"),
            Cell(mark),
        ])
    cold = path["cold"]
    notes = [
        f"Rule: {path['rule']}. Chosen: lambda = {path['chosen']:.4g}: {path['reason']}.",
        ("Divergence boundary: lambda = %.4g (the path stops there)." % path["boundary"]) if path["boundary"] is not None
        else f"No divergence up to lambda = {path['points'][-1]['lam']:.4g}; the path ended at "
             f"{path.get('stop') or 'the end of the grid'}.",
        f"Path: {path['total_iterations']} fixed-point iterations in all, each point warm-started from the previous one. "
        f"A cold solve at the chosen lambda took {cold['iterations']} iterations and "
        + ("reached the same fixed point" if cold["same_point"] else
           f"reached another fixed point (whitened distance {cold['distance']:.3g}; objective {cold['objective']:.6g} "
           f"cold vs {cold['path_objective']:.6g} on the path)") + ".",
    ]
    return Table("lambda_path", "Lambda path: NFPI solved along a geometric grid of lambda (continuation), "
                 "lambda chosen on the validation split",
                 ["lambda", "status", "iterations", "residual", "min KL", "median KL", "separation ratio",
                  "val NF-Acc (%)", ""],
                 rows, notes=notes, stamp=dict(stamp or {}))
