"""The NFPI objective: pairwise KL (Eq. 3), the normaliser pi (Eqs. 9-10) and Eq. 4 itself.

Every sum over class pairs is a matrix product with a ``[K, K]`` kernel; no ``[K, K, d]`` tensor is formed.

    >>> import torch
    >>> from nfpi.fpi import ClassStats, objective
    >>> stats = ClassStats.from_latents(torch.randn(60, 3), torch.arange(60) % 3, num_classes=3)
    >>> float(objective(stats.mean, stats.var, stats, lam=10.0)) > 0        # doctest: +SKIP
    True
"""

from __future__ import annotations

import math

import torch

from nfpi.fpi.config import PiKind
from nfpi.fpi.statistics import ClassStats

__all__ = ["pairwise_kl", "pi_normaliser", "objective", "pair_lambda_limit"]


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


def pair_lambda_limit(num_classes: int, alpha: float) -> float:
    """``K alpha exp(1/alpha) / 2``: above it, pi="pair" makes the lagged objective unbounded below.

    At a pi="pair" iterate every kernel is ``exp(-1/alpha)``; growing one variance ``v_yj`` then
    lowers the repulsion by about ``c (K-1) exp(-1/alpha) / alpha * log v_yj`` while the NLL only
    gains ``0.5 log v_yj`` (docs/method.md, "pi = pair").
    """
    return num_classes * alpha * math.exp(1.0 / alpha) / 2.0
