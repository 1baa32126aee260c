"""Datasets: every source becomes one prepared on-disk format that all later stages read.

- :mod:`nfpi.data.config`: the ``data`` config slice, the split names, the data's title (torch-free: the
  workflow's DAG and the config check import it).
- :mod:`nfpi.data.prepared`: the sources, the stratified splits, :func:`prepare_dataset` and
  :class:`PreparedData` (torch); its names load on first use.

The stage ``prepare`` (:mod:`nfpi.stages.prepare`) runs it::

    >>> from nfpi.data import DataConfig, prepare_dataset
    >>> prepare_dataset(DataConfig(name="digits"), "results/digits/data")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.data.config import SPLITS, USER_SOURCES, DataConfig, DataError, dataset_title
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.data.prepared import PreparedData, prepare_dataset, stratified_carve

__all__ = [
    "DataError",
    "DataConfig",
    "SPLITS",
    "prepare_dataset",
    "PreparedData",
    "stratified_carve",
    "USER_SOURCES",
    "dataset_title",
]

# The torch-backed names (and every other name of the former single module) load from nfpi.data.prepared on first use.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), rest="prepared")
