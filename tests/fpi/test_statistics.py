"""nfpi.fpi.statistics: ClassStats and the streaming StatsAccumulator (the class moments Eq. 4 needs).

Float64 throughout; the per-pair references are in tests/fpi/reference.py.
"""

from __future__ import annotations

import pytest
import torch

from nfpi.fpi import (
    ClassStats,
    StatsAccumulator,
)

from .reference import F64, make_data


def test_stats_match_per_class_loop() -> None:
    z, y = make_data(5, 7, n=13)
    st = ClassStats.from_latents(z, y, 5)
    assert st.num_classes == 5 and st.dim == 7 and st.mean.dtype == F64
    for c in range(5):
        zc = z[y == c]
        assert st.counts[c] == len(zc)
        torch.testing.assert_close(st.mean[c], zc.mean(0))
        torch.testing.assert_close(st.sq[c], (zc * zc).mean(0))
        torch.testing.assert_close(st.var[c], zc.var(0, unbiased=False))


def test_accumulator_streams_numpy_float32_batches() -> None:
    z, y = make_data(4, 6, n=25, seed=3)
    z32 = z.float()
    acc = StatsAccumulator(4, 6, full=True)
    for i in range(0, len(z), 17):  # uneven batches, numpy input
        acc.update(z32[i : i + 17].numpy(), y[i : i + 17].numpy())
    st = acc.finalize()
    ref = ClassStats.from_latents(z32.double(), y, 4, full=True)
    torch.testing.assert_close(st.mean, ref.mean)
    torch.testing.assert_close(st.sq, ref.sq)
    assert st.second is not None and ref.second is not None
    torch.testing.assert_close(st.second, ref.second)
    for c in range(4):
        zc = z32.double()[y == c]
        torch.testing.assert_close(st.cov[c], torch.cov(zc.T, correction=0))


def test_accumulator_errors() -> None:
    acc = StatsAccumulator(3, 2)
    acc.update(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"classes \[1\] have no samples"):
        acc.finalize()
    with pytest.raises(ValueError, match="out of range"):
        acc.update(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ValueError, match="dim 3"):
        acc.update(torch.zeros(1, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(torch.full((1, 2), float("nan")), torch.tensor([0]))
