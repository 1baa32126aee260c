"""The diagonal fixed point of Proposition 1 (Eqs. 5-6, corrected; spec "Fixed-point iteration").

:func:`fpi_step` is one plain update; :func:`solve_fpi_from_stats` iterates it with step control on the
whitened fixed-point residual, variance bounds and divergence detection (``docs/method.md`` says where
this departs from the printed equations); :func:`solve_fpi` does the same from latents and labels.

    >>> import torch
    >>> from nfpi.fpi import FPIConfig, solve_fpi, solve_fpi_from_stats
    >>> y = torch.arange(300) % 3
    >>> z = torch.randn(300, 4, dtype=torch.float64) + 3.0 * y[:, None]   # three separated classes
    >>> solve_fpi(z, y, 3, lam=10.0).status
    'converged'
    >>> cfg = FPIConfig(lam=2.0, pi="pair")          # the options of a config, one overridden by keyword
    >>> solve_fpi(z, y, 3, config=cfg, tol=1e-8).settings["tol"]
    1e-08
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from nfpi.fpi.config import FPIConfig, InitKind
from nfpi.fpi.objectives import pi_normaliser
from nfpi.fpi.result import FPIDivergenceError, FPIResult
from nfpi.fpi.statistics import DTYPE, ClassStats
from nfpi.fpi.step_control import _Anderson, _check_common, _drive, _Eval

__all__ = ["fpi_step", "solve_fpi_from_stats", "solve_fpi"]


#: The options a diagonal or full-covariance result records in ``settings`` (beside "solver" and "lam").
_SETTINGS = ("alpha", "pi", "learn", "init", "max_iter", "tol", "step_control", "split", "var_min", "var_max")


def _fpi_eval(
    means: torch.Tensor,
    variances: torch.Tensor,
    stats: ClassStats,
    cfg: FPIConfig,
) -> _Eval:
    """The map of Prop. 1 at ``(means, variances)``; three [K, K] x [K, 2d] products, in-place elementwise.

    The elementwise work is written in place (``addcmul_``, ``mul_``) because at K ~ 100 it, not the
    matrix products, dominates the time of an iteration.
    """
    k, d = means.shape
    lam, alpha, pi, learn, split, pi_floor = float(cfg.lam), cfg.alpha, cfg.pi, cfg.learn, cfg.split, cfg.pi_floor
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
    means: torch.Tensor, variances: torch.Tensor, stats: ClassStats, config: FPIConfig | None = None, **options: Any
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One plain update of Prop. 1 (Eq. 5 with the factor ``v_y``, Eq. 6 diagonal): ``(mu', v', L)``.

    ``L`` is the objective at the *input* iterate (pi evaluated there).  Sums over ``y'`` are the
    matrix products ``W @ [1/v, mu/v]`` and ``W^T @ [mu, mu^2 + v]``.  ``split="paper"`` uses
    ``A, B`` exactly as printed in the spec; ``"positive"`` moves the ``-c sum W_y'y / v`` term of
    ``A`` to ``B`` (same fixed point, ``A, B > 0`` always; docs/method.md).  ``v'`` is NaN where
    the paper split gives ``A <= 0``.  The options (``lam``, ``alpha``, ``pi``, ``learn``, ``split``,
    ``pi_floor``) are ``config``'s with keyword overrides, as for :func:`solve_fpi_from_stats`.
    """
    ev = _fpi_eval(means, variances, stats, dataclasses.replace(config or FPIConfig(), **options))
    return ev.means, ev.variances, ev.objective()


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


# Long (90 lines): the public solver's argument handling (config or keyword overrides, initialisation, variance
# bounds, Anderson memory) feeding the one shared driver; the docstring is a third of it.
def solve_fpi_from_stats(
    stats: ClassStats,
    config: FPIConfig | None = None,
    *,
    init_means: torch.Tensor | None = None,
    init_variances: torch.Tensor | None = None,
    anderson: int = 0,
    **options: Any,
) -> FPIResult:
    """Diagonal class Gaussians at the fixed point of Prop. 1 (Eqs. 5-6, corrected), from class stats.

    The options are ``config``'s (default :class:`~nfpi.fpi.FPIConfig`), each keyword in ``options``
    overriding one of its fields (``lam=10.0, pi="pair"``).  The update is relaxed:
    ``mu <- mu + s (T(mu) - mu)``, ``log v <- log v + s (log T(v) - log v)`` (``s = 1`` is the plain
    iteration of the paper; log-space keeps variances positive).  With ``step_control="backtrack"`` a step
    is accepted when it lowers the whitened residual or the objective (pi held), otherwise ``s`` is halved;
    ``s`` grows back after a success.  Variances are clipped to ``[var_min, var_max]``.  Divergence
    (non-finite update, residual ``divergence_factor`` above its best, no acceptable step >= ``step_min``,
    or variances pinned at a bound for ``bound_patience`` iterations) raises :class:`FPIDivergenceError`
    (``on_divergence="raise"``) or returns status ``"diverged"`` with the last accepted iterate.  Never
    returns a non-finite or non-positive variance.  ``init_means`` / ``init_variances`` (``[K, d]``) start
    the iteration elsewhere than ``init`` says (a warm start).

    ``anderson = m > 0`` accelerates the iteration (Anderson mixing of the last ``m + 1`` map values in
    the coordinates ``(mu, log v)``, :class:`~nfpi.fpi.step_control._Anderson`; recorded in ``settings``).
    Every proposal passes the relaxed step's acceptance test and the stopping test is unchanged (the
    whitened residual of the plain map below ``tol``), so a converged result is a fixed point of Prop. 1
    certified as without acceleration.  The lambda path (:mod:`nfpi.lampath`) uses it; the default (0)
    is the plain iteration, unchanged.
    """
    cfg = dataclasses.replace(config or FPIConfig(), **options)
    _check_common(cfg)
    lam, var_min, var_max, learn = float(cfg.lam), cfg.var_min, cfg.var_max, cfg.learn
    if not (0 < var_min < var_max):
        raise ValueError(f"need 0 < var_min < var_max, got {var_min}, {var_max} (config keys fpi.var_min/var_max)")
    settings = {"solver": "fpi", "lam": cfg.lam, **{k: getattr(cfg, k) for k in _SETTINGS}}
    if anderson < 0:
        raise ValueError(f"anderson must be >= 0 (the number of differences kept), got {anderson}")
    if anderson:
        settings["anderson"] = anderson
    mu0, v0 = _init_params(stats, cfg.init, var_min, init_means, init_variances)
    v0 = v0.clamp(var_min, var_max)

    def evaluate(x: tuple[torch.Tensor, torch.Tensor]) -> _Eval:
        ev = _fpi_eval(x[0], x[1], stats, cfg)
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

    def coords(x: tuple[torch.Tensor, torch.Tensor], ev: _Eval) -> tuple[np.ndarray, np.ndarray]:
        # the learned coordinates of T(x) (mu, log v) and the residual whitened as in _residual; numpy views,
        # since at [K, d] ~ [10, 64] torch's per-call overhead would outweigh the arithmetic
        g, f = [], []
        if learn != "var":
            g.append(ev.means.numpy().ravel().copy())
            f.append((g[-1] - x[0].numpy().ravel()) / np.sqrt(x[1].numpy().ravel()))
        if learn != "mean":
            g.append(np.log(ev.variances.numpy().ravel()))
            f.append(g[-1] - np.log(x[1].numpy().ravel()))
        return (g[0], f[0]) if len(g) == 1 else (np.concatenate(g), np.concatenate(f))

    def point(u: torch.Tensor, last: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        n = last[0].numel() if learn != "var" else 0
        mu = u[:n].view_as(last[0]) if learn != "var" else last[0]
        v = torch.exp(u[n:]).view_as(last[1]).clamp(var_min, var_max) if learn != "mean" else last[1]
        return mu, v

    accel = _Anderson(anderson, coords, point) if anderson else None
    (mu, v), it, status, message, history = _drive((mu0, v0), evaluate, relax, residual, at_bound, cfg, accel)
    if status != "converged" and at_bound((mu, v)):
        message += f"; variance bounds [{var_min:g}, {var_max:g}] are active"
    if not bool(torch.isfinite(v).all() and (v > 0).all() and torch.isfinite(mu).all()):  # cannot happen: guard
        raise FPIDivergenceError(f"FPI produced non-finite parameters (lam={lam:g})", lam=lam, iteration=it, residuals=[])
    return FPIResult(mu, v, it, status == "converged", status, history, settings, message)


def solve_fpi(z: Any, y: Any, num_classes: int, config: FPIConfig | None = None, **options: Any) -> FPIResult:
    """:func:`solve_fpi_from_stats` on the statistics of latents ``z`` [N, d] with labels ``y`` [N]."""
    return solve_fpi_from_stats(ClassStats.from_latents(z, y, num_classes), config, **options)
