"""Latent files: Parquet (default) or a numpy memmap, streaming readers, one-pass class statistics.

The solver needs only the class statistics ``(n_y, m_y, q_y)`` of the training latents
(``../shared/spec/method.md``, "Class statistics"; they enter Eq. 4 and Proposition 1 / Eqs. 5-6),
so the latents are never held in memory at once: they are written in row groups while the flow
encodes them and read back batch by batch.

Formats (chosen by the file suffix):

* ``.parquet``: columns ``z`` (``fixed_size_list<float32>[d]``), ``label`` (int64), ``split``
  (string, dictionary-encoded); row groups of ``row_group_size`` rows so readers stream; schema
  metadata ``nfpi.format=latents``, ``nfpi.dim``, ``nfpi.split``.  Self-describing, readable by
  pandas/polars/duckdb.
* ``.npy``: ``z`` as a float32 ``[N, d]`` ``.npy`` (memory-mapped on read: fastest for large ``d``),
  labels in the sidecar ``<stem>.labels.npy`` (int64 ``[N]``).  ``num_rows`` must be known up front.

Every file is written through :func:`nfpi.io.atomic_path`: a killed job leaves no file at ``path``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nfpi.data import DataError
from nfpi.io import atomic_path
from nfpi.progress import progress

if TYPE_CHECKING:
    from nfpi.fpi import ClassStats

__all__ = ["LatentError", "write_latents", "LatentReader", "open_latents", "class_stats", "labels_path"]

log = logging.getLogger(__name__)

_FORMAT_KEY = b"nfpi.format"
_SCHEMA_TEXT = ("Parquet with columns z (fixed_size_list<float32>[d]), label (int64), split (string), "
                "as written by nfpi.latents.write_latents")


class LatentError(DataError):
    """A latent file is missing, corrupt or has the wrong schema."""


def labels_path(path: str | os.PathLike[str]) -> Path:
    """The label sidecar of a ``.npy`` latent file: ``train.npy`` -> ``train.labels.npy``."""
    p = Path(path)
    return p.with_name(p.stem + ".labels.npy")


def _as_numpy(a: Any, dtype: type, what: str, path: Path) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensors straight from the flow
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype != dtype:
        if dtype is np.int64 and not np.issubdtype(a.dtype, np.integer):
            raise LatentError(f"{path}: {what} batch has dtype {a.dtype}; labels must be integers")
        a = a.astype(dtype)
    return a


def _batches(batches: Iterable[tuple[Any, Any]], dim: int, path: Path) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Validate and convert each (z, y) batch: z float32 [b, dim], y int64 [b]."""
    for z, y in batches:
        z = _as_numpy(z, np.float32, "z", path)
        y = _as_numpy(y, np.int64, "label", path)
        z = z.reshape(z.shape[0], -1) if z.ndim > 2 else z  # [B, C, H, W] latents are flattened to [B, D]
        if z.ndim != 2 or z.shape[1] != dim or y.shape != (z.shape[0],):
            raise LatentError(f"{path}: batch z {z.shape} / labels {y.shape} does not match dim={dim} "
                              "(expected z [b, dim] and labels [b])")
        yield np.ascontiguousarray(z), y


def _write_parquet(tmp: Path, batches: Iterator[tuple[np.ndarray, np.ndarray]], dim: int, split: str,
                   row_group_size: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("z", pa.list_(pa.float32(), dim)), ("label", pa.int64()), ("split", pa.dictionary(pa.int8(), pa.string()))],
        metadata={_FORMAT_KEY: b"latents", b"nfpi.version": b"1", b"nfpi.dim": str(dim).encode(),
                  b"nfpi.split": split.encode()},
    )
    split_dict = pa.array([split], pa.string())

    def table(z: np.ndarray, y: np.ndarray) -> pa.Table:
        zarr = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), dim)  # zero-copy view of z
        sarr = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(y), np.int8)), split_dict)
        return pa.Table.from_arrays([zarr, pa.array(y), sarr], schema=schema)

    rows = 0
    # float latents barely compress (high-entropy mantissas): leave z raw, compress the small columns
    with pq.ParquetWriter(tmp, schema, compression={"z": "NONE", "label": "ZSTD", "split": "ZSTD"},
                          use_dictionary=["split"], write_statistics=["label"]) as writer:
        zbuf: list[np.ndarray] = []
        ybuf: list[np.ndarray] = []
        buffered = 0
        for z, y in batches:
            zbuf.append(z)
            ybuf.append(y)
            buffered += len(y)
            rows += len(y)
            # flush whole row groups so every group but the last has exactly row_group_size rows
            if buffered >= row_group_size:
                zc, yc = np.concatenate(zbuf), np.concatenate(ybuf)
                full = (buffered // row_group_size) * row_group_size
                writer.write_table(table(zc[:full], yc[:full]), row_group_size=row_group_size)
                zbuf, ybuf, buffered = [zc[full:]], [yc[full:]], buffered - full
        if buffered or rows == 0:
            zc = np.concatenate(zbuf) if zbuf else np.zeros((0, dim), np.float32)
            yc = np.concatenate(ybuf) if ybuf else np.zeros(0, np.int64)
            writer.write_table(table(zc, yc), row_group_size=row_group_size)
    return rows


def write_latents(
    path: str | os.PathLike[str],
    batches: Iterable[tuple[Any, Any]],
    *,
    dim: int,
    split: str,
    num_rows: int | None = None,
    row_group_size: int = 4096,
) -> int:
    """Stream ``(z [b, dim], labels [b])`` batches (numpy or torch) into a latent file; return the row count.

    The suffix picks the format: ``.parquet`` (row groups of ``row_group_size`` rows) or ``.npy``
    (a float32 memmap of ``num_rows`` rows, required, plus the ``.labels.npy`` sidecar).  The file
    appears at ``path`` only once complete; if ``num_rows`` is given and the batches yield another
    count, nothing is written and :class:`LatentError` is raised.
    """
    p = Path(path)
    if dim < 1 or row_group_size < 1:
        raise LatentError(f"{p}: dim={dim} and row_group_size={row_group_size} must be positive")
    suffix = p.suffix.lower()
    stream = _batches(batches, dim, p)
    if suffix == ".parquet":
        with atomic_path(p) as tmp:
            rows = _write_parquet(tmp, stream, dim, split, row_group_size)
            if num_rows is not None and rows != num_rows:
                raise LatentError(f"{p}: got {rows} latent rows but num_rows={num_rows}; nothing written")
        return rows
    if suffix == ".npy":
        if num_rows is None:
            raise LatentError(f"{p}: the .npy (memmap) latent format needs num_rows up front; pass num_rows or use "
                              ".parquet")
        # z at `path` marks completeness: remove the old one first, write the labels, then z last
        p.unlink(missing_ok=True)
        with atomic_path(p) as tmp_z, atomic_path(labels_path(p)) as tmp_y:
            zmm = np.lib.format.open_memmap(tmp_z, mode="w+", dtype=np.float32, shape=(num_rows, dim))
            y_all = np.empty(num_rows, dtype=np.int64)
            rows = 0
            for z, y in stream:
                if rows + len(y) > num_rows:
                    raise LatentError(f"{p}: batches yield more than num_rows={num_rows} rows; nothing written")
                zmm[rows : rows + len(y)] = z
                y_all[rows : rows + len(y)] = y
                rows += len(y)
            if rows != num_rows:
                raise LatentError(f"{p}: got {rows} latent rows but num_rows={num_rows}; nothing written")
            zmm.flush()
            del zmm
            with open(tmp_y, "wb") as fh:
                np.save(fh, y_all)
        return rows
    raise LatentError(f"{p}: unknown latent file suffix {suffix!r}; use .parquet or .npy")


class LatentReader:
    """Streaming reader of a latent file (:func:`open_latents`).

    Attributes:
        path: the file.
        num_rows: number of latents.
        dim: latent dimension ``d``.
        split: the split recorded in the file (``None`` for ``.npy``).
    """

    def __init__(self, path: Path, num_rows: int, dim: int, split: str | None) -> None:
        self.path = path
        self.num_rows = num_rows
        self.dim = dim
        self.split = split

    def iter_batches(self, batch_rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(z float32 [b, d], y int64 [b])`` in file order, ``b <= batch_rows``."""
        raise NotImplementedError

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All latents at once: ``(z float32 [N, d], y int64 [N])``."""
        zs, ys = [], []
        for z, y in self.iter_batches():
            zs.append(z)
            ys.append(y)
        if not zs:
            return np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)
        return np.concatenate(zs), np.concatenate(ys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, num_rows={self.num_rows}, dim={self.dim})"


class _ParquetReader(LatentReader):
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            self._file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise LatentError(f"{path}: not a readable Parquet file ({exc}); expected {_SCHEMA_TEXT}. Delete it and "
                              "rerun the extract stage") from None
        schema = self._file.schema_arrow
        names = schema.names
        ztype = schema.field("z").type if "z" in names else None
        ok = (
            ztype is not None
            and pa.types.is_fixed_size_list(ztype)
            and ztype.value_type == pa.float32()
            and "label" in names
            and pa.types.is_integer(schema.field("label").type)
        )
        if not ok:
            raise LatentError(f"{path}: wrong schema ({', '.join(f'{f.name}: {f.type}' for f in schema)}); "
                              f"expected {_SCHEMA_TEXT}")
        meta = schema.metadata or {}
        split = meta.get(b"nfpi.split")
        super().__init__(path, self._file.metadata.num_rows, ztype.list_size, split.decode() if split else None)

    def iter_batches(self, batch_rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import pyarrow as pa

        try:
            for rb in self._file.iter_batches(batch_size=batch_rows, columns=["z", "label"]):
                zcol = rb.column(0)
                if zcol.null_count:
                    raise LatentError(f"{self.path}: column z has {zcol.null_count} null rows; rerun the extract stage")
                # flatten() honours slice offsets; float32 without nulls converts zero-copy
                z = zcol.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.dim)
                y = rb.column(1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
                yield z, y
        except pa.ArrowException as exc:
            raise LatentError(f"{self.path}: corrupt Parquet data ({exc}); delete it and rerun the extract stage") from None


class _NpyReader(LatentReader):
    def __init__(self, path: Path) -> None:
        ypath = labels_path(path)
        try:
            self._z = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise LatentError(f"{path}: not a readable .npy latent file ({exc}); delete it and rerun the extract "
                              "stage") from None
        if not ypath.is_file():
            raise LatentError(f"{ypath}: label sidecar of {path} not found; rerun the extract stage")
        try:
            self._y = np.load(ypath, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise LatentError(f"{ypath}: not a readable .npy label file ({exc}); rerun the extract stage") from None
        if self._z.ndim != 2 or self._z.dtype != np.float32:
            raise LatentError(f"{path}: {self._z.dtype} {self._z.shape}; expected float32 [N, d]")
        if self._y.shape != (self._z.shape[0],) or not np.issubdtype(self._y.dtype, np.integer):
            raise LatentError(f"{ypath}: {self._y.dtype} {self._y.shape}; expected {self._z.shape[0]} integer labels "
                              f"matching {path}")
        super().__init__(path, int(self._z.shape[0]), int(self._z.shape[1]), None)

    def iter_batches(self, batch_rows: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for s in range(0, self.num_rows, batch_rows):
            yield np.array(self._z[s : s + batch_rows]), np.asarray(self._y[s : s + batch_rows], dtype=np.int64)


def open_latents(path: str | os.PathLike[str]) -> LatentReader:
    """Open a latent file for streaming; :class:`LatentError` names the file if missing, corrupt or mis-shaped."""
    p = Path(path)
    if not p.is_file():
        raise LatentError(f"{p}: latent file not found (run the extract stage that writes it)")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _ParquetReader(p)
    if suffix == ".npy":
        return _NpyReader(p)
    raise LatentError(f"{p}: unknown latent file suffix {suffix!r}; expected .parquet or .npy")


def class_stats(path: str | os.PathLike[str], num_classes: int, *, batch_rows: int = 8192) -> ClassStats:
    """Class statistics ``(n_y, m_y, q_y)`` of a latent file in one streaming pass, accumulated in float64.

    These are all the fixed-point iteration needs (method.md, "Class statistics"; Eqs. 4-6):
    memory O(K d) whatever the number of latents.  Labels outside ``0..num_classes-1`` raise
    :class:`LatentError` naming the file.
    """
    import torch

    from nfpi.fpi import StatsAccumulator

    reader = open_latents(path)
    acc = StatsAccumulator(num_classes, reader.dim)
    bar = progress(total=reader.num_rows, desc=f"class statistics of {reader.path.name}", unit="row", logger=log)
    for z, y in reader.iter_batches(batch_rows):
        bar.update(len(y))
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise LatentError(f"{reader.path}: labels range {y.min()}..{y.max()}, outside 0..{num_classes - 1} "
                              "(num_classes from the prepared data's meta.json); were the latents extracted from "
                              "another dataset?")
        # the float64 copy is the accumulator's own dtype (so no extra work) and is writable, unlike
        # the zero-copy Arrow buffer torch would warn about
        acc.update(torch.from_numpy(z.astype(np.float64)), torch.from_numpy(np.array(y)))
    bar.close()
    try:
        return acc.finalize()
    except ValueError as exc:  # a class with no latent: name the file, not just the accumulator
        raise LatentError(f"{reader.path}: {exc}") from None
