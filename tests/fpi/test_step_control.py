"""nfpi.fpi.step_control: the loop the FPI variants share (divergence, flagging, the iteration cap).

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from nfpi.fpi import (
    FPIDivergenceError,
    solve_fpi_from_stats,
)

from .reference import make_stats


def test_diverging_setting_raises_with_lambda_and_trend() -> None:
    st = make_stats(10, 8, seed=0)
    with pytest.raises(FPIDivergenceError) as info:
        solve_fpi_from_stats(st, lam=1000.0, pi="pair", max_iter=500)
    err = info.value
    assert err.lam == 1000.0 and err.iteration > 0 and len(err.residuals) > 0
    msg = str(err)
    assert "lam=1000" in msg and "residual trend" in msg and "Suggestion" in msg


@pytest.mark.parametrize("step_control", ["backtrack", "none"])
@pytest.mark.parametrize("split", ["positive", "paper"])
def test_flagged_divergence_never_returns_bad_variances(step_control: str, split: str) -> None:
    st = make_stats(10, 8, seed=0)
    r = solve_fpi_from_stats(
        st, lam=5000.0, pi="mean", step_control=step_control, split=split, on_divergence="flag", max_iter=300  # type: ignore[arg-type]
    )
    assert r.status == "diverged" and not r.converged
    assert "lam=5000" in r.message
    assert bool(torch.isfinite(r.variances).all()) and bool((r.variances > 0).all())
    assert bool(torch.isfinite(r.means).all())


def test_max_iter_is_reported() -> None:
    st = make_stats(10, 8, seed=1)
    r = solve_fpi_from_stats(st, lam=100.0, max_iter=3, on_divergence="flag")
    assert r.status == "max_iter" and not r.converged and r.iterations == 3
    assert len(r.history) == 4
    json.dumps(r.to_dict())
