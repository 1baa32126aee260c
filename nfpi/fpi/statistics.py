"""Class statistics ``(n_y, m_y, q_y)`` of the latents (spec "Notation"): everything the solvers need.

One streaming pass (:class:`StatsAccumulator`) gives them in O(K d) memory (O(K d^2) with the second
moments of the full-covariance variant), in float64 whatever the latents' dtype.

    >>> import torch
    >>> from nfpi.fpi import ClassStats
    >>> stats = ClassStats.from_latents(torch.randn(100, 4), torch.arange(100) % 5, num_classes=5)
    >>> stats.mean.shape, stats.var.dtype
    (torch.Size([5, 4]), torch.float64)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DTYPE", "ClassStats", "StatsAccumulator"]

#: All of the solvers' arithmetic is float64.
DTYPE = torch.float64


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    return x


@dataclass(frozen=True)
class ClassStats:
    """Per-class sufficient statistics of the latents (spec: ``n_y``, ``m_y``, ``q_y``), float64.

    ``second`` (optional, ``[K, d, d]``) is the per-class second-moment matrix ``E[z z^T | y]``,
    needed only by the full-covariance solver :func:`nfpi.fpi.solve_fpi_full`.
    """

    counts: torch.Tensor  #: [K] number of samples per class
    mean: torch.Tensor  #: [K, d] m_y, class mean of z
    sq: torch.Tensor  #: [K, d] q_y, class mean of z*z (elementwise)
    second: torch.Tensor | None = None  #: [K, d, d] class mean of z z^T (full covariance only)

    def __post_init__(self) -> None:
        for name in ("counts", "mean", "sq", "second"):  # the solver's arithmetic is float64 throughout
            val = getattr(self, name)
            if val is not None and val.dtype != DTYPE:
                object.__setattr__(self, name, val.to(DTYPE))
        if self.mean.ndim != 2 or self.sq.shape != self.mean.shape or self.counts.shape != (self.mean.shape[0],):
            raise ValueError(
                f"ClassStats: expected counts [K], mean [K, d], sq [K, d]; got {tuple(self.counts.shape)}, "
                f"{tuple(self.mean.shape)}, {tuple(self.sq.shape)}"
            )
        if self.second is not None and self.second.shape != (*self.mean.shape, self.mean.shape[1]):
            raise ValueError(f"ClassStats: second must be [K, d, d], got {tuple(self.second.shape)}")

    @property
    def num_classes(self) -> int:
        return int(self.mean.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    @functools.cached_property
    def var(self) -> torch.Tensor:
        """Biased class variance ``q_y - m_y^2`` (clamped at 0 against rounding), [K, d]; computed once."""
        return (self.sq - self.mean * self.mean).clamp_min(0.0)

    @property
    def cov(self) -> torch.Tensor:
        """Biased class covariance ``E[z z^T] - m m^T``, [K, d, d] (needs ``second``)."""
        if self.second is None:
            raise ValueError("ClassStats.cov needs full second moments: build the stats with full=True")
        return self.second - self.mean[:, :, None] * self.mean[:, None, :]

    @classmethod
    def from_latents(cls, z: Any, y: Any, num_classes: int, *, full: bool = False) -> ClassStats:
        """Statistics of latents ``z`` [N, d] with labels ``y`` [N] in one pass (``index_add``, no class loop)."""
        acc = StatsAccumulator(num_classes, int(_as_tensor(z, "z").reshape(len(z), -1).shape[1]), full=full)
        acc.update(z, y)
        return acc.finalize()


class StatsAccumulator:
    """Streaming accumulator of :class:`ClassStats`: ``update`` batch by batch, then ``finalize``.

    Sums are kept in float64 whatever the input dtype, so a pass over millions of float32 latents
    read from disk loses nothing; memory is O(K d) (O(K d^2) with ``full=True``).
    """

    def __init__(self, num_classes: int, dim: int, *, full: bool = False) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"StatsAccumulator: num_classes and dim must be >= 1, got {num_classes}, {dim}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.full = bool(full)
        self._n = torch.zeros(num_classes, dtype=DTYPE)
        self._s1 = torch.zeros(num_classes, dim, dtype=DTYPE)
        self._s2 = torch.zeros(num_classes, dim, dtype=DTYPE)
        self._s2full = torch.zeros(num_classes, dim, dim, dtype=DTYPE) if full else None

    def update(self, z: Any, y: Any) -> None:
        """Add a batch: ``z`` [B, d] (or [B, ...], flattened) and integer labels ``y`` [B]."""
        zt = _as_tensor(z, "z").detach().to("cpu", DTYPE).reshape(len(z), -1)
        yt = _as_tensor(y, "y").detach().to("cpu").reshape(-1)
        if zt.shape[1] != self.dim:
            raise ValueError(f"StatsAccumulator.update: latents have dim {zt.shape[1]}, expected {self.dim}")
        if yt.shape[0] != zt.shape[0]:
            raise ValueError(f"StatsAccumulator.update: {zt.shape[0]} latents but {yt.shape[0]} labels")
        if yt.is_floating_point():
            raise ValueError("StatsAccumulator.update: labels must be integers (int64 class ids 0..K-1)")
        yt = yt.long()
        if yt.numel() and (int(yt.min()) < 0 or int(yt.max()) >= self.num_classes):
            raise ValueError(
                f"StatsAccumulator.update: label out of range [0, {self.num_classes}) "
                f"(min {int(yt.min())}, max {int(yt.max())}); check num_classes"
            )
        if not torch.isfinite(zt).all():
            raise ValueError("StatsAccumulator.update: latents contain NaN/inf (check the flow checkpoint)")
        self._n.index_add_(0, yt, torch.ones_like(yt, dtype=DTYPE))
        self._s1.index_add_(0, yt, zt)
        self._s2.index_add_(0, yt, zt * zt)
        if self._s2full is not None:
            self._s2full.index_add_(0, yt, zt[:, :, None] * zt[:, None, :])

    def finalize(self) -> ClassStats:
        """The class statistics; raises if a class received no sample."""
        empty = torch.nonzero(self._n == 0).flatten().tolist()
        if empty:
            raise ValueError(
                f"StatsAccumulator.finalize: classes {empty[:20]}{'...' if len(empty) > 20 else ''} have no "
                f"samples; every class 0..{self.num_classes - 1} needs at least one latent (check labels / num_classes)"
            )
        n = self._n.clone()
        second = self._s2full / n[:, None, None] if self._s2full is not None else None
        return ClassStats(counts=n, mean=self._s1 / n[:, None], sq=self._s2 / n[:, None], second=second)
