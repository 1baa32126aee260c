"""The spec's formulas written the slow, obvious way (loops over class pairs), and the test data.

The package must not loop over pairs; its tests compare against these.  Float64 throughout.
"""

from __future__ import annotations

import math

import torch

from nfpi.fpi import ClassStats, objective, objective_full


F64 = torch.float64


def make_data(k: int, d: int, n: int = 40, sep: float = 1.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents of ``k`` overlapping anisotropic classes (``n`` each)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=F64) * sep
    scales = 0.3 + 2 * torch.rand(k, d, generator=g, dtype=F64)
    y = torch.arange(k).repeat_interleave(n)
    z = centers[y] + torch.randn(k * n, d, generator=g, dtype=F64) * scales[y]
    perm = torch.randperm(k * n, generator=g)
    return z[perm], y[perm]


def make_stats(k: int, d: int, **kw: object) -> ClassStats:
    z, y = make_data(k, d, **kw)  # type: ignore[arg-type]
    return ClassStats.from_latents(z, y, k)


def kl_ref(mu1: torch.Tensor, v1: torch.Tensor, mu2: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (v1 / v2 + (mu1 - mu2) ** 2 / v2 - 1 + torch.log(v2) - torch.log(v1)).sum()


def objective_ref(mu, v, z, y, k, lam, alpha, pi, pi_value=None):
    """Eq. 4 from raw latents, one class and one pair at a time."""
    nll = torch.zeros((), dtype=F64)
    for c in range(k):
        zc = z[y == c]
        nll = nll + 0.5 * (((zc - mu[c]) ** 2).mean(0) / v[c] + torch.log(v[c])).sum()
    kl = torch.zeros(k, k, dtype=F64)
    for a in range(k):
        for b in range(k):
            if a != b:
                kl[a, b] = kl_ref(mu[a], v[a], mu[b], v[b])
    if pi_value is None:
        pi_value = kl.detach() if pi == "pair" else kl.detach().sum() / (k * (k - 1))
    rep = torch.zeros((), dtype=F64)
    for a in range(k):
        for b in range(k):
            if a != b:
                p = pi_value[a, b] if pi == "pair" else pi_value
                rep = rep + torch.exp(-kl[a, b] / (p * alpha))
    return nll + lam / (k * (k - 1)) * rep


def fpi_step_ref(mu, v, m, var, lam, alpha, pi):
    """Prop. 1 as written in the spec (paper split), looping over class pairs."""
    k, d = mu.shape
    c = lam / (k * (k - 1))
    kl = torch.zeros(k, k, dtype=F64)
    for a in range(k):
        for b in range(k):
            if a != b:
                kl[a, b] = kl_ref(mu[a], v[a], mu[b], v[b])
    piv = kl if pi == "pair" else torch.full((k, k), float(kl.sum() / (k * (k - 1))), dtype=F64)
    W = torch.zeros(k, k, dtype=F64)
    for a in range(k):
        for b in range(k):
            if a != b:
                W[a, b] = math.exp(-kl[a, b] / (piv[a, b] * alpha)) / (piv[a, b] * alpha)
    new_mu = torch.empty_like(mu)
    new_v = torch.empty_like(v)
    for a in range(k):
        acc = torch.zeros(d, dtype=F64)
        rsum = torch.zeros((), dtype=F64)
        msum = torch.zeros(d, dtype=F64)
        bsum = torch.zeros(d, dtype=F64)
        for b in range(k):
            if a == b:
                continue
            delta = mu[a] - mu[b]
            acc += (W[a, b] / v[b] + W[b, a] / v[a]) * delta
            rsum += W[a, b] - W[b, a]
            msum += W[b, a] * (delta**2 + v[b])
            bsum += W[a, b] / v[b]
        new_mu[a] = m[a] + c * v[a] * acc
        s = var[a] + (m[a] - mu[a]) ** 2
        A = (1 + c * rsum) / v[a] + c * msum / v[a] ** 2
        B = s + c * v[a] ** 2 * bsum
        new_v[a] = torch.sqrt(B / A)
    return new_mu, new_v


def grad_norm(stats, mu, v, lam, alpha, pi, learn, pi_value=None, full=False):
    mu = mu.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    fn = objective_full if full else objective
    loss = fn(mu, v, stats, lam=lam, alpha=alpha, pi=pi, pi_value=pi_value)
    gm, gv = torch.autograd.grad(loss, [mu, v])
    parts = ([gm.flatten()] if learn != "var" else []) + ([gv.flatten()] if learn != "mean" else [])
    return float(torch.cat(parts).norm())
