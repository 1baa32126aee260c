"""nfpi.fpi.config: FPIConfig, the one source of the solver options.

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import pytest
import torch

from nfpi.fpi import (
    FPIConfig,
    solve,
    solve_fpi_from_stats,
    solve_gd,
)

from .reference import make_stats


def test_config_knobs_reach_the_solvers() -> None:
    """FPIConfig is the one source of the options: a keyword override and the same field set in the config give
    the same solve (no second list of keys to drift), and a misspelt keyword is named."""
    st = make_stats(4, 3, seed=23)
    knobs = {"lam": 20.0, "pi": "pair", "tol": 1e-9, "max_iter": 7, "split": "paper", "step_control": "none",
             "var_min": 1e-6, "init": "identity", "on_divergence": "flag", "steps": 30}
    cfg = FPIConfig(**knobs)  # type: ignore[arg-type]
    for fn in (solve_fpi_from_stats, solve_gd):
        a, b = fn(st, cfg), fn(st, **knobs)
        assert a.settings == b.settings and a.iterations == b.iterations
        torch.testing.assert_close(a.means, b.means)
    settings = solve_fpi_from_stats(st, cfg).settings
    assert {k: settings[k] for k in ("lam", "pi", "tol", "max_iter", "split", "var_min", "init")} == {
        k: knobs[k] for k in ("lam", "pi", "tol", "max_iter", "split", "var_min", "init")}
    assert solve(st, cfg).iterations <= 7
    with pytest.raises(TypeError, match="max_iters"):
        solve_fpi_from_stats(st, lam=1.0, max_iters=3)
