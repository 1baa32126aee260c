"""Class Gaussians by fixed-point iteration (NFPI, Enescu & Sahbi, BMVC 2024, Sec. 4).

Everything here works on *class statistics* ``(n_y, m_y, q_y)`` (spec "Notation"): one streaming
pass over the latents (:class:`StatsAccumulator`) gives them in O(K d) memory, and every solver
below needs nothing else.

* :func:`objective` is Eq. 4: per-class Gaussian NLL plus ``lam / (K(K-1))`` times the KLD
  repulsion of Eq. 3, with the normaliser ``pi`` of Eq. 9 (``"pair"``) or Eq. 10 (``"mean"``)
  held constant (lagged) as in the spec.
* :func:`solve_fpi_from_stats` iterates Proposition 1 (Eqs. 5-7) in the corrected diagonal form
  of ``shared/spec/method.md`` with step control on the fixed-point residual, variance bounds and
  divergence detection (``docs/method.md`` says where this departs from the printed equations).
* :func:`solve_fpi_full` is the full-covariance variant (Eq. 6 as a matrix geometric mean).
* :func:`solve_gd` is Baseline 2 (NF^GD): Adam/SGD on the same objective with sigmoid-reparametrised
  variances under the five learning-rate policies of the spec.
* :func:`solve` is what the pipeline's ``solve`` stage calls with an :class:`FPIConfig`.

Every sum over class pairs is a matrix product with a ``[K, K]`` kernel; no ``[K, K, d]`` tensor
is formed and there is no Python loop over classes.  All arithmetic is float64.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from nfpi.progress import progress

__all__ = [
    "ClassStats",
    "StatsAccumulator",
    "FPIConfig",
    "LambdaPathConfig",
    "FPIResult",
    "FPIDivergenceError",
    "LR_POLICIES",
    "pairwise_kl",
    "pairwise_kl_full",
    "pi_normaliser",
    "pair_lambda_limit",
    "objective",
    "objective_full",
    "fpi_step",
    "solve_fpi",
    "solve_fpi_from_stats",
    "solve_fpi_full",
    "solve_gd",
    "solve",
    "lr_at",
]

log = logging.getLogger(__name__)

DTYPE = torch.float64
PiKind = Literal["mean", "pair"]
LearnKind = Literal["both", "mean", "var"]
InitKind = Literal["data", "identity"]

#: Exponents ``p`` of the NF^GD learning-rate policies ``lr(t) = lr0 * (1 - t/T)^p`` (spec, Baseline 2).
LR_POLICIES: dict[str, float] = {
    "sublinear_v1": 0.5,
    "sublinear_v2": 0.25,
    "linear": 1.0,
    "superlinear_v1": 2.0,
    "superlinear_v2": 4.0,
}


# ----------------------------------------------------------------------------------------------
# Class statistics
# ----------------------------------------------------------------------------------------------


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    return x


@dataclass(frozen=True)
class ClassStats:
    """Per-class sufficient statistics of the latents (spec: ``n_y``, ``m_y``, ``q_y``), float64.

    ``second`` (optional, ``[K, d, d]``) is the per-class second-moment matrix ``E[z z^T | y]``,
    needed only by the full-covariance solver :func:`solve_fpi_full`.
    """

    counts: torch.Tensor  #: [K] number of samples per class
    mean: torch.Tensor  #: [K, d] m_y, class mean of z
    sq: torch.Tensor  #: [K, d] q_y, class mean of z*z (elementwise)
    second: torch.Tensor | None = None  #: [K, d, d] class mean of z z^T (full covariance only)

    def __post_init__(self) -> None:
        for name in ("counts", "mean", "sq", "second"):  # the solver's arithmetic is float64 throughout
            val = getattr(self, name)
            if val is not None and val.dtype != DTYPE:
                object.__setattr__(self, name, val.to(DTYPE))
        if self.mean.ndim != 2 or self.sq.shape != self.mean.shape or self.counts.shape != (self.mean.shape[0],):
            raise ValueError(
                f"ClassStats: expected counts [K], mean [K, d], sq [K, d]; got {tuple(self.counts.shape)}, "
                f"{tuple(self.mean.shape)}, {tuple(self.sq.shape)}"
            )
        if self.second is not None and self.second.shape != (*self.mean.shape, self.mean.shape[1]):
            raise ValueError(f"ClassStats: second must be [K, d, d], got {tuple(self.second.shape)}")

    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    @functools.cached_property
    def var(self) -> torch.Tensor:
        """Biased class variance ``q_y - m_y^2`` (clamped at 0 against rounding), [K, d]; computed once."""
        return (self.sq - self.mean * self.mean).clamp_min(0.0)

    @property
    def cov(self) -> torch.Tensor:
        """Biased class covariance ``E[z z^T] - m m^T``, [K, d, d] (needs ``second``)."""
        if self.second is None:
            raise ValueError("ClassStats.cov needs full second moments: build the stats with full=True")
        return self.second - self.mean[:, :, None] * self.mean[:, None, :]

    @classmethod
    def from_latents(cls, z: Any, y: Any, num_classes: int, *, full: bool = False) -> ClassStats:
        """Statistics of latents ``z`` [N, d] with labels ``y`` [N] in one pass (``index_add``, no class loop)."""
        acc = StatsAccumulator(num_classes, int(_as_tensor(z, "z").reshape(len(z), -1).shape[1]), full=full)
        acc.update(z, y)
        return acc.finalize()


class StatsAccumulator:
    """Streaming accumulator of :class:`ClassStats`: ``update`` batch by batch, then ``finalize``.

    Sums are kept in float64 whatever the input dtype, so a pass over millions of float32 latents
    read from disk loses nothing; memory is O(K d) (O(K d^2) with ``full=True``).
    """

    def __init__(self, num_classes: int, dim: int, *, full: bool = False) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"StatsAccumulator: num_classes and dim must be >= 1, got {num_classes}, {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.full = bool(full)
        self._n = torch.zeros(num_classes, dtype=DTYPE)
        self._s1 = torch.zeros(num_classes, dim, dtype=DTYPE)
        self._s2 = torch.zeros(num_classes, dim, dtype=DTYPE)
        self._s2full = torch.zeros(num_classes, dim, dim, dtype=DTYPE) if full else None

    def update(self, z: Any, y: Any) -> None:
        """Add a batch: ``z`` [B, d] (or [B, ...], flattened) and integer labels ``y`` [B]."""
        zt = _as_tensor(z, "z").detach().to("cpu", DTYPE).reshape(len(z), -1)
        yt = _as_tensor(y, "y").detach().to("cpu").reshape(-1)
        if zt.shape[1] != self.dim:
            raise ValueError(f"StatsAccumulator.update: latents have dim {zt.shape[1]}, expected {self.dim}")
        if yt.shape[0] != zt.shape[0]:
            raise ValueError(f"StatsAccumulator.update: {zt.shape[0]} latents but {yt.shape[0]} labels")
        if yt.is_floating_point():
            raise ValueError("StatsAccumulator.update: labels must be integers (int64 class ids 0..K-1)")
        yt = yt.long()
        if yt.numel() and (int(yt.min()) < 0 or int(yt.max()) >= self.num_classes):
            raise ValueError(
                f"StatsAccumulator.update: label out of range [0, {self.num_classes}) "
                f"(min {int(yt.min())}, max {int(yt.max())}); check num_classes"
            )
        if not torch.isfinite(zt).all():
            raise ValueError("StatsAccumulator.update: latents contain NaN/inf (check the flow checkpoint)")
        self._n.index_add_(0, yt, torch.ones_like(yt, dtype=DTYPE))
        self._s1.index_add_(0, yt, zt)
        self._s2.index_add_(0, yt, zt * zt)
        if self._s2full is not None:
            self._s2full.index_add_(0, yt, zt[:, :, None] * zt[:, None, :])

    def finalize(self) -> ClassStats:
        """The class statistics; raises if a class received no sample."""
        empty = torch.nonzero(self._n == 0).flatten().tolist()
        if empty:
            raise ValueError(
                f"StatsAccumulator.finalize: classes {empty[:20]}{'...' if len(empty) > 20 else ''} have no "
                f"samples; every class 0..{self.num_classes - 1} needs at least one latent (check labels / num_classes)"
            )
        n = self._n.clone()
        second = self._s2full / n[:, None, None] if self._s2full is not None else None
        return ClassStats(counts=n, mean=self._s1 / n[:, None], sq=self._s2 / n[:, None], second=second)


# ----------------------------------------------------------------------------------------------
# Config, result, errors
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LambdaPathConfig:
    """The lambda path of ``fpi.lam: auto`` (nfpi.lampath): a geometric grid solved by continuation."""

    lam_min: float = 1.0  #: first lambda of the geometric grid
    lam_max: float = 10000.0  #: last lambda of the grid (the path stops earlier where the FPI diverges)
    points: int = 13  #: grid points from lam_min to lam_max, equally spaced in log lambda
    rule: Literal["separation", "largest", "accuracy"] = "separation"  #: how the path chooses lambda (nfpi.lampath)
    separation: float = 1.0  #: rule separation's target for the closest pair: distance / sum of the two class radii
    tie_tol: float | Literal["se"] = "se"  #: NF-Acc within this of the best is a tie; se: one binomial standard error
    stop_early: bool = True  #: stop where the rule's choice is final (false: solve the whole grid; same choice)
    same_point_tol: float = 1e-4  #: whitened distance under which the warm and the cold fixed point are the same
    predictor: bool = True  #: start each solve from the secant extrapolation of the last two fixed points (else the last one)


@dataclass(frozen=True)
class FPIConfig:
    """The pipeline's ``fpi`` config slice: every solver knob with its default."""

    method: Literal["fpi", "fpi_full", "gd"] = "fpi"  #: diagonal FPI, full-covariance FPI, or NF^GD (Baseline 2)
    lam: float | Literal["auto"] = 100.0  #: lambda of Eq. 4 (0 = Baseline 1); "auto": chosen on validation by the lambda path (fpi.path)
    alpha: float = 1.0  #: alpha of Eq. 3 (temperature of the KLD kernel), roughly 0.1..10
    pi: Literal["mean", "pair"] = "mean"  #: normaliser: Eq. 10 ("mean") or Eq. 9 ("pair")
    learn: Literal["both", "mean", "var"] = "both"  #: Table 3 ablation: which parameters move
    init: Literal["data", "identity"] = "data"  #: data: class mean/variance; identity: class mean, unit variance
    max_iter: int = 500  #: maximum accepted fixed-point iterations
    tol: float = 1e-10  #: stop when the RMS whitened fixed-point residual is below this
    step_control: Literal["backtrack", "none"] = "backtrack"  #: residual backtracking, or the plain iteration
    step_init: float = 1.0  #: first relaxation step (1 = the plain update of Prop. 1)
    step_min: float = 1e-6  #: backtracking below this step means no progress: reported as divergence
    step_shrink: float = 0.5  #: factor applied to the step when the residual does not decrease
    step_grow: float = 2.0  #: factor applied (up to 1) after an accepted step
    max_backtracks: int = 30  #: map evaluations per iteration before giving up
    divergence_factor: float = 1e6  #: residual above this times its best value = divergence
    bound_patience: int = 10  #: variances pinned at a bound this many iterations in a row = divergence
    split: Literal["positive", "paper"] = "positive"  #: how Eq. 6's A and B are split (docs/method.md)
    var_min: float = 1e-10  #: lower variance bound (safeguard); an active bound blocks convergence
    var_max: float = 1e10  #: upper variance bound (safeguard; pi="pair" can push variances up without limit)
    pi_floor: float = 1e-12  #: floor on the normaliser pi (identical classes have KL = 0)
    on_divergence: Literal["raise", "flag"] = "raise"  #: raise FPIDivergenceError, or return status "diverged"
    # --- NF^GD (method = "gd") ---
    policy: Literal["sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2"] = "linear"
    optimizer: Literal["adam", "sgd"] = "adam"  #: GD optimiser
    steps: int = 2000  #: GD steps T
    lr: float = 1e-2  #: GD base learning rate lr0
    gd_vmin: float | None = None  #: sigmoid lower bound; None = 1e-2 x the smallest initial variance
    gd_vmax: float | None = None  #: sigmoid upper bound; None = 1e2 x the largest initial variance
    path: LambdaPathConfig = field(default_factory=LambdaPathConfig)  #: the grid and choice rule of lam: auto


_SOLVER_KEYS = (
    "init", "max_iter", "tol", "step_control", "step_init", "step_min", "step_shrink", "step_grow",
    "max_backtracks", "divergence_factor", "bound_patience", "split", "var_min", "var_max", "pi_floor", "on_divergence",
)  # fmt: skip


class FPIDivergenceError(RuntimeError):
    """The fixed-point iteration diverged (or made no progress); the message says what to change."""

    def __init__(self, message: str, *, lam: float, iteration: int, residuals: Sequence[float]) -> None:
        super().__init__(message)
        self.lam = lam
        self.iteration = iteration
        self.residuals = list(residuals)


@dataclass(frozen=True)
class FPIResult:
    """Solved class Gaussians and how the solver got there."""

    means: torch.Tensor  #: [K, d] float64
    variances: torch.Tensor  #: [K, d] float64 (diagonal), or [K, d, d] covariances (full)
    iterations: int  #: accepted iterations (GD: steps)
    converged: bool
    status: str  #: "converged" | "max_iter" | "diverged"
    history: list[dict[str, float]]  #: per iteration: objective, residual, step (and backtracks)
    settings: dict[str, Any] = field(default_factory=dict)  #: the options used (lam, alpha, pi, ...)
    message: str = ""  #: human-readable reason for the status

    @property
    def full(self) -> bool:
        return self.variances.ndim == 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (no big tensors)."""
        last = self.history[-1] if self.history else {}
        return {
            "num_classes": int(self.means.shape[0]),
            "dim": int(self.means.shape[1]),
            "full_covariance": self.full,
            "iterations": self.iterations,
            "converged": self.converged,
            "status": self.status,
            "message": self.message,
            "final_objective": last.get("objective"),
            "final_residual": last.get("residual"),
            "settings": dict(self.settings),
            "history": [dict(h) for h in self.history],
        }


# ----------------------------------------------------------------------------------------------
# KL, normaliser, objective (Eqs. 3, 4, 9, 10)
# ----------------------------------------------------------------------------------------------


def pairwise_kl(means: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
    """``KL(N_y || N_y')`` for all pairs of diagonal Gaussians, [K, K], as two matrix products.

    ``2 KL = sum_j (v_y + mu_y^2)/v_y' - 2 mu_y mu_y'/v_y' + mu_y'^2/v_y' - 1 + log v_y' - log v_y``;
    the first two terms are one ``[K, 2d] @ [2d, K]`` product, the rest are row/column vectors.
    """
    inv = 1.0 / variances
    left = torch.cat([variances + means * means, means], dim=1)
    right = torch.cat([inv, -2.0 * means * inv], dim=1)
    logv = torch.log(variances).sum(1)
    col = (means * means * inv).sum(1) + logv
    kl = 0.5 * (left @ right.T + col[None, :] - logv[:, None] - means.shape[1])
    kl = kl.clamp_min(0.0)  # rounding can give -1e-13 on near-identical classes
    return kl.fill_diagonal_(0.0) if not kl.requires_grad else kl * _offdiag(kl)


def pi_normaliser(kl: torch.Tensor, pi: PiKind, floor: float = 1e-12) -> torch.Tensor:
    """The normaliser ``pi``: Eq. 9 (``"pair"``: the pairwise KL, [K, K]) or Eq. 10 (``"mean"``: scalar).

    Returned detached: the spec holds ``pi`` constant when differentiating (lagged).
    """
    kl = kl.detach()
    k = kl.shape[0]
    if pi == "pair":
        return kl.clamp_min(floor)
    if pi == "mean":
        return (kl.sum() / (k * (k - 1))).clamp_min(floor)
    raise ValueError(f"pi must be 'mean' or 'pair', got {pi!r} (config key fpi.pi)")


def _offdiag(like: torch.Tensor) -> torch.Tensor:
    """``1 - I`` shaped, typed and placed like the [K, K] matrix ``like`` (masks the diagonal under autograd)."""
    return 1.0 - torch.eye(like.shape[0], dtype=like.dtype, device=like.device)


def _nll(means: torch.Tensor, variances: torch.Tensor, stats: ClassStats) -> torch.Tensor:
    """``sum_y NLL_y`` (Eq. 4 data term, per-class mean NLL without constants)."""
    s = stats.var + (stats.mean - means) ** 2  # = q - 2 mu m + mu^2, without the cancellation
    return 0.5 * (s / variances + torch.log(variances)).sum()


def objective(
    means: torch.Tensor,
    variances: torch.Tensor,
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    pi_value: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Eq. 4 for diagonal Gaussians, a scalar (differentiable in ``means`` and ``variances``).

    ``L = sum_y NLL_y + lam/(K(K-1)) sum_{y != y'} exp(-KL_yy' / (pi_yy' alpha))``.  ``pi_value``
    is the held normaliser (scalar for ``"mean"``, [K, K] for ``"pair"``); ``None`` evaluates it
    at the given point, detached (the lagged convention of the spec).
    """
    k = means.shape[0]
    nll = _nll(means, variances, stats)
    if lam == 0 or k < 2:
        return nll
    kl = pairwise_kl(means, variances)
    pv = pi_normaliser(kl, pi) if pi_value is None else torch.as_tensor(pi_value, dtype=kl.dtype)
    rep = (torch.exp(-kl / (pv * alpha)) * _offdiag(kl)).sum()
    return nll + lam / (k * (k - 1)) * rep


# ----------------------------------------------------------------------------------------------
# One fixed-point update (Prop. 1, corrected; spec "Fixed-point iteration")
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Eval:
    """The fixed-point map at one iterate, plus what step control needs."""

    means: torch.Tensor  #: T(mu)
    variances: torch.Tensor  #: T(v) (NaN where A <= 0 with split="paper")
    nll: float  #: data term of Eq. 4 at the iterate
    kl: torch.Tensor | None  #: [K, K] pairwise KL at the iterate (None when lam = 0)
    pi_value: torch.Tensor | None  #: the normaliser evaluated at the iterate
    c: float  #: lam / (K(K-1))
    alpha: float

    def objective(self, pi_value: torch.Tensor | None = None) -> float:
        """Eq. 4 at the iterate, with ``pi`` held at ``pi_value`` (default: its own value)."""
        if self.kl is None:
            return self.nll
        pv = self.pi_value if pi_value is None else pi_value
        e = torch.exp(-self.kl / (pv * self.alpha)).fill_diagonal_(0.0)
        return self.nll + self.c * float(e.sum())


def _fpi_eval(
    means: torch.Tensor,
    variances: torch.Tensor,
    stats: ClassStats,
    *,
    lam: float,
    alpha: float,
    pi: PiKind,
    learn: LearnKind,
    split: str,
    pi_floor: float,
) -> _Eval:
    """The map of Prop. 1 at ``(means, variances)``; three [K, K] x [K, 2d] products, in-place elementwise.

    The elementwise work is written in place (``addcmul_``, ``mul_``) because at K ~ 100 it, not the
    matrix products, dominates the time of an iteration.
    """
    k, d = means.shape
    m = stats.mean
    s = (m - means).square_().add_(stats.var)  # S_y = q - 2 mu m + mu^2 about the previous mean, no cancellation
    inv = variances.reciprocal()
    logv = variances.log()
    nll = 0.5 * (float(torch.dot(s.flatten(), inv.flatten())) + float(logv.sum()))
    if lam == 0 or k < 2:
        new_mu = m.clone() if learn != "var" else means
        new_v = s if learn != "mean" else variances
        return _Eval(new_mu, new_v, nll, None, None, 0.0, alpha)
    c = lam / (k * (k - 1))
    # pairwise KL (Eqs. 3, 9, 10): 2 KL_yy' = <[v_y + mu_y^2, -2 mu_y], [1/v_y', mu_y'/v_y']> + row/column terms
    musq = means * means
    vm = musq.add_(variances)  # v + mu^2 (musq is not needed on its own below)
    right = torch.cat([inv, means * inv], dim=1)  # [1/v, mu/v]: also the right factor of W @ (.)
    logv_sum = logv.sum(1)
    col = (means * right[:, d:]).sum(1) + logv_sum  # sum_j mu_y'^2/v_y' + log v_y'
    kl = torch.cat([vm, means * -2.0], dim=1) @ right.T
    kl.add_(col[None, :]).sub_(logv_sum[:, None]).sub_(d).mul_(0.5).clamp_min_(0.0).fill_diagonal_(0.0)
    pv = pi_normaliser(kl, pi, pi_floor)
    w = torch.exp(-kl / (pv * alpha)).fill_diagonal_(0.0) / (pv * alpha)  # kernel of Prop. 1
    rows, cols = w.sum(1, keepdim=True), w.sum(0)[:, None]
    wp = w @ right  # sum_y' W_yy' [1/v_y', mu_y'/v_y']
    w_inv, w_muinv = wp[:, :d], wp[:, d:]
    wt2 = w.T @ torch.cat([means, vm], dim=1)  # sum_y' W_y'y [mu_y', mu_y'^2 + v_y']
    wt_mu, wt_sq = wt2[:, :d], wt2[:, d:]
    new_mu, new_v = means, variances
    if learn != "var":
        g = (means * w_inv).sub_(w_muinv)  # sum_y' W_yy' Delta / v_y'
        g.add_((means * cols).sub_(wt_mu).mul_(inv))  # + sum_y' W_y'y Delta / v_y
        new_mu = torch.addcmul(m, variances, g, value=c)  # Eq. 5 with the factor v_y (spec)
    if learn != "mean":
        # sum_y' W_y'y (Delta^2 + v_y') = mu^2 sum W_y'y - 2 mu sum W_y'y mu_y' + sum W_y'y (mu_y'^2 + v_y')
        mterm = torch.addcmul(wt_sq, means * means, cols.expand(k, d)).addcmul_(means, wt_mu, value=-2.0)
        a = mterm.clamp_min_(0.0).mul_(inv).mul_(inv).mul_(c)  # c sum W_y'y (Delta^2 + v_y') / v^2
        b = (variances * w_inv).mul_(variances).mul_(c).add_(s)  # S + c v^2 sum W_yy' / v_y'
        if split == "paper":
            a.addcmul_(inv, (1.0 + c * (rows - cols)).expand(k, d))
        else:  # same fixed point; the -c sum_y' W_y'y / v term of A moved to B, so A, B > 0
            a.addcmul_(inv, (1.0 + c * rows).expand(k, d))
            b.addcmul_(variances, (c * cols).expand(k, d))
        new_v = b.div_(a).sqrt_()  # Eq. 6, diagonal; NaN where the paper split has A < 0
    return _Eval(new_mu, new_v, nll, kl, pv, c, alpha)


def fpi_step(
    means: torch.Tensor,
    variances: torch.Tensor,
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    learn: LearnKind = "both",
    split: Literal["positive", "paper"] = "positive",
    pi_floor: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One plain update of Prop. 1 (Eq. 5 with the factor ``v_y``, Eq. 6 diagonal): ``(mu', v', L)``.

    ``L`` is the objective at the *input* iterate (pi evaluated there).  Sums over ``y'`` are the
    matrix products ``W @ [1/v, mu/v]`` and ``W^T @ [mu, mu^2 + v]``.  ``split="paper"`` uses
    ``A, B`` exactly as printed in the spec; ``"positive"`` moves the ``-c sum W_y'y / v`` term of
    ``A`` to ``B`` (same fixed point, ``A, B > 0`` always; docs/method.md).  ``v'`` is NaN where
    the paper split gives ``A <= 0``.
    """
    ev = _fpi_eval(means, variances, stats, lam=lam, alpha=alpha, pi=pi, learn=learn, split=split, pi_floor=pi_floor)
    return ev.means, ev.variances, ev.objective()


# ----------------------------------------------------------------------------------------------
# Solver with step control (diagonal)
# ----------------------------------------------------------------------------------------------


def _init_params(
    stats: ClassStats,
    init: InitKind,
    var_min: float,
    init_means: torch.Tensor | None,
    init_variances: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    means = stats.mean.clone() if init_means is None else init_means.detach().to(DTYPE).clone()
    if init_variances is not None:
        variances = init_variances.detach().to(DTYPE).clone()
    elif init == "identity":
        variances = torch.ones_like(stats.mean)
    elif init == "data":
        variances = stats.var.clamp_min(var_min)
    else:
        raise ValueError(f"init must be 'data' or 'identity', got {init!r} (config key fpi.init)")
    if means.shape != stats.mean.shape or variances.shape != stats.mean.shape:
        raise ValueError(f"init_means/init_variances must be [K, d] = {tuple(stats.mean.shape)}")
    if not (torch.isfinite(variances).all() and (variances > 0).all()):
        raise ValueError("initial variances must be finite and > 0")
    return means, variances


def _check_common(lam: float, alpha: float, pi: str, learn: str) -> None:
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be finite and >= 0, got {lam} (config key fpi.lam)")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha} (config key fpi.alpha)")
    if pi not in ("mean", "pair"):
        raise ValueError(f"pi must be 'mean' or 'pair', got {pi!r} (config key fpi.pi)")
    if learn not in ("both", "mean", "var"):
        raise ValueError(f"learn must be 'both', 'mean' or 'var', got {learn!r} (config key fpi.learn)")


def pair_lambda_limit(num_classes: int, alpha: float) -> float:
    """``K alpha exp(1/alpha) / 2``: above it, pi="pair" makes the lagged objective unbounded below.

    At a pi="pair" iterate every kernel is ``exp(-1/alpha)``; growing one variance ``v_yj`` then
    lowers the repulsion by about ``c (K-1) exp(-1/alpha) / alpha * log v_yj`` while the NLL only
    gains ``0.5 log v_yj`` (docs/method.md, "pi = pair").
    """
    return num_classes * alpha * math.exp(1.0 / alpha) / 2.0


def _suggestion(lam: float, pi: str, step_control: str, num_classes: int = 0, alpha: float = 1.0) -> str:
    tips = [f"lower lam (e.g. lam={lam / 10:g})"]
    if step_control == "none":
        tips.append("use step_control='backtrack'")
    if pi == "pair":
        limit = pair_lambda_limit(num_classes, alpha) if num_classes else float("nan")
        tips.append(
            f"with pi='pair' keep lam below about K*alpha*exp(1/alpha)/2 = {limit:.3g} (variances grow without "
            "bound above it), or use pi='mean'"
        )
    else:
        tips.append("raise alpha")
    tips.append("or learn='mean'")
    return "; ".join(tips)


def _divergence(
    *,
    reason: str,
    lam: float,
    pi: str,
    step_control: str,
    iteration: int,
    history: list[dict[str, float]],
    on_divergence: str,
    num_classes: int = 0,
    alpha: float = 1.0,
) -> str:
    trend = [h["residual"] for h in history[-6:]]
    msg = (
        f"FPI diverged at iteration {iteration} (lam={lam:g}, pi={pi!r}): {reason}; residual trend "
        f"{['%.3g' % r for r in trend]}. Suggestion: {_suggestion(lam, pi, step_control, num_classes, alpha)}."
    )
    if on_divergence == "raise":
        raise FPIDivergenceError(msg, lam=lam, iteration=iteration, residuals=trend)
    if on_divergence != "flag":
        raise ValueError(f"on_divergence must be 'raise' or 'flag', got {on_divergence!r} (config key fpi.on_divergence)")
    log.warning(msg)
    return msg


def _residual(mu: torch.Tensor, v: torch.Tensor, tmu: torch.Tensor, tv: torch.Tensor, learn: str) -> float:
    """RMS of the whitened fixed-point residual: ``(T(mu) - mu)/sqrt(v)`` and ``log T(v) - log v``.

    Scale-free (a latent rescaling does not change it) and, for the means, exactly the gradient of
    Eq. 4 in the metric ``v``: ``T(mu) - mu = -v dL/dmu``.
    """
    parts = []
    if learn != "var":
        parts.append(((tmu - mu) ** 2 / v).mean())
    if learn != "mean":
        parts.append(((torch.log(tv) - torch.log(v)) ** 2).mean())
    r = float(sum(parts) / len(parts))
    return math.sqrt(r) if math.isfinite(r) else math.inf


@dataclass(frozen=True)
class _StepOptions:
    """Step-control knobs shared by the diagonal and full-covariance solvers (see FPIConfig)."""

    max_iter: int
    tol: float
    step_control: str
    step_init: float
    step_min: float
    step_shrink: float
    step_grow: float
    max_backtracks: int
    divergence_factor: float
    bound_patience: int
    on_divergence: str


# Long (85 lines) because it is the one driver every FPI variant shares: step control, backtracking, bound
# patience and the divergence guard act on the same loop state; split, they would pass that state around.
def _drive(
    x0: tuple[torch.Tensor, torch.Tensor],
    evaluate: Any,
    relax: Any,
    residual: Any,
    at_bound: Any,
    o: _StepOptions,
    *,
    lam: float,
    pi: str,
    alpha: float,
) -> tuple[tuple[torch.Tensor, torch.Tensor], int, str, str, list[dict[str, float]]]:
    """Relaxed fixed-point loop with step control and divergence detection (both solvers).

    A relaxed step ``x + s (T(x) - x)`` is accepted when it lowers the fixed-point residual or
    the objective with ``pi`` held at the current iterate (the update direction is a descent
    direction of that objective, docs/method.md, so a small enough ``s`` always qualifies away
    from a stationary point).  ``step_control="none"`` accepts every finite step (``s = 1``).
    """
    if o.step_control not in ("backtrack", "none"):
        raise ValueError(f"step_control must be 'backtrack' or 'none', got {o.step_control!r} (config key fpi.step_control)")
    if o.on_divergence not in ("raise", "flag"):
        raise ValueError(f"on_divergence must be 'raise' or 'flag', got {o.on_divergence!r} (config key fpi.on_divergence)")
    x = x0
    ev = evaluate(x)
    res = residual(x, ev)
    obj = ev.objective()
    history: list[dict[str, float]] = [{"objective": obj, "residual": res, "step": 0.0, "backtracks": 0.0}]

    def fail(reason: str, it: int) -> str:
        return _divergence(reason=reason, lam=lam, pi=pi, step_control=o.step_control, iteration=it,
                           history=history, on_divergence=o.on_divergence, num_classes=int(x0[0].shape[0]),
                           alpha=alpha)  # fmt: skip

    if not math.isfinite(res):
        return x, 0, "diverged", fail("the first update is not finite (A <= 0 in Eq. 6?)", 0), history
    best, step, bound_run = res, float(o.step_init), 0
    # a bar on a terminal, rate-bounded log lines otherwise (nfpi.progress); every return closes it
    with progress(total=o.max_iter, desc=f"FPI lam={lam:g} pi={pi}", unit="it", logger=log) as bar:
        for it in range(1, o.max_iter + 1):
            if res <= o.tol:
                return x, it - 1, "converged", f"residual {res:.3g} <= tol {o.tol:g}", history
            backtracks = 0
            while True:
                x_new = relax(x, ev, step)
                ev_new = evaluate(x_new)
                res_new = residual(x_new, ev_new)
                if o.step_control == "none":
                    accepted = math.isfinite(res_new)
                    break
                if math.isfinite(res_new) and (res_new < res or ev_new.objective(ev.pi_value) <= obj):
                    accepted = True
                    break
                backtracks += 1
                step *= o.step_shrink
                if backtracks > o.max_backtracks or step < o.step_min:
                    accepted = False
                    break
            if not accepted:
                history.append({"objective": float("nan"), "residual": res_new, "step": step, "backtracks": float(backtracks)})
                reason = (
                    "the update is not finite"
                    if o.step_control == "none"
                    else f"no relaxation step >= {o.step_min:g} lowers the residual or the objective"
                )
                return x, it - 1, "diverged", fail(reason, it), history
            x, ev, res, obj = x_new, ev_new, res_new, ev_new.objective()
            history.append({"objective": obj, "residual": res, "step": step, "backtracks": float(backtracks)})
            bar.update()
            bar.set(residual=res, step=step)
            best = min(best, res)
            if res > o.divergence_factor * best:
                return x, it, "diverged", fail(f"residual grew to {res:.3g}, {o.divergence_factor:g}x its best {best:.3g}", it), history
            bound_run = bound_run + 1 if at_bound(x) else 0
            if bound_run >= o.bound_patience:
                return x, it, "diverged", fail(
                    f"variances pinned at the bounds for {bound_run} iterations (objective unbounded?)", it
                ), history  # fmt: skip
            if o.step_control == "backtrack":
                step = min(1.0, step * o.step_grow)
    if res <= o.tol:
        return x, o.max_iter, "converged", f"residual {res:.3g} <= tol {o.tol:g}", history
    msg = f"reached max_iter={o.max_iter} with residual {res:.3g} > tol {o.tol:g}"
    log.warning("FPI (lam=%g, pi=%s): %s", lam, pi, msg)
    return x, o.max_iter, "max_iter", msg, history


def solve_fpi_from_stats(
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    learn: LearnKind = "both",
    init: InitKind = "data",
    max_iter: int = 500,
    tol: float = 1e-10,
    step_control: Literal["backtrack", "none"] = "backtrack",
    step_init: float = 1.0,
    step_min: float = 1e-6,
    step_shrink: float = 0.5,
    step_grow: float = 2.0,
    max_backtracks: int = 30,
    divergence_factor: float = 1e6,
    bound_patience: int = 10,
    split: Literal["positive", "paper"] = "positive",
    var_min: float = 1e-10,
    var_max: float = 1e10,
    pi_floor: float = 1e-12,
    on_divergence: Literal["raise", "flag"] = "raise",
    init_means: torch.Tensor | None = None,
    init_variances: torch.Tensor | None = None,
) -> FPIResult:
    """Diagonal class Gaussians at the fixed point of Prop. 1 (Eqs. 5-6, corrected), from class stats.

    The update is relaxed: ``mu <- mu + s (T(mu) - mu)``, ``log v <- log v + s (log T(v) - log v)``
    (``s = 1`` is the plain iteration of the paper; log-space keeps variances positive).  With
    ``step_control="backtrack"`` a step is accepted when it lowers the whitened residual or the
    objective (pi held), otherwise ``s`` is halved; ``s`` grows back after a success.  Variances
    are clipped to ``[var_min, var_max]``.  Divergence (non-finite update, residual
    ``divergence_factor`` above its best, no acceptable step >= ``step_min``, or variances pinned
    at a bound for ``bound_patience`` iterations) raises :class:`FPIDivergenceError`
    (``on_divergence="raise"``) or returns status ``"diverged"`` with the last accepted iterate.
    Never returns a non-finite or non-positive variance.
    """
    _check_common(lam, alpha, pi, learn)
    if not (0 < var_min < var_max):
        raise ValueError(f"need 0 < var_min < var_max, got {var_min}, {var_max} (config keys fpi.var_min/var_max)")
    settings = {
        "solver": "fpi", "lam": lam, "alpha": alpha, "pi": pi, "learn": learn, "init": init, "max_iter": max_iter,
        "tol": tol, "step_control": step_control, "split": split, "var_min": var_min, "var_max": var_max,
    }  # fmt: skip
    mu0, v0 = _init_params(stats, init, var_min, init_means, init_variances)
    v0 = v0.clamp(var_min, var_max)
    opts = _StepOptions(max_iter, tol, step_control, step_init, step_min, step_shrink, step_grow, max_backtracks,
                        divergence_factor, bound_patience, on_divergence)  # fmt: skip

    def evaluate(x: tuple[torch.Tensor, torch.Tensor]) -> _Eval:
        ev = _fpi_eval(x[0], x[1], stats, lam=lam, alpha=alpha, pi=pi, learn=learn, split=split, pi_floor=pi_floor)
        if bool(torch.isfinite(ev.variances).all()):
            ev = dataclasses.replace(ev, variances=ev.variances.clamp(var_min, var_max))
        return ev

    def relax(x: tuple[torch.Tensor, torch.Tensor], ev: _Eval, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        mu, v = x
        if s == 1.0:  # the plain update (already clipped): no arithmetic needed
            return (ev.means if learn != "var" else mu), (ev.variances if learn != "mean" else v)
        if learn != "var":
            mu = mu + s * (ev.means - mu)
        if learn != "mean":
            v = torch.exp(torch.log(v) + s * (torch.log(ev.variances) - torch.log(v))).clamp(var_min, var_max)
        return mu, v

    def residual(x: tuple[torch.Tensor, torch.Tensor], ev: _Eval) -> float:
        return _residual(x[0], x[1], ev.means, ev.variances, learn)

    def at_bound(x: tuple[torch.Tensor, torch.Tensor]) -> bool:
        return learn != "mean" and bool(((x[1] <= var_min) | (x[1] >= var_max)).any())

    (mu, v), it, status, message, history = _drive(
        (mu0, v0), evaluate, relax, residual, at_bound, opts, lam=lam, pi=pi, alpha=alpha
    )
    if status != "converged" and at_bound((mu, v)):
        message += f"; variance bounds [{var_min:g}, {var_max:g}] are active"
    if not bool(torch.isfinite(v).all() and (v > 0).all() and torch.isfinite(mu).all()):  # cannot happen: guard
        raise FPIDivergenceError(f"FPI produced non-finite parameters (lam={lam:g})", lam=lam, iteration=it, residuals=[])
    return FPIResult(mu, v, it, status == "converged", status, history, settings, message)


def solve_fpi(
    z: Any,
    y: Any,
    num_classes: int,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    learn: LearnKind = "both",
    **options: Any,
) -> FPIResult:
    """:func:`solve_fpi_from_stats` on the statistics of latents ``z`` [N, d] with labels ``y`` [N]."""
    stats = ClassStats.from_latents(z, y, num_classes)
    return solve_fpi_from_stats(stats, lam=lam, alpha=alpha, pi=pi, learn=learn, **options)


# ----------------------------------------------------------------------------------------------
# Full covariance (Eq. 6 in matrix form)
# ----------------------------------------------------------------------------------------------


def _sym(a: torch.Tensor) -> torch.Tensor:
    return 0.5 * (a + a.transpose(-1, -2))


def _sqrtm_spd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched ``(A^{1/2}, A^{-1/2})`` of SPD matrices by eigendecomposition."""
    evals, evecs = torch.linalg.eigh(_sym(a))
    if bool((evals <= 0).any()):
        raise torch.linalg.LinAlgError("matrix not positive definite")
    sq = evals.sqrt()
    return (evecs * sq[..., None, :]) @ evecs.transpose(-1, -2), (evecs / sq[..., None, :]) @ evecs.transpose(-1, -2)


def pairwise_kl_full(means: torch.Tensor, covs: torch.Tensor) -> torch.Tensor:
    """``KL(N_y || N_y')`` for full-covariance Gaussians, [K, K], as matrix products over flattened d x d."""
    k, d = means.shape
    prec = torch.linalg.inv(covs)
    prec = _sym(prec)
    logdet = torch.linalg.slogdet(covs)[1]
    tr = covs.reshape(k, -1) @ prec.reshape(k, -1).T  # tr(P_y' S_y) = <S_y, P_y'>
    outer = (means[:, :, None] * means[:, None, :]).reshape(k, -1)
    pm = (prec @ means[:, :, None])[..., 0]  # P_y' mu_y'
    quad = outer @ prec.reshape(k, -1).T - 2.0 * means @ pm.T + (pm * means).sum(1)[None, :]
    kl = 0.5 * (tr + quad - d + logdet[None, :] - logdet[:, None])
    kl = kl.clamp_min(0.0)
    return kl * _offdiag(kl) if kl.requires_grad else kl.fill_diagonal_(0.0)


def objective_full(
    means: torch.Tensor,
    covs: torch.Tensor,
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    pi_value: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Eq. 4 with full covariances ``covs`` [K, d, d] (needs ``stats.second``)."""
    k = means.shape[0]
    dm = stats.mean - means
    s = stats.cov + dm[:, :, None] * dm[:, None, :]
    prec = torch.linalg.inv(covs)
    nll = 0.5 * ((prec * s).sum((1, 2)) + torch.linalg.slogdet(covs)[1]).sum()
    if lam == 0 or k < 2:
        return nll
    kl = pairwise_kl_full(means, covs)
    pv = pi_normaliser(kl, pi) if pi_value is None else torch.as_tensor(pi_value, dtype=kl.dtype)
    return nll + lam / (k * (k - 1)) * (torch.exp(-kl / (pv * alpha)) * _offdiag(kl)).sum()


def _fpi_eval_full(
    mu: torch.Tensor,
    cov: torch.Tensor,
    stats: ClassStats,
    *,
    lam: float,
    alpha: float,
    pi: PiKind,
    learn: LearnKind,
    split: str,
    pi_floor: float,
) -> _Eval:
    """Full-covariance map: Eq. 5 and ``Sigma <- A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}`` (Eqs. 6-7).

    Pair sums are products of the [K, K] kernel with flattened [K, d*d] matrices.
    """
    k, d = mu.shape
    dm = stats.mean - mu
    s = stats.cov + dm[:, :, None] * dm[:, None, :]
    prec = _sym(torch.linalg.inv(cov))
    nll = float(0.5 * ((prec * s).sum((1, 2)) + torch.linalg.slogdet(cov)[1]).sum())
    if lam == 0 or k < 2:
        new_mu = stats.mean.clone() if learn != "var" else mu
        return _Eval(new_mu, _sym(s) if learn != "mean" else cov, nll, None, None, 0.0, alpha)
    c = lam / (k * (k - 1))
    kl = pairwise_kl_full(mu, cov)
    pv = pi_normaliser(kl, pi, pi_floor)
    w = torch.exp(-kl / (pv * alpha)).fill_diagonal_(0.0) / (pv * alpha)
    rows, cols = w.sum(1), w.sum(0)
    w_prec = (w @ prec.reshape(k, -1)).reshape(k, d, d)  # sum_y' W_yy' P_y'
    pm = (prec @ mu[:, :, None])[..., 0]  # P_y' mu_y'
    wt_mu = w.T @ mu  # sum_y' W_y'y mu_y'
    new_mu, new_cov = mu, cov
    if learn != "var":
        g = (w_prec @ mu[:, :, None])[..., 0] - w @ pm  # sum_y' W_yy' P_y' Delta
        g = g + (prec @ (mu * cols[:, None] - wt_mu)[:, :, None])[..., 0]  # + sum_y' W_y'y P_y Delta
        new_mu = stats.mean + c * (cov @ g[:, :, None])[..., 0]
    if learn != "mean":
        outer = (mu[:, :, None] * mu[:, None, :]).reshape(k, -1)
        wt_outer = (w.T @ (outer + cov.reshape(k, -1))).reshape(k, d, d)  # sum W_y'y (mu' mu'^T + Sigma_y')
        cross = mu[:, :, None] * wt_mu[:, None, :]
        mterm = cols[:, None, None] * (mu[:, :, None] * mu[:, None, :]) - cross - cross.transpose(1, 2) + wt_outer
        if split == "paper":
            a = (1.0 + c * (rows - cols))[:, None, None] * prec + c * prec @ mterm @ prec
            b = s + c * cov @ w_prec @ cov
        else:
            a = (1.0 + c * rows)[:, None, None] * prec + c * prec @ mterm @ prec
            b = s + c * cov @ w_prec @ cov + c * cols[:, None, None] * cov
        try:
            a_half, a_mhalf = _sqrtm_spd(_sym(a))
            mid, _ = _sqrtm_spd(_sym(a_half @ _sym(b) @ a_half))
            new_cov = _sym(a_mhalf @ mid @ a_mhalf)  # geometric mean of A^{-1} and B: SPD
        except torch.linalg.LinAlgError:
            new_cov = torch.full_like(cov, float("nan"))
    return _Eval(new_mu, new_cov, nll, kl, pv, c, alpha)


def _residual_full(mu: torch.Tensor, cov: torch.Tensor, tmu: torch.Tensor, tcov: torch.Tensor, learn: str) -> float:
    """Whitened residual: ``L^{-1}(T(mu) - mu)`` and ``L^{-1}(T(S) - S)L^{-T}`` with ``S = L L^T``."""
    if not bool(torch.isfinite(tcov).all() and torch.isfinite(tmu).all()):
        return math.inf
    chol = torch.linalg.cholesky(cov)
    k, d = mu.shape
    parts = []
    if learn != "var":
        x = torch.linalg.solve_triangular(chol, (tmu - mu)[:, :, None], upper=False)
        parts.append((x**2).sum() / (k * d))
    if learn != "mean":
        y = torch.linalg.solve_triangular(chol, tcov - cov, upper=False)
        y = torch.linalg.solve_triangular(chol, y.transpose(1, 2), upper=False)
        parts.append((y**2).sum() / (k * d * d))
    return math.sqrt(float(sum(parts) / len(parts)))


# Long (81 lines): the full-covariance fixed point of Eq. 6 keeps its matrix algebra in one readable block
# next to the equation; its helpers (_sym, _sqrtm_spd) are already factored out.
def solve_fpi_full(
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    learn: LearnKind = "both",
    init: InitKind = "data",
    max_iter: int = 500,
    tol: float = 1e-10,
    step_control: Literal["backtrack", "none"] = "backtrack",
    step_init: float = 1.0,
    step_min: float = 1e-6,
    step_shrink: float = 0.5,
    step_grow: float = 2.0,
    max_backtracks: int = 30,
    divergence_factor: float = 1e6,
    bound_patience: int = 10,
    split: Literal["positive", "paper"] = "positive",
    var_min: float = 1e-10,
    var_max: float = 1e10,
    pi_floor: float = 1e-12,
    on_divergence: Literal["raise", "flag"] = "raise",
    init_means: torch.Tensor | None = None,
    init_covariances: torch.Tensor | None = None,
) -> FPIResult:
    """Full-covariance class Gaussians (Eq. 6 matrix form), for small ``d``; needs ``stats.second``.

    Same step control as :func:`solve_fpi_from_stats`, relaxing linearly
    (``Sigma <- Sigma + s (T(Sigma) - Sigma)``, a convex combination of SPD matrices for ``s <= 1``);
    ``T(Sigma)`` is the geometric mean of ``A^{-1}`` and ``B``, SPD whenever ``A`` and ``B`` are
    (always with the default ``split="positive"``).  Eigenvalues are kept in ``[var_min, var_max]``.
    The result's ``variances`` are the covariances [K, d, d].
    """
    _check_common(lam, alpha, pi, learn)
    if stats.second is None:
        raise ValueError("solve_fpi_full needs full second moments: ClassStats.from_latents(..., full=True)")
    settings = {"solver": "fpi_full", "lam": lam, "alpha": alpha, "pi": pi, "learn": learn, "init": init,
                "max_iter": max_iter, "tol": tol, "step_control": step_control, "split": split,
                "var_min": var_min, "var_max": var_max}  # fmt: skip
    k, d = stats.mean.shape
    mu0 = stats.mean.clone() if init_means is None else init_means.detach().to(DTYPE).clone()
    if init_covariances is not None:
        cov0 = init_covariances.detach().to(DTYPE).clone()
    elif init == "identity":
        cov0 = torch.eye(d, dtype=DTYPE).expand(k, d, d).clone()
    elif init == "data":
        cov0 = stats.cov
    else:
        raise ValueError(f"init must be 'data' or 'identity', got {init!r} (config key fpi.init)")
    cov0 = _clip_eig(_sym(cov0), var_min, var_max)
    opts = _StepOptions(max_iter, tol, step_control, step_init, step_min, step_shrink, step_grow, max_backtracks,
                        divergence_factor, bound_patience, on_divergence)  # fmt: skip

    def evaluate(x: tuple[torch.Tensor, torch.Tensor]) -> _Eval:
        ev = _fpi_eval_full(x[0], x[1], stats, lam=lam, alpha=alpha, pi=pi, learn=learn, split=split, pi_floor=pi_floor)
        if bool(torch.isfinite(ev.variances).all()):
            ev = dataclasses.replace(ev, variances=_clip_eig(ev.variances, var_min, var_max))
        return ev

    def relax(x: tuple[torch.Tensor, torch.Tensor], ev: _Eval, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        mu, cov = x
        if learn != "var":
            mu = mu + s * (ev.means - mu)
        if learn != "mean":
            cov = _sym(cov + s * (ev.variances - cov))
        return mu, cov

    def residual(x: tuple[torch.Tensor, torch.Tensor], ev: _Eval) -> float:
        return _residual_full(x[0], x[1], ev.means, ev.variances, learn)

    def at_bound(x: tuple[torch.Tensor, torch.Tensor]) -> bool:
        if learn == "mean":
            return False
        ev_ = torch.linalg.eigvalsh(x[1])
        return bool(((ev_ <= var_min * (1 + 1e-9)) | (ev_ >= var_max * (1 - 1e-9))).any())

    (mu, cov), it, status, message, history = _drive(
        (mu0, cov0), evaluate, relax, residual, at_bound, opts, lam=lam, pi=pi, alpha=alpha
    )
    return FPIResult(mu, cov, it, status == "converged", status, history, settings, message)


def _clip_eig(cov: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Project symmetric matrices onto eigenvalues in ``[lo, hi]`` (no-op when already inside)."""
    evals, evecs = torch.linalg.eigh(_sym(cov))
    if bool(((evals >= lo) & (evals <= hi)).all()):
        return cov
    return (evecs * evals.clamp(lo, hi)[..., None, :]) @ evecs.transpose(-1, -2)


# ----------------------------------------------------------------------------------------------
# Baseline 2: gradient descent (NF^GD)
# ----------------------------------------------------------------------------------------------


def lr_at(t: int, steps: int, lr0: float, policy: str) -> float:
    """``lr(t) = lr0 (1 - t/T)^p`` with ``p`` from :data:`LR_POLICIES` (spec, Baseline 2)."""
    if policy not in LR_POLICIES:
        raise ValueError(f"policy must be one of {sorted(LR_POLICIES)}, got {policy!r} (config key fpi.policy)")
    return lr0 * (1.0 - t / steps) ** LR_POLICIES[policy]


def solve_gd(
    stats: ClassStats,
    *,
    lam: float,
    alpha: float = 1.0,
    pi: PiKind = "mean",
    policy: str = "linear",
    steps: int = 2000,
    lr: float = 1e-2,
    vmin: float | None = None,
    vmax: float | None = None,
    learn: LearnKind = "both",
    init: InitKind = "data",
    optimizer: Literal["adam", "sgd"] = "adam",
    log_every: int = 1,
) -> FPIResult:
    """Baseline 2 (NF^GD): minimise Eq. 4 by Adam/SGD on ``(mu, theta)``, ``v = vmin + (vmax-vmin) sigmoid(theta)``.

    ``pi`` is lagged as in the FPI (re-evaluated, detached, at every step).  The learning rate
    follows ``policy`` (:func:`lr_at`).  ``vmin``/``vmax`` default to 1e-2 x the smallest and
    1e2 x the largest initial variance.  ``history`` holds the objective (pi at the current
    iterate), the RMS whitened gradient (``residual``) and the learning rate (``step``).
    """
    _check_common(lam, alpha, pi, learn)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps} (config key fpi.steps)")
    lr_at(0, steps, lr, policy)  # validates the policy name
    mu0, v0 = _init_params(stats, init, 1e-12, None, None)
    lo = float(v0.min()) * 1e-2 if vmin is None else float(vmin)
    hi = float(v0.max()) * 1e2 if vmax is None else float(vmax)
    if not (0 < lo < float(v0.min()) and float(v0.max()) < hi):
        raise ValueError(f"need 0 < vmin < initial variances < vmax; got vmin={lo:g}, vmax={hi:g} (config fpi.gd_vmin/gd_vmax)")
    p0 = (v0 - lo) / (hi - lo)
    mu = mu0.clone().requires_grad_(learn != "var")
    theta = torch.log(p0 / (1 - p0)).requires_grad_(learn != "mean")
    params = [t for t in (mu, theta) if t.requires_grad]
    opt: torch.optim.Optimizer
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    history: list[dict[str, float]] = []
    settings = {"solver": "gd", "lam": lam, "alpha": alpha, "pi": pi, "learn": learn, "init": init, "policy": policy,
                "optimizer": optimizer, "steps": steps, "lr": lr, "vmin": lo, "vmax": hi}  # fmt: skip
    bar = progress(total=steps, desc=f"GD lam={lam:g} {policy}", unit="step", logger=log)
    for t in range(steps + 1):
        v = lo + (hi - lo) * torch.sigmoid(theta)
        loss = objective(mu, v, stats, lam=lam, alpha=alpha, pi=pi)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            parts = []
            if mu.grad is not None:
                parts.append((mu.grad**2 * v).mean())
            if theta.grad is not None:
                parts.append((theta.grad**2).mean())
            gnorm = math.sqrt(float(sum(parts) / len(parts)))
        cur_lr = lr_at(min(t, steps), steps, lr, policy)
        if t % log_every == 0 or t == steps:
            history.append({"objective": float(loss.detach()), "residual": gnorm, "step": cur_lr})
        if t == steps:
            break
        for group in opt.param_groups:
            group["lr"] = cur_lr
        opt.step()
        bar.update()
        bar.set(grad=gnorm)
    bar.close()
    with torch.no_grad():
        v = (lo + (hi - lo) * torch.sigmoid(theta)).clamp_min(lo)
    if not bool(torch.isfinite(mu).all() and torch.isfinite(v).all()):
        raise FPIDivergenceError(
            f"NF^GD produced non-finite parameters (lam={lam:g}, policy={policy}); lower lr (config key fpi.lr)",
            lam=lam, iteration=steps, residuals=[h["residual"] for h in history[-6:]],
        )  # fmt: skip
    return FPIResult(mu.detach(), v.detach(), steps, False, "max_iter", history, settings,
                     f"ran {steps} GD steps ({policy})")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Pipeline entry point
# ----------------------------------------------------------------------------------------------


def solve(stats: ClassStats, cfg: FPIConfig) -> FPIResult:
    """Solve with the options of ``cfg`` (the pipeline's ``fpi`` slice); dispatches on ``cfg.method``.

    ``lam: "auto"`` needs validation latents: use :func:`nfpi.lampath.solve_path`.
    """
    if cfg.lam == "auto":
        raise ValueError("fpi.lam: auto chooses lambda on validation latents: call nfpi.lampath.solve_path "
                         "(the solve stage does, given --val-latents)")
    common = {"lam": cfg.lam, "alpha": cfg.alpha, "pi": cfg.pi, "learn": cfg.learn}
    if cfg.method == "gd":
        return solve_gd(stats, **common, policy=cfg.policy, steps=cfg.steps, lr=cfg.lr, vmin=cfg.gd_vmin,  # type: ignore[arg-type]
                        vmax=cfg.gd_vmax, init=cfg.init, optimizer=cfg.optimizer)  # fmt: skip
    opts = {k: getattr(cfg, k) for k in _SOLVER_KEYS}
    if cfg.method == "fpi_full":
        return solve_fpi_full(stats, **common, **opts)  # type: ignore[arg-type]
    if cfg.method == "fpi":
        return solve_fpi_from_stats(stats, **common, **opts)  # type: ignore[arg-type]
    raise ValueError(f"fpi.method must be 'fpi', 'fpi_full' or 'gd', got {cfg.method!r}")

