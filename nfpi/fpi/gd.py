"""Baseline 2, converged on fixed latents (NF^GD; spec "Baseline 2"): gradient descent on Eq. 4.

Variances are sigmoid-reparametrised, ``v = vmin + (vmax - vmin) sigmoid(theta)``, and the learning rate
follows one of the five policies ``lr(t) = lr0 (1 - t/T)^p`` (:data:`~nfpi.fpi.LR_POLICIES`).  The joint
reading (the Gaussians trained with the flow) is :mod:`nfpi.joint_gd`.

    >>> import torch
    >>> from nfpi.fpi import ClassStats, lr_at, solve_gd
    >>> lr_at(50, 100, 1.0, "superlinear_v1")
    0.25
    >>> y = torch.arange(90) % 3
    >>> stats = ClassStats.from_latents(torch.randn(90, 2, dtype=torch.float64) + 3.0 * y[:, None], y, 3)
    >>> solve_gd(stats, lam=5.0, steps=20, policy="sublinear_v2").iterations
    20
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from nfpi.fpi.config import LR_POLICIES, FPIConfig
from nfpi.fpi.diagonal import _init_params
from nfpi.fpi.objectives import objective
from nfpi.fpi.result import FPIDivergenceError, FPIResult
from nfpi.fpi.statistics import ClassStats
from nfpi.fpi.step_control import _check_common, log
from nfpi.progress import progress

__all__ = ["lr_at", "solve_gd"]


def lr_at(t: int, steps: int, lr0: float, policy: str) -> float:
    """``lr(t) = lr0 (1 - t/T)^p`` with ``p`` from :data:`LR_POLICIES` (spec, Baseline 2)."""
    if policy not in LR_POLICIES:
        raise ValueError(f"policy must be one of {sorted(LR_POLICIES)}, got {policy!r} (config key fpi.policy)")
    return lr0 * (1.0 - t / steps) ** LR_POLICIES[policy]


def solve_gd(stats: ClassStats, config: FPIConfig | None = None, *, log_every: int = 1, **options: Any) -> FPIResult:
    """Baseline 2 (NF^GD): minimise Eq. 4 by Adam/SGD on ``(mu, theta)``, ``v = vmin + (vmax-vmin) sigmoid(theta)``.

    ``pi`` is lagged as in the FPI (re-evaluated, detached, at every step).  The learning rate
    follows ``policy`` (:func:`lr_at`).  ``vmin``/``vmax`` default to 1e-2 x the smallest and
    1e2 x the largest initial variance.  ``history`` holds the objective (pi at the current
    iterate), the RMS whitened gradient (``residual``) and the learning rate (``step``).  The options are
    ``config``'s with keyword overrides, as for :func:`~nfpi.fpi.solve_fpi_from_stats` (``vmin``/``vmax``
    are ``gd_vmin``/``gd_vmax``).
    """
    cfg = dataclasses.replace(config or FPIConfig(), **options)
    _check_common(cfg)
    lam, alpha, pi, learn, init = float(cfg.lam), cfg.alpha, cfg.pi, cfg.learn, cfg.init
    policy, steps, lr, optimizer, vmin, vmax = cfg.policy, cfg.steps, cfg.lr, cfg.optimizer, cfg.gd_vmin, cfg.gd_vmax
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
    settings = {"solver": "gd", "lam": cfg.lam, "alpha": alpha, "pi": pi, "learn": learn, "init": init, "policy": policy,
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
