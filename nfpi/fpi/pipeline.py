"""The ``solve`` stage's entry point: :func:`solve` dispatches an :class:`~nfpi.fpi.FPIConfig` on its ``method``.

    >>> from nfpi.fpi import FPIConfig, solve
    >>> result = solve(stats, FPIConfig(method="gd", lam=10.0, steps=100))   # doctest: +SKIP
"""

from __future__ import annotations

from nfpi.fpi.config import FPIConfig
from nfpi.fpi.diagonal import solve_fpi_from_stats
from nfpi.fpi.full import solve_fpi_full
from nfpi.fpi.gd import solve_gd
from nfpi.fpi.result import FPIResult
from nfpi.fpi.statistics import ClassStats

__all__ = ["solve"]


def solve(stats: ClassStats, cfg: FPIConfig) -> FPIResult:
    """Solve with the options of ``cfg`` (the pipeline's ``fpi`` slice); dispatches on ``cfg.method``.

    ``lam: "auto"`` needs validation latents: use :func:`nfpi.lampath.solve_path`.
    """
    solvers = {"fpi": solve_fpi_from_stats, "fpi_full": solve_fpi_full, "gd": solve_gd}
    if cfg.method not in solvers:
        raise ValueError(f"fpi.method must be 'fpi', 'fpi_full' or 'gd', got {cfg.method!r}")
    return solvers[cfg.method](stats, cfg)
