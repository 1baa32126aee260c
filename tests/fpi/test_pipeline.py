"""nfpi.fpi.pipeline: solve, the stage's entry point (config -> the solver it names).

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import json

import pytest
import torch

from nfpi.config import ConfigError, from_mapping
from nfpi.fpi import (
    FPIConfig,
    FPIResult,
    solve,
    solve_fpi_from_stats,
)

from .reference import make_stats


def test_config_from_mapping_and_solve_dispatch() -> None:
    cfg = from_mapping(FPIConfig, {"lam": 10, "pi": "pair", "learn": "mean", "tol": 1e-12}, where="fpi")
    assert cfg.lam == 10.0
    st = make_stats(6, 4, seed=18)
    r = solve(st, cfg)
    assert isinstance(r, FPIResult) and r.converged and r.settings["pi"] == "pair"
    ref = solve_fpi_from_stats(st, lam=10.0, pi="pair", learn="mean", tol=1e-12)
    torch.testing.assert_close(r.means, ref.means)
    meta = r.to_dict()
    assert "means" not in meta and meta["status"] == "converged"
    json.dumps(meta)
    g = solve(st, from_mapping(FPIConfig, {"method": "gd", "lam": 10, "steps": 5}, where="fpi"))
    assert g.settings["solver"] == "gd" and g.iterations == 5
    with pytest.raises(ConfigError, match="fpi.lamda"):
        from_mapping(FPIConfig, {"lamda": 1.0}, where="fpi")
    with pytest.raises(ConfigError, match="fpi.pi"):
        from_mapping(FPIConfig, {"pi": "both"}, where="fpi")
