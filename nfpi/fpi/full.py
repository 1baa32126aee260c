"""The full-covariance variant (spec "Full covariance"): Eq. 6 as a matrix geometric mean.

``Sigma_y <- A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}``, symmetric positive definite by construction;
pair sums are products of the ``[K, K]`` kernel with flattened ``[K, d*d]`` matrices.  For small ``d``.

    >>> import torch
    >>> from nfpi.fpi import ClassStats, solve_fpi_full
    >>> y = torch.arange(300) % 3
    >>> z = torch.randn(300, 3, dtype=torch.float64) + 3.0 * y[:, None]   # three separated classes
    >>> stats = ClassStats.from_latents(z, y, 3, full=True)
    >>> solve_fpi_full(stats, lam=10.0).variances.shape
    torch.Size([3, 3, 3])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from nfpi.fpi.config import FPIConfig, PiKind
from nfpi.fpi.diagonal import _SETTINGS
from nfpi.fpi.objectives import _offdiag, pi_normaliser
from nfpi.fpi.result import FPIResult
from nfpi.fpi.statistics import DTYPE, ClassStats
from nfpi.fpi.step_control import _check_common, _drive, _Eval

__all__ = ["pairwise_kl_full", "objective_full", "solve_fpi_full"]


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
    cfg: FPIConfig,
) -> _Eval:
    """Full-covariance map: Eq. 5 and ``Sigma <- A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}`` (Eqs. 6-7).

    Pair sums are products of the [K, K] kernel with flattened [K, d*d] matrices.
    """
    k, d = mu.shape
    lam, alpha, pi, learn, split, pi_floor = float(cfg.lam), cfg.alpha, cfg.pi, cfg.learn, cfg.split, cfg.pi_floor
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


def _init_full(stats: ClassStats, cfg: FPIConfig, init_means: torch.Tensor | None,
               init_covariances: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting means and covariances (``init``, or a warm start), eigenvalues in ``[var_min, var_max]``."""
    k, d = stats.mean.shape
    mu0 = stats.mean.clone() if init_means is None else init_means.detach().to(DTYPE).clone()
    if init_covariances is not None:
        cov0 = init_covariances.detach().to(DTYPE).clone()
    elif cfg.init == "identity":
        cov0 = torch.eye(d, dtype=DTYPE).expand(k, d, d).clone()
    elif cfg.init == "data":
        cov0 = stats.cov
    else:
        raise ValueError(f"init must be 'data' or 'identity', got {cfg.init!r} (config key fpi.init)")
    return mu0, _clip_eig(_sym(cov0), cfg.var_min, cfg.var_max)


def solve_fpi_full(
    stats: ClassStats,
    config: FPIConfig | None = None,
    *,
    init_means: torch.Tensor | None = None,
    init_covariances: torch.Tensor | None = None,
    **options: Any,
) -> FPIResult:
    """Full-covariance class Gaussians (Eq. 6 matrix form), for small ``d``; needs ``stats.second``.

    The options are ``config``'s with keyword overrides, as for :func:`~nfpi.fpi.solve_fpi_from_stats`, and
    so is the step control, relaxing linearly (``Sigma <- Sigma + s (T(Sigma) - Sigma)``, a convex
    combination of SPD matrices for ``s <= 1``); ``T(Sigma)`` is the geometric mean of ``A^{-1}`` and ``B``,
    SPD whenever ``A`` and ``B`` are (always with the default ``split="positive"``).  Eigenvalues are kept
    in ``[var_min, var_max]``.  The result's ``variances`` are the covariances [K, d, d].
    """
    cfg = dataclasses.replace(config or FPIConfig(), **options)
    _check_common(cfg)
    if stats.second is None:
        raise ValueError("solve_fpi_full needs full second moments: ClassStats.from_latents(..., full=True)")
    var_min, var_max, learn = cfg.var_min, cfg.var_max, cfg.learn
    settings = {"solver": "fpi_full", "lam": cfg.lam, **{k: getattr(cfg, k) for k in _SETTINGS}}
    mu0, cov0 = _init_full(stats, cfg, init_means, init_covariances)

    def evaluate(x: tuple[torch.Tensor, torch.Tensor]) -> _Eval:
        ev = _fpi_eval_full(x[0], x[1], stats, cfg)
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

    (mu, cov), it, status, message, history = _drive((mu0, cov0), evaluate, relax, residual, at_bound, cfg)
    return FPIResult(mu, cov, it, status == "converged", status, history, settings, message)


def _clip_eig(cov: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Project symmetric matrices onto eigenvalues in ``[lo, hi]`` (no-op when already inside)."""
    evals, evecs = torch.linalg.eigh(_sym(cov))
    if bool(((evals >= lo) & (evals <= hi)).all()):
        return cov
    return (evecs * evals.clamp(lo, hi)[..., None, :]) @ evecs.transpose(-1, -2)
