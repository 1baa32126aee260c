"""benchmarks/datasets.py: deterministic, in the layouts users pass, read by the real loader; the SVC yardstick."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpi.data import DataConfig, PreparedData, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import datasets as gen  # noqa: E402
import svc_baseline  # noqa: E402

SMALL = {"glyphs16": 40, "digits28": 40, "shapes24": 30}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_bytes_other_seed_other_images(name: str) -> None:
    a, b = gen.GENERATORS[name](n=SMALL[name], seed=3), gen.GENERATORS[name](n=SMALL[name], seed=3)
    c = gen.GENERATORS[name](n=SMALL[name], seed=4)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.images.dtype == np.uint8 and a.labels.dtype == np.int64
    assert len(a.class_names) == 10 and len(set(a.class_names)) == 10


@settings(max_examples=8, deadline=None)
@given(n=st.integers(10, 45), seed=st.integers(0, 2**16))
def test_labels_are_balanced(n: int, seed: int) -> None:
    spec = gen.glyphs16(n=n, seed=seed)
    counts = np.bincount(spec.labels, minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert spec.images.shape == (n, 16, 16)


@pytest.mark.parametrize("name,shape", [("glyphs16", [1, 16, 16]), ("digits28", [1, 28, 28]),
                                        ("shapes24", [3, 24, 24])])
def test_written_layout_loads_through_the_real_loader(tmp_path: Path, name: str, shape: list[int]) -> None:
    spec = gen.GENERATORS[name](n=SMALL[name], seed=1)
    root = gen.write(spec, tmp_path / name)
    source = "imagefolder" if spec.layout == "imagefolder" else "npz"
    assert (root / ("train" if source == "imagefolder" else "train.npz")).exists()
    meta = prepare_dataset(DataConfig(name=source, root=str(root), val_fraction=0.1, test_fraction=0.2),
                           tmp_path / "prep", size_multiple=4)
    # grey PNG folders stay one channel with channels: null (no RGB copies), 28 is a multiple of 4: no padding
    assert meta["image_shape"] == shape and meta["num_classes"] == 10 and meta["n_bits"] == 8
    data = PreparedData(tmp_path / "prep")
    assert sum(meta["counts"].values()) == SMALL[name]
    # every image comes back exactly (the prepared splits are a partition of the generated set)
    got = np.concatenate([data.images(s) for s in ("train", "val", "test")])
    want = spec.images[:, None] if spec.images.ndim == 3 else spec.images.transpose(0, 3, 1, 2)
    key = lambda x: sorted(a.tobytes() for a in x)  # noqa: E731
    assert key(got) == key(want)
    with pytest.raises(FileExistsError, match="already holds"):
        gen.write(spec, root)


def test_svc_uses_only_train_to_fit_and_val_to_choose(tmp_path: Path) -> None:
    root = gen.write(gen.shapes24(n=60, seed=2), tmp_path / "s")
    prepare_dataset(DataConfig(name="npz", root=str(root), val_fraction=0.2, test_fraction=0.25), tmp_path / "p",
                    size_multiple=4)
    rep = svc_baseline.svc_report(tmp_path / "p")
    assert rep["counts"] == {"train": 36, "val": 9, "test": 15}
    assert rep["val"]["C"] in svc_baseline.C_GRID and rep["val"]["gamma_factor"] in svc_baseline.GAMMA_FACTORS
    # relabelling the test split changes test scores, never the choice (val only)
    y = np.load(tmp_path / "p" / "test_labels.npy")
    np.save(tmp_path / "p" / "test_labels.npy", (y + 1) % 10)
    rep2 = svc_baseline.svc_report(tmp_path / "p")
    assert (rep2["val"]["C"], rep2["val"]["gamma_factor"]) == (rep["val"]["C"], rep["val"]["gamma_factor"])
