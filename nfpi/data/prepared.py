"""Datasets: every source becomes one prepared on-disk format that all later stages read.

Sources (``DataConfig.name``):

* ``digits``: scikit-learn's bundled 8x8 digits (1797 images, no download); the embedded default.
* ``mnist``, ``cifar10``, ``cifar100``: through torchvision's own dataset classes (download where the
  machine can, or a local ``root`` in torchvision's layout).
* ``imagenet32``, ``imagenet64``: the downsampled-ImageNet batch files (``train_data_batch_1..10``
  and ``val_data``: pickled or ``.npz`` dicts with ``'data'`` uint8 ``[N, 3*H*W]`` and 1-based
  ``'labels'``), or an ImageFolder with ``train/`` and ``val/``.
* ``npz``: the user's own data, one ``.npz`` per split with ``images`` and ``labels``.
* ``imagefolder``: the user's own data, ``train/<class>/*.png`` (+ ``test/``, optional ``val/``).

The prepared format (written by :func:`prepare_dataset`, read by :class:`PreparedData`):
``{train,val,test}_images.npy`` uint8 ``[N, C, H, W]``, ``{split}_labels.npy`` int64 ``[N]`` and
``meta.json``.  Pixels stay uint8 end to end: the flow dequantises them itself (uniform noise,
``nfpi.density``), and a float copy of ImageNet64 would not fit in memory.  Large sources are
streamed in chunks into ``np.lib.format.open_memmap`` files.

Splits.  Hyperparameters are chosen on ``val``, carved from the training data (stratified, seeded
by ``split_seed``); ``test`` only serves the reported numbers (the paper's Tables 1-6 report test
accuracy).  Sources without an official test split (digits; ``npz``/``imagefolder`` without a test
part) get a fixed stratified test split carved first.

Crash safety: ``meta.json`` is deleted before anything is written and written last; every array
file is written through :func:`nfpi.io.atomic_path`.  A killed job therefore never leaves a folder
that :class:`PreparedData` would accept as complete.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfpi.data.config import SPLITS, DataConfig, DataError, DatasetName
from nfpi.io import atomic_path, atomic_write_json, read_json
from nfpi.progress import progress

# The public names are listed once, in nfpi.data.__all__ (the package loads this module on first use of one).

log = logging.getLogger(__name__)

META_FILE = "meta.json"
FORMAT = "nfpi-prepared-data"
FORMAT_VERSION = 1
CHUNK_ROWS = 4096  # images per streamed chunk: ~50 MB at 64x64x3, small enough for any node


# --------------------------------------------------------------------------------------------
# Sources: labels up front (the split needs them), pixels streamed for the selected indices only.


@dataclass
class _Part:
    """One split of a source as it comes (``train``, or the official ``test``/``val``)."""

    labels: np.ndarray  # int64 [N], already mapped to 0..K-1
    read: Callable[[np.ndarray], Iterator[np.ndarray]]  # sorted indices -> uint8 [n, C, H, W] chunks in order
    origin: str  # the file/folder it comes from, for messages and meta.json


@dataclass
class _Source:
    description: str
    class_names: list[str]
    image_shape: tuple[int, int, int]  # C, H, W as read (before channel/size conversion)
    parts: dict[str, _Part]
    notes: list[str] = field(default_factory=list)
    n_bits: int = 8  # bit depth of the source's pixel values (what the flow should model; meta.json records it)


def _array_reader(images: np.ndarray, channels_last: bool) -> Callable[[np.ndarray], Iterator[np.ndarray]]:
    """Reader over an in-memory (or memmapped) array ``[N,H,W,C]`` / ``[N,C,H,W]``."""

    def read(idx: np.ndarray) -> Iterator[np.ndarray]:
        for s in range(0, len(idx), CHUNK_ROWS):
            x = np.asarray(images[idx[s : s + CHUNK_ROWS]])
            if channels_last:
                x = x.transpose(0, 3, 1, 2)
            yield np.ascontiguousarray(x, dtype=np.uint8)

    return read


def _need_root(cfg: DataConfig) -> Path:
    if cfg.root is None:
        raise DataError(f"data.root is not set: the '{cfg.name}' source needs the folder holding its files "
                        "(see docs/data.md for the expected layout)")
    return Path(cfg.root).expanduser()


def _source_digits(cfg: DataConfig) -> _Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 17 grey levels (0..16) stored as 16 v (16 -> 255) in uint8, like every other source.  Level v
    # then lies in bin v of 4-bit data (the default config's pretrain.n_bits: 4), and only the two
    # saturated levels 15 and 16 share a bin; 8-bit modelling would put 17 spikes 16 bins apart.
    images = np.minimum(d.images * 16.0, 255.0).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    return _Source(
        description="scikit-learn load_digits (UCI optical digits, 8x8, 1797 images; no official test split)",
        class_names=[str(c) for c in d.target_names],
        image_shape=(1, 8, 8),
        parts={"train": _Part(labels, _array_reader(images, channels_last=False), "sklearn.datasets.load_digits")},
        notes=["digits: grey levels 0..16 stored as min(16 v, 255); modelled as 4-bit data"],
        n_bits=4,
    )


def _unverified(cls: type) -> type:
    """A torchvision CIFAR class that only checks its files exist (``verify_checksums: false``).

    torchvision's ``check_integrity(path, md5=None)`` is a plain existence check, so clearing the
    md5 sums keeps torchvision's own loading code while accepting locally made copies.
    """
    return type(
        f"Unverified{cls.__name__}",
        (cls,),
        {
            "train_list": [[f, None] for f, _ in cls.train_list],
            "test_list": [[f, None] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


def _source_cifar(cfg: DataConfig) -> _Source:
    root = _need_root(cfg)
    from torchvision import datasets

    base = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
    cls = base if cfg.verify_checksums else _unverified(base)
    folder = root / base.base_folder
    parts: dict[str, _Part] = {}
    classes: list[str] = []
    for split, train in (("train", True), ("test", False)):
        files = [f for f, _ in (base.train_list if train else base.test_list)]
        try:
            ds = cls(str(root), train=train, download=cfg.download and train)
        except (RuntimeError, OSError, pickle.UnpicklingError, KeyError, EOFError) as exc:
            hint = (" The md5 sums did not match torchvision's: for a locally made copy set "
                    "data.verify_checksums: false." if cfg.verify_checksums and folder.is_dir() else "")
            raise DataError(
                f"{folder}: CIFAR ({cfg.name}) files missing or malformed ({exc}). Expected the python "
                f"pickle batches {files + [base.meta['filename']]} (the 'python version' archive from "
                f"{base.url}, extracted), or data.download: true.{hint}"
            ) from None
        data = np.asarray(ds.data)
        if data.ndim != 4 or data.shape[1:] != (32, 32, 3):
            raise DataError(f"{folder}: CIFAR batches decode to shape {data.shape}, expected [N, 32, 32, 3]")
        parts[split] = _Part(np.asarray(ds.targets, dtype=np.int64), _array_reader(data, channels_last=True),
                             str(folder))
        classes = list(ds.classes)
    return _Source(
        description=f"torchvision {base.__name__} ({folder})",
        class_names=classes,
        image_shape=(3, 32, 32),
        parts=parts,
    )


def _source_mnist(cfg: DataConfig) -> _Source:
    root = _need_root(cfg)
    from torchvision import datasets

    parts: dict[str, _Part] = {}
    classes: list[str] = []
    for split, train in (("train", True), ("test", False)):
        try:
            ds = datasets.MNIST(str(root), train=train, download=cfg.download and train)
        except (RuntimeError, OSError, AssertionError, TypeError, ValueError) as exc:
            raise DataError(
                f"{root / 'MNIST' / 'raw'}: MNIST files missing or malformed ({exc!r}). Expected the idx files "
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
                "(gunzipped) under <root>/MNIST/raw/, or data.download: true."
            ) from None
        images = ds.data.numpy()
        if images.ndim != 3:
            raise DataError(f"{ds.raw_folder}: MNIST images decode to shape {images.shape}, expected [N, H, W]")
        parts[split] = _Part(ds.targets.numpy().astype(np.int64), _array_reader(images[:, None], False),
                             str(ds.raw_folder))
        classes = list(ds.classes)
    return _Source(
        description=f"torchvision MNIST ({root / 'MNIST' / 'raw'})",
        class_names=classes,
        image_shape=(1,) + tuple(int(s) for s in images.shape[1:]),  # type: ignore[arg-type]
        parts=parts,
    )


# ---- downsampled ImageNet -----------------------------------------------------------------


def _load_batch(path: Path) -> dict[str, Any]:
    """One downsampled-ImageNet batch (pickle or ``.npz``), with 'data' and 'labels'."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in ("data", "labels")}
        else:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="latin1")  # the official files were pickled by Python 2
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read downsampled-ImageNet batch ({exc!r}); expected a pickled or .npz "
                        "dict with 'data' (uint8 [N, 3*H*W]) and 'labels' (1-based)") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        keys = list(d) if isinstance(d, dict) else type(d).__name__
        raise DataError(f"{path}: expected a dict with keys 'data' and 'labels', found {keys}")
    return d


def _find_batches(root: Path, stem: str) -> list[Path]:
    """Files ``stem`` / ``stem.npz`` in ``root`` or one folder below (Imagenet32_train/, ...)."""
    found: list[Path] = []
    for folder in [root] + sorted(p for p in root.iterdir() if p.is_dir()):
        for name in (stem, stem + ".npz"):
            if (folder / name).is_file():
                found.append(folder / name)
    return found


def _imagenet_labels(path: Path, raw: Any) -> np.ndarray:
    y = np.asarray(raw).astype(np.int64).reshape(-1) - 1  # the files use 1-based labels
    if y.size and (y.min() < 0 or y.max() >= 1000):
        raise DataError(f"{path}: labels range {y.min() + 1}..{y.max() + 1}; expected 1-based labels in 1..1000")
    return y


def _source_imagenet_batches(cfg: DataConfig, root: Path, size: int) -> _Source:
    train_files: list[Path] = []
    for i in range(1, 11):
        hits = _find_batches(root, f"train_data_batch_{i}")
        if hits:
            train_files.append(hits[0])
    val_hits = _find_batches(root, "val_data")
    if not train_files or not val_hits:
        raise DataError(
            f"{root}: downsampled ImageNet ({cfg.name}) files not found. Expected train_data_batch_1..10 and "
            "val_data (pickled or .npz dicts with 'data' uint8 [N, 3*H*W] and 1-based 'labels', from "
            "https://image-net.org/download-images, 'Downsampled ImageNet'), in root or one folder below; "
            "or an ImageFolder with train/ and val/"
        )
    d = 3 * size * size

    def scan(files: list[Path]) -> tuple[np.ndarray, list[int]]:
        # pass 1: labels only (the stratified split needs them before any pixel is placed)
        ys, lens = [], []
        for f in files:
            b = _load_batch(f)
            data = np.asarray(b["data"]) if f.suffix == ".npz" else b["data"]
            if data.ndim != 2 or data.shape[1] != d or data.dtype != np.uint8:
                raise DataError(f"{f}: 'data' has shape {data.shape} dtype {data.dtype}; {cfg.name} expects "
                                f"uint8 [N, {d}] (3 x {size} x {size}, channel planes)")
            y = _imagenet_labels(f, b["labels"])
            if len(y) != len(data):
                raise DataError(f"{f}: {len(data)} images but {len(y)} labels")
            ys.append(y)
            lens.append(len(y))
            del b, data
        return np.concatenate(ys), lens

    def reader(files: list[Path], lens: list[int]) -> Callable[[np.ndarray], Iterator[np.ndarray]]:
        offsets = np.cumsum([0] + lens)

        def read(idx: np.ndarray) -> Iterator[np.ndarray]:
            # pass 2: one batch file in memory at a time (1.5 GB for ImageNet64)
            for f, lo, hi in zip(files, offsets[:-1], offsets[1:]):
                sel = idx[(idx >= lo) & (idx < hi)] - lo
                if sel.size == 0:
                    continue
                data = _load_batch(f)["data"]
                for s in range(0, len(sel), CHUNK_ROWS):
                    yield np.ascontiguousarray(data[sel[s : s + CHUNK_ROWS]].reshape(-1, 3, size, size))
                del data

        return read

    y_tr, len_tr = scan(train_files)
    y_te, len_te = scan(val_hits[:1])
    names = [str(i) for i in range(1000)]
    mapfile = next((p for p in [root / "map_clsloc.txt", *root.glob("*/map_clsloc.txt")] if p.is_file()), None)
    if mapfile is not None:  # "n02119789 1 kit_fox": wnid, 1-based index, name
        for line in mapfile.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].isdigit() and 1 <= int(parts[1]) <= 1000:
                names[int(parts[1]) - 1] = parts[2]
    notes = [] if len(train_files) == 10 else [f"only {len(train_files)} of 10 training batches found"]
    return _Source(
        description=f"downsampled ImageNet {size}x{size} batches ({root})",
        class_names=names,
        image_shape=(3, size, size),
        parts={
            "train": _Part(y_tr, reader(train_files, len_tr), ", ".join(str(f) for f in train_files)),
            # the official ImageNet validation set is the paper's test set ("50k for testing")
            "test": _Part(y_te, reader(val_hits[:1], len_te), str(val_hits[0])),
        },
        notes=notes,
    )


# ---- ImageFolder ----------------------------------------------------------------------------


def _folder_reader(
    paths: list[str], cfg: DataConfig, size: tuple[int, int], num_workers: int, channels: int
) -> Callable[[np.ndarray], Iterator[np.ndarray]]:
    """Decode images (threads: PIL releases the GIL while decoding), convert and size them."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    h, w = size

    def open_8bit(path: str) -> Any:
        # PIL directly, not torchvision's loader: that converts to RGB first, clipping 16-bit images
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img.load()
        if img.mode.startswith("I;16") or img.mode == "I":
            # PIL's convert() clips 16-bit values at 255 instead of rescaling: keep the high byte instead
            arr = np.asarray(img, dtype=np.int64)
            shift = 8 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 0
            img = Image.fromarray((np.clip(arr, 0, 65535) >> shift).astype(np.uint8), "L")
        return img

    def load(i: int) -> np.ndarray:
        try:
            img = open_8bit(paths[i]).convert(mode)
        except (OSError, ValueError) as exc:
            raise DataError(f"{paths[i]}: cannot decode image ({exc})") from None
        if cfg.image_size is not None and img.size != (w, h):
            smaller = img.size[0] >= w and img.size[1] >= h
            img = img.resize((w, h), Image.Resampling.BOX if smaller else Image.Resampling.BICUBIC)
        elif img.size != (w, h):
            raise DataError(f"{paths[i]}: image is {img.size[0]}x{img.size[1]} but the first one is {w}x{h}; "
                            "set data.image_size to resize all images to one square size")
        a = np.asarray(img, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def read(idx: np.ndarray) -> Iterator[np.ndarray]:
        pool = concurrent.futures.ThreadPoolExecutor(num_workers) if num_workers > 1 else None
        try:
            for s in range(0, len(idx), CHUNK_ROWS // 4):
                chunk = idx[s : s + CHUNK_ROWS // 4].tolist()
                imgs = list(pool.map(load, chunk)) if pool else [load(i) for i in chunk]
                yield np.stack(imgs)
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)

    return read


_GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def _is_grey_file(path: str) -> bool:
    """Whether the image file at ``path`` is greyscale by its mode (PIL reads only the header)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in _GREY_MODES
    except OSError as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None


def _source_imagefolder(cfg: DataConfig, root: Path, num_workers: int, *, imagenet: bool = False) -> _Source:
    from PIL import Image
    from torchvision import datasets

    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(f"{train_dir}: folder not found. An ImageFolder source needs {root}/train/<class>/<image> "
                        f"(+ {'val' if imagenet else 'test'}/<class>/<image>); see docs/data.md")

    def open_folder(d: Path) -> datasets.ImageFolder:
        try:
            return datasets.ImageFolder(str(d))
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{d}: not a usable ImageFolder ({exc}); expected <class>/<image>.(png|jpg|...)") from None

    train = open_folder(train_dir)
    classes = list(train.classes)
    # the official ImageNet validation set is the paper's test set; for user data val/ is validation
    folders = {"test": "val"} if imagenet else {"test": "test", "val": "val"}
    parts_ds = {"train": train}
    for split, sub in folders.items():
        if (root / sub).is_dir():
            parts_ds[split] = open_folder(root / sub)
    if imagenet and "test" not in parts_ds:
        raise DataError(f"{root / 'val'}: folder not found; ImageNet as an ImageFolder needs train/ and val/")

    if cfg.image_size is not None:
        size = (cfg.image_size, cfg.image_size)
    else:
        with Image.open(train.samples[0][0]) as im:
            size = (im.size[1], im.size[0])
    if cfg.channels is not None:
        channels = cfg.channels
    elif imagenet:
        channels = 3
    else:
        # null keeps the source's channels: grey files stay one channel (decoding them as RGB would triple
        # the flow's dimension with copies).  The first file of every class decides (headers only).
        first = {}
        for p, y in train.samples:
            first.setdefault(y, p)
        channels = 1 if all(_is_grey_file(p) for p in first.values()) else 3
    parts: dict[str, _Part] = {}
    for split, ds in parts_ds.items():
        unknown = sorted(set(ds.classes) - set(classes))
        if unknown:
            raise DataError(f"{root / ('train' if split == 'train' else folders[split])}: classes {unknown[:5]} "
                            f"do not occur in {train_dir}; every class needs training images")
        remap = np.asarray([classes.index(c) for c in ds.classes], dtype=np.int64)
        labels = remap[np.asarray(ds.targets, dtype=np.int64)] if len(ds.targets) else np.zeros(0, np.int64)
        parts[split] = _Part(labels, _folder_reader([p for p, _ in ds.samples], cfg, size, num_workers, channels),
                             str(Path(ds.root)))
    return _Source(
        description=f"torchvision ImageFolder ({root})",
        class_names=classes,
        image_shape=(channels, *size),
        parts=parts,
        notes=[f"images decoded as {'L' if channels == 1 else 'RGB'}"
               + (" (the first file of every class is greyscale)" if cfg.channels is None and channels == 1 else "")
               + (f", resized to {size[0]}x{size[1]} while loading" if cfg.image_size is not None else "")],
    )


def _source_imagenet(cfg: DataConfig, num_workers: int) -> _Source:
    root = _need_root(cfg)
    size = 32 if cfg.name == "imagenet32" else 64
    if cfg.download:
        log.warning("data.download is ignored for %s: the downsampled-ImageNet files need an image-net.org login; "
                    "download them by hand into %s", cfg.name, root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (data.root for {cfg.name}); see docs/data.md")
    if (root / "train").is_dir() and not _find_batches(root, "train_data_batch_1"):
        src = _source_imagefolder(dataclasses.replace(cfg, image_size=cfg.image_size or size), root, num_workers,
                                  imagenet=True)
        src.description = f"ImageNet ImageFolder resized to {src.image_shape[1]}x{src.image_shape[2]} ({root})"
        return src
    return _source_imagenet_batches(cfg, root, size)


# ---- user .npz ------------------------------------------------------------------------------

_NPZ_FORMAT = ("an .npz with 'images' (uint8, N x H x W or N x H x W x C with C in {1, 3}) and 'labels' "
               "(integers, N), optionally 'class_names' (strings indexed by label)")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {_NPZ_FORMAT}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing} (found {z.files}); expected {_NPZ_FORMAT}")
            images, labels = z["images"], z["labels"]
            names = ([s.decode() if isinstance(s, bytes) else str(s) for s in z["class_names"].tolist()]
                     if "class_names" in z.files else None)  # bytes names (h5py, dtype S) decoded
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # a truncated archive is a BadZipFile
        raise DataError(f"{path}: not a readable .npz ({exc}); expected {_NPZ_FORMAT}") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{path}: 'images' has shape {images.shape}; expected {_NPZ_FORMAT}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.integer) or (images.size and (images.min() < 0 or images.max() > 255)):
            raise DataError(f"{path}: 'images' is {images.dtype}; expected uint8 pixels 0..255 "
                            "(convert floats in [0, 1] with (x * 255).round().astype(np.uint8))")
        images = images.astype(np.uint8)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
        raise DataError(f"{path}: 'labels' has shape {labels.shape} dtype {labels.dtype}; expected "
                        f"{len(images)} integer labels (one per image)")
    return images, labels.astype(np.int64), names


def _source_npz(cfg: DataConfig) -> _Source:
    root = _need_root(cfg)
    raw = {"train": _load_npz(root / "train.npz")}
    for split in ("val", "test"):
        if (root / f"{split}.npz").exists():
            raw[split] = _load_npz(root / f"{split}.npz")
    shape = raw["train"][0].shape[1:]
    for split, (im, _, _) in raw.items():
        if im.shape[1:] != shape:
            raise DataError(f"{root / f'{split}.npz'}: images are {im.shape[1:]} but train.npz has {shape} (H, W, C); "
                            "all splits need one image size")
    # labels may be any integers: classes are the sorted distinct training labels
    values = np.unique(raw["train"][1])
    names = raw["train"][2]
    if names is not None and (values.min() < 0 or values.max() >= len(names)):
        raise DataError(f"{root / 'train.npz'}: 'class_names' has {len(names)} entries but labels range "
                        f"{values.min()}..{values.max()}; class_names must be indexed by label")
    class_names = [names[v] for v in values] if names is not None else [str(v) for v in values]
    parts: dict[str, _Part] = {}
    for split, (im, y, _) in raw.items():
        pos = np.searchsorted(values, y)
        bad = (pos >= len(values)) | (values[np.minimum(pos, len(values) - 1)] != y)
        if bad.any():
            raise DataError(f"{root / f'{split}.npz'}: labels {sorted(set(y[bad].tolist()))[:5]} do not occur in "
                            "train.npz; every class needs training images")
        parts[split] = _Part(pos.astype(np.int64), _array_reader(im, channels_last=True), str(root / f"{split}.npz"))
    return _Source(
        description=f"user .npz files ({root})",
        class_names=class_names,
        image_shape=(shape[2], shape[0], shape[1]),
        parts=parts,
    )


def _open_source(cfg: DataConfig, num_workers: int) -> _Source:
    if cfg.name == "digits":
        return _source_digits(cfg)
    if cfg.name in ("cifar10", "cifar100"):
        return _source_cifar(cfg)
    if cfg.name == "mnist":
        return _source_mnist(cfg)
    if cfg.name in ("imagenet32", "imagenet64"):
        return _source_imagenet(cfg, num_workers)
    if cfg.name == "npz":
        return _source_npz(cfg)
    if cfg.name == "imagefolder":
        root = _need_root(cfg)
        return _source_imagefolder(cfg, root, num_workers)
    raise DataError(f"data.name={cfg.name!r}: unknown source; one of {DatasetName.__args__}")  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Splits


def _within_class_rank(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """A random rank of each item within its class (0 = first), vectorised (no per-class loop)."""
    n = len(labels)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, random within a class
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(starts, counts)
    return rank


def stratified_carve(labels: np.ndarray, num_classes: int, fraction: float, seed: int | list[int]) -> np.ndarray:
    """Boolean mask of a stratified random ``fraction`` of ``labels`` (True = carved out).

    Per-class counts follow the largest-remainder rule, so the total is ``round(fraction * N)``
    and each class gets ``floor`` or ``ceil`` of its share; a class keeps at least one item on
    the uncarved side (a class with no training image could not get a Gaussian).
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    exact = fraction * counts
    take = np.floor(exact).astype(np.int64)
    extra = int(round(fraction * len(labels))) - int(take.sum())
    if extra > 0:
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:extra]] += 1
    take = np.minimum(take, np.maximum(counts - 1, 0))
    rank = _within_class_rank(labels, num_classes, np.random.default_rng(seed))
    return rank < take[labels]


def _cap_per_class(labels: np.ndarray, num_classes: int, cap: int | None, seed: list[int]) -> np.ndarray:
    """Boolean keep-mask of at most ``cap`` random items per class."""
    if cap is None:
        return np.ones(len(labels), dtype=bool)
    return _within_class_rank(labels, num_classes, np.random.default_rng(seed)) < cap


def _plan_splits(src: _Source, cfg: DataConfig) -> dict[str, tuple[str, np.ndarray]]:
    """For each output split: (source part, sorted indices into it).  Seeds are separate streams."""
    k = len(src.class_names)
    seed = cfg.split_seed
    y = src.parts["train"].labels
    pool = np.arange(len(y))
    plan: dict[str, tuple[str, np.ndarray]] = {}
    if "test" in src.parts:
        yt = src.parts["test"].labels
        plan["test"] = ("test", np.flatnonzero(_cap_per_class(yt, k, cfg.max_test_per_class, [seed, 3])))
    else:
        is_test = stratified_carve(y, k, cfg.test_fraction, [seed, 0])
        test = pool[is_test]
        test = test[_cap_per_class(y[test], k, cfg.max_test_per_class, [seed, 3])]
        plan["test"] = ("train", test)
        pool = pool[~is_test]
    pool = pool[_cap_per_class(y[pool], k, cfg.max_train_per_class, [seed, 2])]
    if "val" in src.parts:
        plan["val"] = ("val", np.arange(len(src.parts["val"].labels)))
        plan["train"] = ("train", pool)
    else:
        is_val = stratified_carve(y[pool], k, cfg.val_fraction, [seed, 1])
        plan["val"] = ("train", pool[is_val])
        plan["train"] = ("train", pool[~is_val])
    return {s: plan[s] for s in SPLITS}


# --------------------------------------------------------------------------------------------
# Pixel conversion (per chunk, uint8 in and out)


def _to_channels(x: np.ndarray, c: int) -> np.ndarray:
    if x.shape[1] == c:
        return x
    if c == 3:
        return np.repeat(x, 3, axis=1)
    # ITU-R 601-2 luma, as PIL's convert("L"), in integer arithmetic (exact and uint8 end to end)
    w = np.asarray([299, 587, 114], dtype=np.uint32)
    return ((np.tensordot(w, x.astype(np.uint32), axes=([0], [1])) + 500) // 1000).astype(np.uint8)[:, None]


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize uint8 ``[n, C, H, W]`` with PIL (box filter when shrinking, bicubic when enlarging)."""
    from PIL import Image

    if x.shape[2:] == (h, w):
        return x
    shrink = x.shape[2] >= h and x.shape[3] >= w
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    out = np.empty((x.shape[0], x.shape[1], h, w), dtype=np.uint8)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):  # one 'L' image per channel keeps any channel count exact
            out[i, c] = np.asarray(Image.fromarray(x[i, c]).resize((w, h), resample))
    return out


def _pad(x: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - x.shape[2], w - x.shape[3]
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


@dataclass(frozen=True)
class _Conversion:
    channels: int
    resize_to: tuple[int, int] | None
    pad_to: tuple[int, int] | None
    out_shape: tuple[int, int, int]
    notes: tuple[str, ...]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = _to_channels(x, self.channels)
        if self.resize_to is not None:
            x = _resize(x, *self.resize_to)
        if self.pad_to is not None:
            x = _pad(x, *self.pad_to)
        return np.ascontiguousarray(x)


def _plan_conversion(in_shape: tuple[int, int, int], cfg: DataConfig, size_multiple: int) -> _Conversion:
    c, h, w = in_shape
    notes: list[str] = []
    out_c = cfg.channels or c
    if out_c != c:
        notes.append(f"converted {c} -> {out_c} channels" + (" (ITU-R 601 luma)" if out_c == 1 else ""))
    resize_to = None
    if cfg.image_size is not None and (h, w) != (cfg.image_size, cfg.image_size):
        resize_to = (cfg.image_size, cfg.image_size)
        notes.append(f"resized {h}x{w} -> {cfg.image_size}x{cfg.image_size} (data.image_size)")
        h, w = resize_to
    pad_to = None
    m = int(size_multiple)
    if m < 1:
        raise DataError(f"size_multiple={m}: must be a positive integer (2**levels of the flow)")
    if h % m or w % m:
        th, tw = -(-h // m) * m, -(-w // m) * m
        if cfg.resize_mode == "pad":
            pad_to = (th, tw)
            what = f"zero-padded {h}x{w} -> {th}x{tw} (centred)"
        else:
            resize_to = (th, tw)
            what = f"resized {h}x{w} -> {th}x{tw}"
        msg = (f"{what}: the flow squeezes H and W {m.bit_length() - 1} times, so they must be multiples of "
               f"{m} (data.resize_mode={cfg.resize_mode!r}; set data.image_size to choose the size yourself)")
        log.warning(msg)
        notes.append(msg)
        h, w = th, tw
    return _Conversion(out_c, resize_to, pad_to, (out_c, h, w), tuple(notes))


# --------------------------------------------------------------------------------------------
# Writing


def _write_splits(src: _Source, plan: dict[str, tuple[str, np.ndarray]], conv: _Conversion, out: Path) -> None:
    """Stream each source part once and scatter its selected rows into the output memmaps."""
    with contextlib.ExitStack() as stack:
        arrays: dict[str, np.ndarray] = {}
        for split, (_, idx) in plan.items():
            tmp = stack.enter_context(atomic_path(out / f"{split}_images.npy"))
            arrays[split] = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                                      shape=(len(idx), *conv.out_shape))
        for part_name, part in src.parts.items():
            users = [(s, idx) for s, (p, idx) in plan.items() if p == part_name and len(idx)]
            if not users:
                continue
            # one sorted pass over the part; dest[i] = which output split row i goes to
            all_idx = np.concatenate([idx for _, idx in users])
            dest = np.concatenate([np.full(len(idx), j) for j, (_, idx) in enumerate(users)])
            order = np.argsort(all_idx, kind="stable")
            all_idx, dest = all_idx[order], dest[order]
            written = np.zeros(len(users), dtype=np.int64)
            done = 0
            log.info("%s: reading %d images from %s", part_name, len(all_idx), part.origin)
            bar = progress(total=len(all_idx), desc=f"prepare {part_name}", unit="img", logger=log)
            for chunk in part.read(all_idx):
                bar.update(len(chunk))
                chunk = conv(chunk)
                d = dest[done : done + len(chunk)]
                for j, (split, _) in enumerate(users):
                    rows = chunk[d == j]
                    arrays[split][written[j] : written[j] + len(rows)] = rows
                    written[j] += len(rows)
                done += len(chunk)
            bar.close()
            if done != len(all_idx):
                raise DataError(f"{part.origin}: read {done} images but {len(all_idx)} were selected")
        for a in arrays.values():
            if isinstance(a, np.memmap):
                a.flush()
        arrays.clear()  # close the memmaps before atomic_path fsyncs and renames the files


def prepare_dataset(cfg: DataConfig, out_dir: str | os.PathLike[str], *, size_multiple: int = 1,
                    num_workers: int = 0) -> dict[str, Any]:
    """Prepare ``cfg``'s dataset under ``out_dir`` in the on-disk format :class:`PreparedData` reads.

    Writes ``{split}_images.npy`` (uint8 ``[N, C, H, W]``) and ``{split}_labels.npy`` (int64) for
    ``train``, ``val``, ``test``, then ``meta.json`` last (its presence marks completeness).
    ``size_multiple`` (``2**levels`` of the flow) makes H and W divisible: sizes that are not are
    padded or resized (``cfg.resize_mode``) with a logged warning and a note in ``meta.json``.
    ``num_workers`` threads decode ImageFolder images.  Returns the meta dict.
    """
    from nfpi import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a stale meta.json next to files this run is about to replace would mark a half-written folder complete
    (out / META_FILE).unlink(missing_ok=True)

    src = _open_source(cfg, num_workers)
    k = len(src.class_names)
    conv = _plan_conversion(src.image_shape, cfg, size_multiple)
    plan = _plan_splits(src, cfg)
    labels = {s: src.parts[p].labels[idx] for s, (p, idx) in plan.items()}
    empty = [s for s in ("train", "test") if len(labels[s]) == 0]
    if empty:
        raise DataError(f"data ({src.description}): the {empty[0]} split is empty; check data.root and the fractions")
    missing = np.flatnonzero(np.bincount(labels["train"], minlength=k) == 0)
    if missing.size:
        log.warning("%d classes have no training image (e.g. %s); their Gaussians rest on no data",
                    missing.size, [src.class_names[i] for i in missing[:5]])

    log.info("preparing %s -> %s: shape %s -> %s, counts %s", cfg.name, out, src.image_shape, conv.out_shape,
             {s: len(v) for s, v in labels.items()})
    _write_splits(src, plan, conv, out)
    for s, y in labels.items():
        with atomic_path(out / f"{s}_labels.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, y.astype(np.int64))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "nfpi_version": __version__,
        "name": cfg.name,
        "num_classes": k,
        "class_names": src.class_names,
        "image_shape": list(conv.out_shape),
        "source_image_shape": list(src.image_shape),
        "counts": {s: int(len(y)) for s, y in labels.items()},
        "class_counts": {s: np.bincount(y, minlength=k).tolist() for s, y in labels.items()},
        "source": src.description,
        "source_splits": {s: plan[s][0] for s in SPLITS},
        "size_multiple": int(size_multiple),
        "n_bits": int(src.n_bits),
        "notes": [*src.notes, *conv.notes],
        "config": dataclasses.asdict(cfg),
    }
    atomic_write_json(out / META_FILE, meta)
    return meta


# --------------------------------------------------------------------------------------------
# Reading


class _ImageDataset(torch.utils.data.Dataset):
    """(uint8 tensor [C, H, W], int label) pairs over a prepared split; picklable for workers."""

    def __init__(self, images_path: Path, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.images_path = images_path
        self.labels = labels
        self.transform = transform
        self._images: np.ndarray | None = None  # opened lazily: each DataLoader worker maps its own view

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        x = torch.from_numpy(np.array(self._images[i]))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}


class PreparedData:
    """Reader of a folder written by :func:`prepare_dataset` (uint8 memmaps, int64 labels, meta)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        meta_path = self.root / META_FILE
        if not meta_path.is_file():
            raise DataError(f"{self.root}: no {META_FILE}, so this is not a complete prepared dataset (a prepare "
                            "job may have been killed midway); run the prepare stage (python -m nfpi prepare)")
        try:
            self.meta: dict[str, Any] = read_json(meta_path)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{meta_path}: not an nfpi prepared-data meta file (format={self.meta.get('format')!r}); "
                            "rerun the prepare stage")
        self.num_classes: int = int(self.meta["num_classes"])
        self.image_shape: tuple[int, int, int] = tuple(int(s) for s in self.meta["image_shape"])  # type: ignore[assignment]
        self.class_names: list[str] = list(self.meta["class_names"])
        # the source's bit depth: what `pretrain.n_bits: null` models (files from before it was recorded: 8)
        self.n_bits: int = int(self.meta.get("n_bits", 8))
        self._labels: dict[str, np.ndarray] = {}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise DataError(f"split {split!r}: expected one of {SPLITS}")

    def images(self, split: str) -> np.ndarray:
        """Read-only uint8 memmap ``[N, C, H, W]`` of ``split``."""
        self._check_split(split)
        path = self.root / f"{split}_images.npy"
        try:
            x = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read prepared images ({exc}); rerun the prepare stage") from None
        expected = (int(self.meta["counts"][split]), *self.image_shape)
        if x.dtype != np.uint8 or x.shape != expected:
            raise DataError(f"{path}: {x.dtype} {x.shape}, but meta.json says uint8 {expected}; rerun the prepare stage")
        return x

    def labels(self, split: str) -> np.ndarray:
        """int64 labels ``[N]`` of ``split`` (in ``0..num_classes-1``)."""
        self._check_split(split)
        if split not in self._labels:
            path = self.root / f"{split}_labels.npy"
            try:
                y = np.load(path)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read prepared labels ({exc}); rerun the prepare stage") from None
            if y.dtype != np.int64 or y.shape != (int(self.meta["counts"][split]),):
                raise DataError(f"{path}: {y.dtype} {y.shape} does not match meta.json; rerun the prepare stage")
            self._labels[split] = y
        return self._labels[split]

    def dataset(self, split: str,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.utils.data.Dataset:
        """A torch Dataset of ``(uint8 tensor [C, H, W], int)``; ``transform`` maps the image tensor."""
        self.images(split)  # validate now rather than inside a DataLoader worker
        return _ImageDataset(self.root / f"{split}_images.npy", self.labels(split), transform)

    def __repr__(self) -> str:
        return (f"PreparedData({str(self.root)!r}, name={self.meta.get('name')!r}, K={self.num_classes}, "
                f"shape={self.image_shape}, counts={self.meta.get('counts')})")
