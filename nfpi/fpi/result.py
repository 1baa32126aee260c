"""What a solver returns: :class:`FPIResult`, and :class:`FPIDivergenceError` when the iteration diverges.

    >>> from nfpi.fpi import ClassStats, solve_fpi_from_stats
    >>> result = solve_fpi_from_stats(stats, lam=10.0)                     # doctest: +SKIP
    >>> result.status, result.to_dict()["final_residual"]                   # doctest: +SKIP
    ('converged', 8.1e-11)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["FPIResult", "FPIDivergenceError"]


class FPIDivergenceError(RuntimeError):
    """The fixed-point iteration diverged (or made no progress); the message says what to change."""

    def __init__(self, message: str, *, lam: float, iteration: int, residuals: Sequence[float]) -> None:
        super().__init__(message)
        self.lam = lam
        self.iteration = iteration
        self.residuals = list(residuals)


@dataclass(frozen=True)
class FPIResult:
    """Solved class Gaussians and how the solver got there."""

    means: torch.Tensor  #: [K, d] float64
    variances: torch.Tensor  #: [K, d] float64 (diagonal), or [K, d, d] covariances (full)
    iterations: int  #: accepted iterations (GD: steps)
    converged: bool
    status: str  #: "converged" | "max_iter" | "diverged"
    history: list[dict[str, float]]  #: per iteration: objective, residual, step (and backtracks)
    settings: dict[str, Any] = field(default_factory=dict)  #: the options used (lam, alpha, pi, ...)
    message: str = ""  #: human-readable reason for the status

    @property
    def full(self) -> bool:
        return self.variances.ndim == 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-able metadata (no big tensors)."""
        last = self.history[-1] if self.history else {}
        return {
            "num_classes": int(self.means.shape[0]),
            "dim": int(self.means.shape[1]),
            "full_covariance": self.full,
            "iterations": self.iterations,
            "converged": self.converged,
            "status": self.status,
            "message": self.message,
            "final_objective": last.get("objective"),
            "final_residual": last.get("residual"),
            "settings": dict(self.settings),
            "history": [dict(h) for h in self.history],
        }
