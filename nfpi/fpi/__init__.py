"""Class Gaussians by fixed-point iteration (NFPI, Enescu & Sahbi, BMVC 2024, Sec. 4).

Everything here works on *class statistics* ``(n_y, m_y, q_y)`` (spec "Notation"), and every solver takes
its options from one :class:`FPIConfig` (keyword overrides allowed).  One module a concept:

- :mod:`nfpi.fpi.config`: :class:`FPIConfig`, :class:`LambdaPathConfig`, the five NF^GD policies
  (:data:`LR_POLICIES`); no torch.
- :mod:`nfpi.fpi.statistics`: :class:`ClassStats` and the one-pass :class:`StatsAccumulator`.
- :mod:`nfpi.fpi.objectives`: pairwise KL (Eq. 3), the normaliser pi (Eqs. 9-10), Eq. 4.
- :mod:`nfpi.fpi.diagonal`: Proposition 1 (Eqs. 5-6, corrected) with step control: :func:`solve_fpi_from_stats`.
- :mod:`nfpi.fpi.full`: the full-covariance variant (Eq. 6 as a matrix geometric mean).
- :mod:`nfpi.fpi.gd`: Baseline 2 (NF^GD), gradient descent under the five learning-rate policies.
- :mod:`nfpi.fpi.step_control`: the relaxed fixed-point loop the FPI variants share (private).
- :mod:`nfpi.fpi.result`: :class:`FPIResult`, :class:`FPIDivergenceError`.
- :mod:`nfpi.fpi.pipeline`: :func:`solve`, what the ``solve`` stage calls.

Every sum over class pairs is a matrix product with a ``[K, K]`` kernel; no ``[K, K, d]`` tensor is formed
and there is no Python loop over classes.  All arithmetic is float64.  The torch-backed names load on first
use, so ``from nfpi.fpi import FPIConfig`` does not import torch::

    >>> import torch
    >>> from nfpi.fpi import FPIConfig, solve_fpi
    >>> y = torch.arange(200) % 4
    >>> z = torch.randn(200, 4, dtype=torch.float64) + 3.0 * y[:, None]   # four separated classes
    >>> res = solve_fpi(z, y, num_classes=4, lam=10.0)
    >>> res.means.shape, res.converged
    (torch.Size([4, 4]), True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.fpi.config import LR_POLICIES, FPIConfig, InitKind, LambdaPathConfig, LearnKind, PiKind, PolicyName
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.fpi.diagonal import fpi_step, solve_fpi, solve_fpi_from_stats
    from nfpi.fpi.full import objective_full, pairwise_kl_full, solve_fpi_full
    from nfpi.fpi.gd import lr_at, solve_gd
    from nfpi.fpi.objectives import objective, pair_lambda_limit, pairwise_kl, pi_normaliser
    from nfpi.fpi.pipeline import solve
    from nfpi.fpi.result import FPIDivergenceError, FPIResult
    from nfpi.fpi.statistics import DTYPE, ClassStats, StatsAccumulator

__all__ = [
    "ClassStats",
    "StatsAccumulator",
    "FPIConfig",
    "LambdaPathConfig",
    "FPIResult",
    "FPIDivergenceError",
    "LR_POLICIES",
    "PolicyName",
    "pairwise_kl",
    "pairwise_kl_full",
    "pi_normaliser",
    "pair_lambda_limit",
    "objective",
    "objective_full",
    "fpi_step",
    "solve_fpi",
    "solve_fpi_from_stats",
    "solve_fpi_full",
    "solve_gd",
    "solve",
    "lr_at",
    "DTYPE",
    "PiKind",
    "LearnKind",
    "InitKind",
]

# name -> submodule for the names that need torch (each submodule's __all__, read once here)
_LAZY: dict[str, str] = {
    **{n: "statistics" for n in ("DTYPE", "ClassStats", "StatsAccumulator")},
    **{n: "result" for n in ("FPIResult", "FPIDivergenceError")},
    **{n: "objectives" for n in ("pairwise_kl", "pi_normaliser", "objective", "pair_lambda_limit")},
    **{n: "diagonal" for n in ("fpi_step", "solve_fpi_from_stats", "solve_fpi")},
    **{n: "full" for n in ("pairwise_kl_full", "objective_full", "solve_fpi_full")},
    **{n: "gd" for n in ("lr_at", "solve_gd")},
    "solve": "pipeline",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())  # torch-backed names load on first use (PEP 562)
