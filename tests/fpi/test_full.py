"""nfpi.fpi.full: full covariance (Eq. 6 as a matrix geometric mean).

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import pytest
import torch

from nfpi.fpi import (
    ClassStats,
    pairwise_kl,
    pairwise_kl_full,
    pi_normaliser,
    solve_fpi_from_stats,
    solve_fpi_full,
)

from .reference import F64, grad_norm, make_data, make_stats


def full_stats_from_diag(mean: torch.Tensor, var: torch.Tensor) -> ClassStats:
    second = torch.diag_embed(var) + mean[:, :, None] * mean[:, None, :]
    return ClassStats(counts=torch.full((len(mean),), 10.0, dtype=F64), mean=mean, sq=var + mean**2, second=second)


@pytest.mark.parametrize("pi", ["mean", "pair"])
@pytest.mark.parametrize("learn", ["both", "var"])
def test_full_matches_diagonal_on_diagonal_data(pi: str, learn: str) -> None:
    """Diagonal covariances and class means spread along one axis: every matrix in Eqs. 5-7
    (including the rank-one Delta Delta^T) stays diagonal, so both solvers must agree exactly.
    (With means spread over several axes Delta Delta^T has off-diagonal terms and they differ.)"""
    g = torch.Generator().manual_seed(14)
    k, d = 6, 4
    lam = 3.0 if pi == "mean" else 1.0
    var = 0.3 + torch.rand(k, d, generator=g, dtype=F64)
    mean = torch.zeros(k, d, dtype=F64)
    mean[:, 0] = torch.randn(k, generator=g, dtype=F64)
    st = full_stats_from_diag(mean, var)
    diag = solve_fpi_from_stats(st, lam=lam, pi=pi, learn=learn, tol=1e-13)  # type: ignore[arg-type]
    full = solve_fpi_full(st, lam=lam, pi=pi, learn=learn, tol=1e-13)  # type: ignore[arg-type]
    assert diag.converged and full.converged
    torch.testing.assert_close(full.means, diag.means, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(full.variances, torch.diag_embed(diag.variances), rtol=1e-9, atol=1e-11)
    assert bool((torch.linalg.eigvalsh(full.variances) > 0).all())


def test_full_covariance_is_spd_and_stationary() -> None:
    k, d = 5, 4
    z, y = make_data(k, d, n=30, seed=15)
    z = z @ torch.tensor([[1.0, 0.5, 0, 0], [0, 1, 0.3, 0], [0, 0, 1, -0.4], [0.2, 0, 0, 1]], dtype=F64)
    st = ClassStats.from_latents(z, y, k, full=True)
    lam = 10.0
    res = solve_fpi_full(st, lam=lam, pi="mean", tol=1e-13)
    assert res.converged and res.full and res.variances.shape == (k, d, d)
    torch.testing.assert_close(res.variances, res.variances.transpose(1, 2), rtol=0, atol=1e-12)
    assert bool((torch.linalg.eigvalsh(res.variances) > 0).all())
    g0 = grad_norm(st, st.mean, st.cov, lam, 1.0, "mean", "both", full=True)
    pv = pi_normaliser(pairwise_kl_full(res.means, res.variances), "mean")
    g1 = grad_norm(st, res.means, res.variances, lam, 1.0, "mean", "both", pi_value=pv, full=True)
    assert g1 / g0 < 1e-8
    # full KL agrees with the diagonal KL on diagonal covariances
    v = st.var
    torch.testing.assert_close(pairwise_kl_full(st.mean, torch.diag_embed(v)), pairwise_kl(st.mean, v))


def test_full_requires_second_moments() -> None:
    with pytest.raises(ValueError, match="full=True"):
        solve_fpi_full(make_stats(3, 2), lam=1.0)
