"""Tests of nfpi.latents: Parquet / memmap round trips, streaming, atomicity, one-pass class statistics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nfpi.data import DataError
from nfpi.latents import LatentError, class_stats, labels_path, open_latents, write_latents


def _data(n: int = 1000, d: int = 12, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = (rng.standard_normal((n, d)) * 3 + y[:, None]).astype(np.float32)
    return z, y


def _batches(z: np.ndarray, y: np.ndarray, sizes: list[int], torch_tensors: bool = False) -> Iterator:
    s = 0
    i = 0
    while s < len(y):
        b = sizes[i % len(sizes)]
        zb, yb = z[s : s + b], y[s : s + b]
        yield (torch.from_numpy(zb), torch.from_numpy(yb)) if torch_tensors else (zb, yb)
        s += b
        i += 1


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
@pytest.mark.parametrize("torch_tensors", [False, True])
def test_roundtrip_exact(tmp_path: Path, suffix: str, torch_tensors: bool) -> None:
    z, y = _data()
    path = tmp_path / f"train{suffix}"
    rows = write_latents(path, _batches(z, y, [77, 300, 1], torch_tensors), dim=12, split="train", num_rows=1000,
                         row_group_size=256)
    assert rows == 1000
    r = open_latents(path)
    assert (r.num_rows, r.dim) == (1000, 12)
    z2, y2 = r.read_all()
    assert z2.dtype == np.float32 and y2.dtype == np.int64
    assert np.array_equal(z2, z) and np.array_equal(y2, y)
    got = list(r.iter_batches(batch_rows=333))
    assert all(len(b) <= 333 and b.shape[1] == 12 for b, _ in got)
    assert np.array_equal(np.concatenate([b for b, _ in got]), z)
    assert np.array_equal(np.concatenate([c for _, c in got]), y)


def test_parquet_schema_and_row_groups(tmp_path: Path) -> None:
    z, y = _data(n=1000)
    path = tmp_path / "val.parquet"
    write_latents(path, _batches(z, y, [90]), dim=12, split="val", row_group_size=256)
    f = pq.ParquetFile(path)
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [256, 256, 256, 232]
    schema = f.schema_arrow
    assert schema.field("z").type == pa.list_(pa.float32(), 12)
    assert schema.field("label").type == pa.int64()
    t = pq.read_table(path)
    assert set(t.column("split").to_pylist()) == {"val"}
    assert open_latents(path).split == "val"


def test_image_shaped_batches_are_flattened(tmp_path: Path) -> None:
    z, y = _data(n=64, d=3 * 4 * 4)
    path = tmp_path / "x.parquet"
    write_latents(path, [(torch.from_numpy(z.reshape(64, 3, 4, 4)), y)], dim=48, split="train")
    assert np.array_equal(open_latents(path).read_all()[0], z)


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    assert write_latents(path, [], dim=4, split="val") == 0
    z, y = open_latents(path).read_all()
    assert z.shape == (0, 4) and y.shape == (0,)


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_failure_midway_leaves_nothing(tmp_path: Path, suffix: str) -> None:
    z, y = _data()
    path = tmp_path / f"train{suffix}"

    def dying() -> Iterator:
        yield z[:500], y[:500]
        raise RuntimeError("job killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_latents(path, dying(), dim=12, split="train", num_rows=1000)
    assert not path.exists() and not labels_path(path).exists()
    assert list(tmp_path.iterdir()) == []  # no temporary files either


def test_parquet_failure_keeps_previous_file(tmp_path: Path) -> None:
    z, y = _data()
    path = tmp_path / "train.parquet"
    write_latents(path, [(z, y)], dim=12, split="train")
    with pytest.raises(LatentError, match="num_rows"):
        write_latents(path, [(z[:10], y[:10])], dim=12, split="train", num_rows=1000)
    assert open_latents(path).num_rows == 1000


def test_npy_needs_and_checks_num_rows(tmp_path: Path) -> None:
    z, y = _data()
    with pytest.raises(LatentError, match="num_rows"):
        write_latents(tmp_path / "a.npy", [(z, y)], dim=12, split="train")
    with pytest.raises(LatentError, match="more than num_rows"):
        write_latents(tmp_path / "a.npy", [(z, y)], dim=12, split="train", num_rows=999)
    with pytest.raises(LatentError, match="got 1000"):
        write_latents(tmp_path / "a.npy", [(z, y)], dim=12, split="train", num_rows=1001)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(LatentError, match="dim=13"):
        write_latents(tmp_path / "a.parquet", [(z, y)], dim=13, split="train")
    with pytest.raises(LatentError, match=r"\.csv"):
        write_latents(tmp_path / "a.csv", [(z, y)], dim=12, split="train")


def test_open_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(LatentError, match=r"missing\.parquet.*not found"):
        open_latents(tmp_path / "missing.parquet")
    bad = tmp_path / "corrupt.parquet"
    bad.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(LatentError, match=r"corrupt\.parquet.*not a readable"):
        open_latents(bad)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"z": pa.array([[1.0, 2.0]], pa.list_(pa.float64(), 2)), "label": [0]}), wrong)
    with pytest.raises(LatentError, match=r"wrong\.parquet.*wrong schema.*fixed_size_list<float32>"):
        open_latents(wrong)
    nolabel = tmp_path / "nolabel.parquet"
    pq.write_table(pa.table({"z": pa.array([[1.0, 2.0]], pa.list_(pa.float32(), 2))}), nolabel)
    with pytest.raises(LatentError, match="nolabel.parquet"):
        open_latents(nolabel)
    z, y = _data()
    write_latents(tmp_path / "m.npy", [(z, y)], dim=12, split="train", num_rows=1000)
    labels_path(tmp_path / "m.npy").unlink()
    with pytest.raises(LatentError, match=r"m\.labels\.npy.*not found"):
        open_latents(tmp_path / "m.npy")
    assert issubclass(LatentError, DataError)


def _reference_stats(z: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    onehot = np.eye(k)[y]  # [N, K]: class sums as one matrix product, in float64
    n = onehot.sum(0)
    z64 = z.astype(np.float64)
    return n, onehot.T @ z64 / n[:, None], onehot.T @ (z64 * z64) / n[:, None]


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_class_stats_match_direct_computation(tmp_path: Path, suffix: str) -> None:
    z, y = _data(n=3000, d=20, k=7, seed=1)
    path = tmp_path / f"train{suffix}"
    write_latents(path, _batches(z, y, [500]), dim=20, split="train", num_rows=3000, row_group_size=1024)
    stats = class_stats(path, 7, batch_rows=700)  # batches that straddle row groups
    n, m, q = _reference_stats(z, y, 7)
    assert stats.mean.dtype == torch.float64
    np.testing.assert_array_equal(stats.counts.numpy(), n)
    np.testing.assert_allclose(stats.mean.numpy(), m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.sq.numpy(), q, rtol=1e-12, atol=1e-12)


def test_class_stats_label_errors(tmp_path: Path) -> None:
    z, y = _data(n=200, k=5)
    path = tmp_path / "train.parquet"
    write_latents(path, [(z, y)], dim=12, split="train")
    with pytest.raises(LatentError, match=r"train\.parquet.*outside 0\.\.3"):
        class_stats(path, 4)
    with pytest.raises(LatentError, match=r"train\.parquet.*no samples"):
        class_stats(path, 6)
