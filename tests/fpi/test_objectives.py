"""nfpi.fpi.objectives: the pairwise KL, the objective (Eq. 4) and the pi='pair' lambda limit, against per-pair references.

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import pytest
import torch

from nfpi.fpi import (
    ClassStats,
    FPIDivergenceError,
    objective,
    pair_lambda_limit,
    pairwise_kl,
    solve_fpi_from_stats,
)

from .reference import F64, make_data, make_stats, objective_ref


def test_pairwise_kl_matches_per_pair_and_torch_distributions() -> None:
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(6, 5, generator=g, dtype=F64)
    v = 0.2 + torch.rand(6, 5, generator=g, dtype=F64)
    kl = pairwise_kl(mu, v)
    for a in range(6):
        for b in range(6):
            pa = torch.distributions.Normal(mu[a], v[a].sqrt())
            pb = torch.distributions.Normal(mu[b], v[b].sqrt())
            ref = torch.distributions.kl_divergence(pa, pb).sum() if a != b else torch.zeros((), dtype=F64)
            torch.testing.assert_close(kl[a, b], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pi", ["mean", "pair"])
def test_objective_matches_per_pair(pi: str) -> None:
    k, d = 5, 4
    z, y = make_data(k, d, n=9, seed=2)
    st = ClassStats.from_latents(z, y, k)
    g = torch.Generator().manual_seed(5)
    mu = st.mean + 0.3 * torch.randn(k, d, generator=g, dtype=F64)
    v = st.var * (0.5 + torch.rand(k, d, generator=g, dtype=F64))
    for lam, alpha in [(0.0, 1.0), (3.0, 0.5), (50.0, 2.0)]:
        ours = objective(mu, v, st, lam=lam, alpha=alpha, pi=pi)  # type: ignore[arg-type]
        ref = objective_ref(mu, v, z, y, k, lam, alpha, pi)
        torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_pair_lambda_limit_separates_convergence_from_divergence(alpha: float) -> None:
    st = make_stats(10, 8, seed=20)
    limit = pair_lambda_limit(10, alpha)
    ok = solve_fpi_from_stats(st, lam=0.7 * limit, alpha=alpha, pi="pair", tol=1e-11, max_iter=2000)
    assert ok.converged
    with pytest.raises(FPIDivergenceError, match="pi='pair'"):
        solve_fpi_from_stats(st, lam=1.5 * limit, alpha=alpha, pi="pair", max_iter=2000)
