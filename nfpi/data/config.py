"""The ``data`` config slice, the split names and the data's title, without torch (the workflow's DAG and
the config check read them here).  The sources ``DataConfig.name`` names, their layouts and the prepared
format are described in :mod:`nfpi.data.prepared`, which reads them.

    >>> DataConfig(name="npz", root="my_data").val_fraction
    0.1
    >>> dataset_title("npz", "glyphs")
    'glyphs'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nfpi.errors import DataError  # re-exported: DataConfig's checks raise it

__all__ = ["DataConfig", "DataError", "DatasetName", "SPLITS", "USER_SOURCES", "dataset_title"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")
DatasetName = Literal["digits", "mnist", "cifar10", "cifar100", "imagenet32", "imagenet64", "npz", "imagefolder"]

USER_SOURCES: tuple[str, ...] = ("npz", "imagefolder")  # formats, not data sets: the run names the data


def dataset_title(name: str, run: str | None) -> str:
    """How tables and figures name the data: the source for a known data set (``cifar10``), the run's
    name for a user's own data (``npz`` and ``imagefolder`` are file formats; two user data sets would
    otherwise both be titled ``npz``)."""
    return str(run) if name in USER_SOURCES and run else name


@dataclass(frozen=True)
class DataConfig:
    """The pipeline's ``data`` config slice.
    """

    name: DatasetName = "digits"  # the dataset source (see the module docstring; ``docs/data.md`` shows each layout).
    root: str | None = None  # folder holding the source files; required for every source except ``digits``.
    download: bool = False  # let torchvision download MNIST / CIFAR into ``root`` (needs internet).
    verify_checksums: bool = True  # check torchvision's md5 sums of the CIFAR files; set ``false`` for locally made copies in the CIFAR format (the files must still exist and unpickle).
    val_fraction: float = 0.1  # fraction of the training data carved (stratified) into the validation split used for hyperparameter selection; 0 gives an empty ``val`` split.
    test_fraction: float = 0.2  # fraction of all data carved (stratified) into the test split; only used by sources without an official test split (digits, ``npz``/``imagefolder`` without ``test``).
    split_seed: int = 0  # seed of every carve and subsample (fixed so a rerun gives identical splits).
    image_size: int | None = None  # resize images to ``image_size x image_size`` (None keeps the source size).
    channels: int | None = None  # convert to 1 (grey, ITU-R 601 luma) or 3 (grey replicated) channels; None keeps them.
    max_train_per_class: int | None = None  # cap on training-source images per class (applied before ``val`` is carved, so ``val`` keeps ``val_fraction`` of the capped pool); for quick runs.
    max_test_per_class: int | None = None  # cap on test images per class; for quick runs.
    resize_mode: Literal["pad", "resize"] = "pad"  # how a size the flow cannot squeeze (H or W not a multiple of ``2**levels``) is fixed: ``pad`` (zero border, centred; the image content is untouched) or ``resize`` (scale up to the next multiple).

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise DataError(f"data.val_fraction={self.val_fraction}: must be in [0, 1)")
        if not 0.0 < self.test_fraction < 1.0:
            raise DataError(f"data.test_fraction={self.test_fraction}: must be in (0, 1)")
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"data.image_size={self.image_size}: must be a positive integer or null")
        if self.channels not in (None, 1, 3):
            raise DataError(f"data.channels={self.channels}: must be 1, 3 or null")
        for key in ("max_train_per_class", "max_test_per_class"):
            v = getattr(self, key)
            if v is not None and v < 1:
                raise DataError(f"data.{key}={v}: must be a positive integer or null")
        if self.resize_mode not in ("pad", "resize"):
            raise DataError(f"data.resize_mode={self.resize_mode!r}: must be 'pad' or 'resize'")
