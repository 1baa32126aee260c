"""Tests of nfpi.data: every source in its exact on-disk format, through the real loaders.

The files are generated here in the formats the loaders expect (CIFAR python pickle batches,
MNIST idx files, downsampled-ImageNet pickles and .npz, user .npz, ImageFolder PNGs), small
enough for the shared machine.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fakedata import write_cifar, write_idx, write_imagenet_batches
from nfpi.config import from_mapping
from nfpi.data import SPLITS, DataConfig, DataError, PreparedData, prepare_dataset, stratified_carve


def _rows(x: np.ndarray) -> np.ndarray:
    """Images as sorted byte rows: a multiset of images, to compare splits regardless of order."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    return np.sort(flat.view(np.dtype((np.void, flat.shape[1]))).ravel())


def _all(p: PreparedData) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([p.images(s) for s in SPLITS]), np.concatenate([p.labels(s) for s in SPLITS]))


# ---------------------------------------------------------------------------------------------
# splits


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=8),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**31),
)
def test_stratified_carve_counts(counts: list[int], fraction: float, seed: int) -> None:
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    mask = stratified_carve(labels, len(counts), fraction, seed)
    carved = np.bincount(labels[mask], minlength=len(counts))
    c = np.asarray(counts)
    # each class gets floor or ceil of its share, never its last item
    assert np.all(carved <= np.ceil(fraction * c))
    assert np.all(carved >= np.minimum(np.floor(fraction * c), np.maximum(c - 1, 0)))
    assert np.all((carved < c) | (c == 0))
    # deterministic in the seed
    assert np.array_equal(mask, stratified_carve(labels, len(counts), fraction, seed))


def test_stratified_carve_total_and_seed() -> None:
    labels = np.repeat(np.arange(7), [13, 29, 31, 7, 50, 3, 17])
    mask = stratified_carve(labels, 7, 0.3, 0)
    assert mask.sum() == round(0.3 * len(labels))
    assert not np.array_equal(mask, stratified_carve(labels, 7, 0.3, 1))


# ---------------------------------------------------------------------------------------------
# digits (the embedded default)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    out = tmp_path_factory.mktemp("digits")
    prepare_dataset(DataConfig(), out)
    return PreparedData(out)


def test_digits_splits_partition_the_source(digits: PreparedData) -> None:
    from sklearn.datasets import load_digits

    d = load_digits()
    src = np.minimum(d.images * 16, 255).astype(np.uint8)[:, None]
    x, y = _all(digits)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert digits.image_shape == (1, 8, 8) and digits.num_classes == 10
    # the three splits together are exactly the source, each image once, with its own label
    assert np.array_equal(_rows(x), _rows(src))
    def pairs(imgs: np.ndarray, lab: np.ndarray) -> np.ndarray:
        return _rows(np.concatenate([imgs.reshape(len(imgs), -1), lab[:, None].astype(np.uint8)], 1))

    assert np.array_equal(pairs(x, y), pairs(src, d.target))
    counts = digits.meta["counts"]
    assert counts["test"] == round(0.2 * 1797)
    assert counts["val"] == round(0.1 * (1797 - counts["test"]))


def test_digits_splits_are_stratified(digits: PreparedData) -> None:
    per_class = np.bincount(load_labels := np.concatenate([digits.labels(s) for s in SPLITS]), minlength=10)
    assert per_class.sum() == len(load_labels)
    test = np.bincount(digits.labels("test"), minlength=10)
    assert np.all(np.abs(test - 0.2 * per_class) <= 1)
    pool = per_class - test
    val = np.bincount(digits.labels("val"), minlength=10)
    assert np.all(np.abs(val - 0.1 * pool) <= 1)
    assert digits.meta["class_counts"]["val"] == val.tolist()


def test_digits_deterministic_and_seeded(digits: PreparedData, tmp_path: Path) -> None:
    prepare_dataset(DataConfig(), tmp_path / "same")
    same = PreparedData(tmp_path / "same")
    for s in SPLITS:
        assert np.array_equal(same.images(s), digits.images(s))
        assert np.array_equal(same.labels(s), digits.labels(s))
    prepare_dataset(DataConfig(split_seed=1), tmp_path / "other")
    other = PreparedData(tmp_path / "other")
    assert not np.array_equal(_rows(other.images("test")), _rows(digits.images("test")))


def test_pad_to_size_multiple(digits: PreparedData, tmp_path: Path) -> None:
    meta = prepare_dataset(DataConfig(), tmp_path, size_multiple=16)
    p = PreparedData(tmp_path)
    assert p.image_shape == (1, 16, 16) and meta["image_shape"] == [1, 16, 16]
    x = p.images("train")
    assert np.array_equal(x[:, :, 4:12, 4:12], digits.images("train"))  # same split, content centred
    border = x.copy()
    border[:, :, 4:12, 4:12] = 0
    assert not border.any()
    assert any("padded 8x8 -> 16x16" in n for n in meta["notes"])


def test_resize_mode_channels_and_image_size(tmp_path: Path) -> None:
    meta = prepare_dataset(DataConfig(resize_mode="resize", channels=3), tmp_path / "a", size_multiple=16)
    a = PreparedData(tmp_path / "a")
    assert a.image_shape == (3, 16, 16)
    x = a.images("test")
    assert np.array_equal(x[:, 0], x[:, 1]) and np.array_equal(x[:, 0], x[:, 2])  # grey replicated
    assert any("resized 8x8 -> 16x16" in n for n in meta["notes"])
    meta = prepare_dataset(DataConfig(image_size=12), tmp_path / "b", size_multiple=4)
    assert meta["image_shape"] == [1, 12, 12]
    assert not any("padded" in n for n in meta["notes"])


def test_caps_per_class(tmp_path: Path) -> None:
    meta = prepare_dataset(DataConfig(max_train_per_class=20, max_test_per_class=5, val_fraction=0.25), tmp_path)
    cc = meta["class_counts"]
    assert cc["test"] == [5] * 10
    assert [t + v for t, v in zip(cc["train"], cc["val"])] == [20] * 10
    assert cc["val"] == [5] * 10


def test_config_from_mapping_and_validation() -> None:
    cfg = from_mapping(DataConfig, {"name": "npz", "root": "/x", "val_fraction": 0, "channels": 3}, where="data")
    assert cfg.val_fraction == 0.0 and cfg.channels == 3
    with pytest.raises(DataError, match="val_fraction"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(DataError, match="channels"):
        DataConfig(channels=2)
    with pytest.raises(DataError, match="data.root"):
        prepare_dataset(DataConfig(name="cifar10"), "/nonexistent/out")


# ---------------------------------------------------------------------------------------------
# the reader


def test_prepared_data_reader(digits: PreparedData, tmp_path: Path) -> None:
    ds = digits.dataset("val")
    x, y = ds[3]
    assert x.dtype == torch.uint8 and tuple(x.shape) == digits.image_shape and isinstance(y, int)
    assert np.array_equal(x.numpy(), digits.images("val")[3]) and y == digits.labels("val")[3]
    loader = torch.utils.data.DataLoader(ds, batch_size=50)
    xb, yb = next(iter(loader))
    assert xb.shape == (50, *digits.image_shape) and yb.dtype == torch.int64
    assert isinstance(digits.images("train"), np.memmap)
    # DataLoader workers receive a pickled copy: it must not carry an open memmap, and still read right
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None and torch.equal(clone[3][0], x)
    flipped = digits.dataset("val", transform=lambda t: t.flip(-1))
    assert torch.equal(flipped[3][0], x.flip(-1))
    with pytest.raises(DataError, match="split"):
        digits.images("holdout")
    with pytest.raises(DataError, match=str(tmp_path)):
        PreparedData(tmp_path)


def test_reader_detects_a_mismatched_file(tmp_path: Path) -> None:
    prepare_dataset(DataConfig(max_train_per_class=10), tmp_path)
    np.save(tmp_path / "val_labels.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match="val_labels.npy"):
        PreparedData(tmp_path).labels("val")


# ---------------------------------------------------------------------------------------------
# user .npz


def _npz(path: Path, images: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels, **extra)


def test_npz_roundtrip_rgb_and_label_mapping(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (60, 6, 6, 3), dtype=np.uint8)
    ytr = rng.choice([3, 7, 11], 60)
    xte = rng.integers(0, 256, (15, 6, 6, 3), dtype=np.uint8)
    yte = rng.choice([3, 11], 15)
    names = np.array([f"c{i}" for i in range(12)])
    _npz(tmp_path / "src" / "train.npz", xtr, ytr, class_names=names)
    _npz(tmp_path / "src" / "test.npz", xte, yte)
    meta = prepare_dataset(DataConfig(name="npz", root=str(tmp_path / "src"), val_fraction=0.0), tmp_path / "out")
    p = PreparedData(tmp_path / "out")
    assert p.class_names == ["c3", "c7", "c11"] and p.image_shape == (3, 6, 6)
    # order is kept within a split, pixels are identical (HWC -> CHW), labels remapped by sorted value
    assert np.array_equal(p.images("train"), xtr.transpose(0, 3, 1, 2))
    assert np.array_equal(p.labels("train"), np.searchsorted([3, 7, 11], ytr))
    assert np.array_equal(p.images("test"), xte.transpose(0, 3, 1, 2))
    assert meta["counts"] == {"train": 60, "val": 0, "test": 15}
    assert meta["source_splits"]["test"] == "test"


def test_npz_grey_without_test_split_carves_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (100, 5, 7), dtype=np.uint8)
    y = np.repeat(np.arange(4), 25)
    _npz(tmp_path / "src" / "train.npz", x, y)
    meta = prepare_dataset(DataConfig(name="npz", root=str(tmp_path / "src"), channels=3, image_size=8),
                           tmp_path / "out", size_multiple=4)
    assert meta["counts"]["test"] == 20 and meta["class_counts"]["test"] == [5, 5, 5, 5]
    assert meta["image_shape"] == [3, 8, 8] and meta["source_splits"]["test"] == "train"


def test_npz_malformed_files_name_the_path(tmp_path: Path) -> None:
    src = tmp_path / "src"
    cfg = DataConfig(name="npz", root=str(src))
    with pytest.raises(DataError, match=r"train\.npz.*not found.*'images'"):
        prepare_dataset(cfg, tmp_path / "out")
    src.mkdir()
    np.savez(src / "train.npz", pixels=np.zeros((4, 4, 4), np.uint8), labels=np.zeros(4, int))
    with pytest.raises(DataError, match=r"train\.npz.*missing key.*images"):
        prepare_dataset(cfg, tmp_path / "out")
    _npz(src / "train.npz", np.zeros((4, 4, 4), np.float32), np.zeros(4, int))
    with pytest.raises(DataError, match=r"train\.npz.*uint8"):
        prepare_dataset(cfg, tmp_path / "out")
    _npz(src / "train.npz", np.zeros((4, 4, 4), np.uint8), np.zeros(3, int))
    with pytest.raises(DataError, match=r"train\.npz.*labels"):
        prepare_dataset(cfg, tmp_path / "out")
    (src / "train.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"train\.npz.*readable"):
        prepare_dataset(cfg, tmp_path / "out")
    _npz(src / "train.npz", np.zeros((8, 4, 4), np.uint8), np.arange(8) % 2)
    _npz(src / "test.npz", np.zeros((2, 4, 4), np.uint8), np.array([0, 5]))
    with pytest.raises(DataError, match=r"test\.npz.*\[5\]"):
        prepare_dataset(cfg, tmp_path / "out")


def test_killed_or_failed_rerun_leaves_no_complete_marker(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    rng = np.random.default_rng(2)
    _npz(src / "train.npz", rng.integers(0, 256, (40, 4, 4), dtype=np.uint8), np.arange(40) % 4)
    _npz(src / "test.npz", rng.integers(0, 256, (8, 4, 4), dtype=np.uint8), np.arange(8) % 4)
    prepare_dataset(DataConfig(name="npz", root=str(src)), out)
    assert (out / "meta.json").is_file()
    # the rerun fails on the test file after the source is opened: the old marker must be gone
    _npz(src / "test.npz", rng.integers(0, 256, (8, 4, 4), dtype=np.uint8), np.arange(8) % 4 + 10)
    with pytest.raises(DataError):
        prepare_dataset(DataConfig(name="npz", root=str(src)), out)
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match="meta.json"):
        PreparedData(out)
    assert not list(out.glob("*.tmp"))  # no temporary left behind


# ---------------------------------------------------------------------------------------------
# CIFAR through torchvision


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickle_batches(tmp_path: Path, name: str) -> None:
    made = write_cifar(tmp_path / "root", name, np.random.default_rng(3), n_train=8, n_test=10, structured=False)
    cfg = DataConfig(name=name, root=str(tmp_path / "root"), verify_checksums=False, val_fraction=0.0)
    meta = prepare_dataset(cfg, tmp_path / "out")
    p = PreparedData(tmp_path / "out")
    xtr = np.concatenate([d for d, _ in made["train"]]).reshape(-1, 3, 32, 32)  # CIFAR rows are channel planes
    ytr = np.concatenate([lab for _, lab in made["train"]])
    assert np.array_equal(p.images("train"), xtr) and np.array_equal(p.labels("train"), ytr)
    assert np.array_equal(p.images("test"), made["test"][0][0].reshape(-1, 3, 32, 32))
    assert p.class_names == made["names"] and p.num_classes == len(made["names"])
    assert meta["counts"]["train"] == len(xtr) == 8 * len(made["train"])
    # the md5 sums of the real archive do not match local copies: the message says what to do
    with pytest.raises(DataError, match="verify_checksums"):
        prepare_dataset(DataConfig(name=name, root=str(tmp_path / "root")), tmp_path / "out2")


def test_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_1"):
        prepare_dataset(DataConfig(name="cifar10", root=str(tmp_path), verify_checksums=False), tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# MNIST idx files through torchvision


def test_mnist_idx_files_padded(tmp_path: Path) -> None:
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(4)
    xtr, ytr = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8), np.arange(50) % 10
    xte, yte = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 10
    write_idx(raw / "train-images-idx3-ubyte", xtr)
    write_idx(raw / "train-labels-idx1-ubyte", ytr)
    write_idx(raw / "t10k-images-idx3-ubyte", xte)
    write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    meta = prepare_dataset(DataConfig(name="mnist", root=str(tmp_path / "root"), val_fraction=0.2),
                           tmp_path / "out", size_multiple=8)
    p = PreparedData(tmp_path / "out")
    assert p.image_shape == (1, 32, 32)
    assert np.array_equal(p.images("test")[:, 0, 2:30, 2:30], xte) and np.array_equal(p.labels("test"), yte)
    assert meta["class_counts"]["val"] == [1] * 10
    both = np.concatenate([p.images("train"), p.images("val")])[:, :, 2:30, 2:30]
    assert np.array_equal(_rows(both), _rows(xtr[:, None]))
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"MNIST.raw.*t10k-labels-idx1-ubyte"):
        prepare_dataset(DataConfig(name="mnist", root=str(tmp_path / "root")), tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# downsampled ImageNet batches


@pytest.mark.parametrize("fmt", ["pickle", "npz"])
def test_imagenet32_batches(tmp_path: Path, fmt: str) -> None:
    root = tmp_path / "root"
    made = write_imagenet_batches(root, 32, np.random.default_rng(5), [30, 20], 12, fmt=fmt)
    assert sorted(p.name for p in root.iterdir()) == ["Imagenet32_train", "Imagenet32_val"]
    (root / "map_clsloc.txt").write_text("n01 1 tench\nn02 2 goldfish\n")
    meta = prepare_dataset(DataConfig(name="imagenet32", root=str(root), val_fraction=0.0), tmp_path / "out")
    p = PreparedData(tmp_path / "out")
    assert p.num_classes == 1000 and p.class_names[:3] == ["tench", "goldfish", "2"]
    x = np.concatenate([d for d, _ in made["train"]]).reshape(-1, 3, 32, 32)
    y = np.concatenate([lab for _, lab in made["train"]]) - 1  # 1-based in the files
    assert np.array_equal(p.images("train"), x) and np.array_equal(p.labels("train"), y)
    assert np.array_equal(p.images("test"), made["val"][0].reshape(-1, 3, 32, 32))
    assert np.array_equal(p.labels("test"), made["val"][1] - 1)
    assert any("2 of 10" in n for n in meta["notes"])
    # the same files are not 64x64 batches: the message names the file and the expected layout
    with pytest.raises(DataError, match=r"train_data_batch_1.*12288"):
        prepare_dataset(DataConfig(name="imagenet64", root=str(root)), tmp_path / "out64")


def test_imagenet_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_data_batch_1\.\.10 and val_data"):
        prepare_dataset(DataConfig(name="imagenet64", root=str(tmp_path)), tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# ImageFolder


def _png_tree(root: Path, rng: np.random.Generator, per_class: dict[str, int], size: tuple[int, int] = (6, 6),
              odd: bool = False) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    made: dict[str, list[np.ndarray]] = {}
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        made[cls] = []
        for i in range(n):
            hw = (size[0] + (i % 2 if odd else 0), size[1])
            a = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"{i:03d}.png")
            made[cls].append(a)
    return made


def test_imagefolder_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    tr = _png_tree(tmp_path / "src" / "train", rng, {"cat": 5, "dog": 4})
    te = _png_tree(tmp_path / "src" / "test", rng, {"dog": 3})
    meta = prepare_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "src"), val_fraction=0.0),
                           tmp_path / "out", num_workers=2)
    p = PreparedData(tmp_path / "out")
    assert p.class_names == ["cat", "dog"] and p.image_shape == (3, 6, 6)
    want = np.stack(tr["cat"] + tr["dog"]).transpose(0, 3, 1, 2)  # ImageFolder order: class, then file name
    assert np.array_equal(p.images("train"), want)
    assert p.labels("train").tolist() == [0] * 5 + [1] * 4
    assert np.array_equal(p.images("test"), np.stack(te["dog"]).transpose(0, 3, 1, 2))
    assert p.labels("test").tolist() == [1, 1, 1]  # 'dog' keeps the training folder's index
    assert meta["source_splits"] == {"train": "train", "val": "train", "test": "test"}


def test_imagefolder_sizes_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    _png_tree(tmp_path / "src" / "train", rng, {"a": 4, "b": 4}, size=(5, 5), odd=True)
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "src"), val_fraction=0.0, test_fraction=0.25)
    with pytest.raises(DataError, match=r"001\.png.*data.image_size"):
        prepare_dataset(cfg, tmp_path / "out")
    meta = prepare_dataset(DataConfig(**{**cfg.__dict__, "image_size": 4, "channels": 1}), tmp_path / "out")
    assert meta["image_shape"] == [1, 4, 4] and meta["counts"] == {"train": 6, "val": 0, "test": 2}
    with pytest.raises(DataError, match=r"nowhere.train.*folder not found"):
        prepare_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nowhere")), tmp_path / "out")


def test_meta_json_is_complete(digits: PreparedData) -> None:
    meta = json.loads((digits.root / "meta.json").read_text())
    for key in ("name", "num_classes", "class_names", "image_shape", "counts", "class_counts", "source", "notes"):
        assert key in meta
    assert sum(meta["counts"].values()) == 1797
    assert all(sum(v) == meta["counts"][s] for s, v in meta["class_counts"].items())


def test_imagenet_as_imagefolder_is_resized(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    _png_tree(tmp_path / "src" / "train", rng, {"n01": 3, "n02": 3}, size=(40, 48))
    _png_tree(tmp_path / "src" / "val", rng, {"n01": 1, "n02": 2}, size=(36, 36))
    meta = prepare_dataset(DataConfig(name="imagenet32", root=str(tmp_path / "src"), val_fraction=0.0),
                           tmp_path / "out")
    assert meta["image_shape"] == [3, 32, 32]
    # ImageNet's official validation folder is the test split (the paper's "50k for testing")
    assert meta["counts"] == {"train": 6, "val": 0, "test": 3} and meta["class_names"] == ["n01", "n02"]


def test_imagefolder_16bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    """PIL's convert() clips 16-bit grey PNGs at 255; the reader keeps the high byte instead."""
    from PIL import Image

    ramp = np.linspace(0, 65535, 64).reshape(8, 8).astype(np.uint16)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "src" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(ramp if c == "a" else ramp // 2).save(tmp_path / "src" / split / c / f"{i}.png")
    assert Image.open(tmp_path / "src" / "train" / "a" / "0.png").mode == "I;16"
    prepare_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "src"), channels=1), tmp_path / "out")
    d = PreparedData(tmp_path / "out")
    x, y = d.images("test"), d.labels("test")
    assert np.array_equal(x[y == 0][0, 0], (ramp >> 8).astype(np.uint8))  # a ramp 0..255, not 0, 255, 255, ...
    assert d.n_bits == 8


def test_npz_bytes_class_names_are_decoded(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", images=rng.integers(0, 255, (12, 8, 8), dtype=np.uint8),
                 labels=np.arange(12) % 2, class_names=np.array([b"cat", b"dog"]))
    meta = prepare_dataset(DataConfig(name="npz", root=str(tmp_path)), tmp_path / "out")
    assert meta["class_names"] == ["cat", "dog"]


def test_digits_record_their_bit_depth(digits: PreparedData) -> None:
    assert digits.n_bits == 4 and digits.meta["n_bits"] == 4


def test_dataset_title_names_user_data_by_the_run() -> None:
    from nfpi.data import USER_SOURCES, dataset_title

    for src in USER_SOURCES:
        assert dataset_title(src, "glyphs16") == "glyphs16"
        assert dataset_title(src, None) == src
    assert dataset_title("cifar10", "my_run") == "cifar10"  # a known data set keeps its own name


def test_imagefolder_of_grey_files_stays_one_channel(tmp_path: Path) -> None:
    """channels: null keeps the source's channels: grey PNGs are not tripled into RGB copies."""
    from PIL import Image

    rng = np.random.default_rng(9)
    grey = {}
    for c in ("a", "b"):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
        for i in range(4):
            grey[c, i] = rng.integers(0, 256, (6, 6), dtype=np.uint8)
            Image.fromarray(grey[c, i]).save(tmp_path / "src" / "train" / c / f"{i}.png")
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "src"), val_fraction=0.0, test_fraction=0.25)
    meta = prepare_dataset(cfg, tmp_path / "out")
    assert meta["image_shape"] == [1, 6, 6] and any("decoded as L" in n for n in meta["notes"])
    d = PreparedData(tmp_path / "out")
    got = sorted(x.tobytes() for s in ("train", "test") for x in d.images(s)[:, 0])
    assert got == sorted(g.tobytes() for g in grey.values())  # exact pixels, no conversion
    meta3 = prepare_dataset(DataConfig(**{**cfg.__dict__, "channels": 3}), tmp_path / "out3")
    assert meta3["image_shape"] == [3, 6, 6]
    # one colour class makes the folder RGB
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "src" / "train" / "a" / "0.png")
    assert prepare_dataset(cfg, tmp_path / "out_rgb")["image_shape"] == [3, 6, 6]
