"""nfpi.fpi.gd: NF^GD (Baseline 2): the learning-rate policies and gradient descent on Eq. 4.

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import pytest

from nfpi.fpi import (
    LR_POLICIES,
    lr_at,
    objective,
    pairwise_kl,
    pi_normaliser,
    solve_fpi_from_stats,
    solve_gd,
)

from .reference import make_stats


def test_lr_policies() -> None:
    assert set(LR_POLICIES) == {"sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2"}
    assert lr_at(0, 100, 0.1, "linear") == pytest.approx(0.1)
    assert lr_at(50, 100, 0.1, "linear") == pytest.approx(0.05)
    assert lr_at(75, 100, 1.0, "sublinear_v1") == pytest.approx(0.5)
    assert lr_at(50, 100, 1.0, "superlinear_v2") == pytest.approx(1 / 16)
    assert lr_at(100, 100, 1.0, "sublinear_v2") == 0.0
    with pytest.raises(ValueError, match="fpi.policy"):
        lr_at(0, 10, 1.0, "cosine")


@pytest.mark.parametrize("policy", sorted(LR_POLICIES))
def test_gd_lowers_objective(policy: str) -> None:
    """NF^GD lowers Eq. 4 with pi held either at the start or at the end value (pi is lagged in
    GD as in the FPI; with pi re-evaluated at every iterate the value rises as classes separate)."""
    st = make_stats(6, 5, seed=16)
    lam = 5.0
    res = solve_gd(st, lam=lam, pi="mean", policy=policy, steps=100, lr=0.03)
    assert res.status == "max_iter" and len(res.history) == 101
    for mu_ref, v_ref in [(st.mean, st.var), (res.means, res.variances)]:
        pv = pi_normaliser(pairwise_kl(mu_ref, v_ref), "mean")
        before = float(objective(st.mean, st.var, st, lam=lam, pi="mean", pi_value=pv))
        after = float(objective(res.means, res.variances, st, lam=lam, pi="mean", pi_value=pv))
        assert after < before - 1e-3
    assert res.history[-1]["residual"] < 0.1 * res.history[0]["residual"]
    lo, hi = res.settings["vmin"], res.settings["vmax"]
    assert bool((res.variances >= lo).all() and (res.variances <= hi).all())


def test_gd_approaches_the_fpi_solution() -> None:
    st = make_stats(5, 3, seed=17)
    fpi = solve_fpi_from_stats(st, lam=5.0, learn="mean", tol=1e-12)
    gd = solve_gd(st, lam=5.0, learn="mean", steps=300, lr=0.05, policy="linear")
    assert float((gd.means - fpi.means).abs().max()) < 1e-2
