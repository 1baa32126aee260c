"""Small datasets written in each source's real on-disk format (shared by the data and workflow tests).

Every writer produces exactly the files the real download holds, so the real loaders
(``nfpi.data``: torchvision's CIFAR / MNIST classes, the downsampled-ImageNet batch reader) read
them unchanged:

* CIFAR-10 / CIFAR-100: the "python version" archive extracted (``cifar-10-batches-py/`` with
  ``data_batch_1..5``, ``test_batch``, ``batches.meta``; ``cifar-100-python/`` with ``train``,
  ``test``, ``meta``): pickled dicts with ``data`` uint8 ``[N, 3072]`` (channel planes) and
  ``labels`` / ``fine_labels``.
* MNIST: the four gunzipped idx files under ``<root>/MNIST/raw/``.
* Downsampled ImageNet 32 / 64: ``train_data_batch_1..10`` and ``val_data`` (pickled dicts, or the
  ``.npz`` variant of the same dicts) with ``data`` uint8 ``[N, 3*H*W]`` and 1-based ``labels``, in
  the official folder names (``Imagenet32_train/``, ``Imagenet32_val/``; ``Imagenet64_train_part1/``
  (batches 1-5), ``Imagenet64_train_part2/`` (6-10), ``Imagenet64_val/``).

Images of a class share a smooth class pattern plus pixel noise (so a classifier can learn them);
labels are balanced and shuffled.  Return values hold what was written, for exact comparisons.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

__all__ = ["class_images", "balanced_labels", "write_cifar", "write_idx", "write_mnist", "write_imagenet_batches"]


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels cycling over ``0..num_classes-1`` (each class ``n // K`` or one more), shuffled."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def class_images(labels: np.ndarray, shape: tuple[int, ...], num_classes: int, seed: int,
                 rng: np.random.Generator, noise: float = 40.0) -> np.ndarray:
    """uint8 images ``[N, *shape]`` (``shape`` = (C, H, W) or (H, W)): a 4x4 class pattern upsampled
    to the image size (fixed by ``seed``, the same in every split) plus Gaussian pixel noise."""
    *c, h, w = shape
    proto_rng = np.random.default_rng(seed)
    protos = proto_rng.uniform(30, 225, (num_classes, *c, 4, 4))
    block = np.ones((-(-h // 4), -(-w // 4)))
    big = np.kron(protos, block)[..., :h, :w]  # [K, *c, H, W]
    x = big[labels] + rng.normal(0.0, noise, (len(labels), *shape))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_cifar(root: Path, name: str, rng: np.random.Generator, n_train: int, n_test: int,
                structured: bool = True) -> dict:
    """torchvision's CIFAR layout under ``root``: ``n_train`` images per training batch file (5 files
    for CIFAR-10, 1 for CIFAR-100) and ``n_test`` in the test file.  ``structured``: class patterns
    (:func:`class_images`); else uniform noise.  Returns ``{"train": [(data, labels)...], "test": [...],
    "names": [...]}`` as written (``data`` uint8 ``[n, 3072]``)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    k = 10 if name == "cifar10" else 100
    key = "labels" if name == "cifar10" else "fine_labels"
    folder = Path(root) / cls.base_folder
    folder.mkdir(parents=True)
    made: dict = {"train": [], "test": []}
    for split, files, n in (("train", cls.train_list, n_train), ("test", cls.test_list, n_test)):
        for fname, _ in files:
            labels = balanced_labels(n, k, rng)
            if structured:
                data = class_images(labels, (3, 32, 32), k, 0, rng).reshape(n, 3072)
            else:
                data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            entry = {"data": data, key: labels.tolist(), "batch_label": fname}
            if name == "cifar100":
                entry["coarse_labels"] = (labels // 5).tolist()
            with open(folder / fname, "wb") as fh:
                pickle.dump(entry, fh)
            made[split].append((data, labels.tolist()))
    names = [f"class{i}" for i in range(k)]
    with open(folder / cls.meta["filename"], "wb") as fh:
        pickle.dump({cls.meta["key"]: names}, fh)
    made["names"] = names
    return made


def write_idx(path: Path, arr: np.ndarray) -> None:
    """One idx file (the MNIST format: magic 0x08 0x<ndim>, big-endian sizes, uint8 payload)."""
    header = struct.pack(">I", 0x0800 + arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    Path(path).write_bytes(header + arr.astype(np.uint8).tobytes())


def write_mnist(root: Path, rng: np.random.Generator, n_train: int, n_test: int) -> dict:
    """The four idx files under ``root/MNIST/raw/`` (28x28, 10 balanced classes)."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True)
    made = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        y = balanced_labels(n, 10, rng)
        x = class_images(y, (28, 28), 10, 0, rng)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        made[split] = (x, y)
    return made


def write_imagenet_batches(root: Path, size: int, rng: np.random.Generator, n_train: list[int], n_val: int,
                           fmt: str = "pickle", num_classes: int = 1000) -> dict:
    """Downsampled-ImageNet batches under ``root`` in the official folders: one
    ``train_data_batch_<i>`` per entry of ``n_train`` (its image count) and ``val_data`` with
    ``n_val`` images; ``fmt`` ``"pickle"`` (the original files) or ``"npz"``.  Labels are 1-based
    and balanced over ``num_classes`` (the training batches together, and ``val_data``).  Returns ``{"train": [(data, labels_1based)...], "val": (...)}``."""
    root = Path(root)
    d = 3 * size * size

    def folder_for(i: int | None) -> Path:
        if i is None:
            return root / f"Imagenet{size}_val"
        if size == 64:  # the 64x64 training set comes as two archives of five batches each
            return root / f"Imagenet64_train_part{1 if i <= 5 else 2}"
        return root / f"Imagenet{size}_train"

    def write(path: Path, entry: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "npz":
            np.savez(path.with_name(path.name + ".npz"), **entry)
        else:
            path.write_bytes(pickle.dumps(entry))

    made: dict = {"train": []}
    # balanced over all batches together (each batch alone may hold fewer images than classes)
    y_all = np.split(balanced_labels(sum(n_train), num_classes, rng), np.cumsum(n_train)[:-1])
    for i, (n, y) in enumerate(zip(n_train, y_all), start=1):
        data = class_images(y, (3, size, size), num_classes, 0, rng).reshape(n, d)
        write(folder_for(i) / f"train_data_batch_{i}", {"data": data, "labels": (y + 1).tolist(),
                                                         "mean": data.mean(0)})
        made["train"].append((data, y + 1))
    y = balanced_labels(n_val, num_classes, rng)
    data = class_images(y, (3, size, size), num_classes, 0, rng).reshape(n_val, d)
    write(folder_for(None) / "val_data", {"data": data, "labels": (y + 1).tolist()})
    made["val"] = (data, y + 1)
    return made
