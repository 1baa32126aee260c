"""Process-level runtime helpers: seeding, device choice, mixed precision, logging, progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["seed_everything", "select_device", "autocast", "setup_logging", "progress", "set_threads", "flush_denormals"]

T = TypeVar("T")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when a device is visible (LOCAL_RANK selects it under torchrun), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but no CUDA device is visible; set device: auto or cpu")
    return dev


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Mixed precision as a context (timm style): ``"bf16"`` autocasts on CUDA, else a no-op.

    bf16 needs no loss scaling; the flow's log-determinants are accumulated in float32 by the
    layers themselves, so autocast only changes the convolution arithmetic.
    """
    if precision == "bf16" and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


def flush_denormals() -> None:
    """Flush denormal floats to zero for this process (CPU).

    The backward pass of the flows' fixed-degree matrix-exponential series multiplies gradients by
    W/k many times; once W is small (early training) they underflow into denormals, which x86
    handles ~100x slower (a CIFAR training step went from 3 s to 13 s).  Values below 1e-38 become
    0: no effect on results.  Process-wide, so stage processes call it, not the library.
    """
    torch.set_flush_denormal(True)


def set_threads(threads: int | None) -> None:
    """Limit intra-op threads (a Snakemake job gets ``threads`` cores; oversubscription is slow)."""
    if threads:
        torch.set_num_threads(int(threads))


def setup_logging(log_file: str | os.PathLike[str] | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (which the rule's ``log:`` captures) and optionally to ``log_file``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )


def progress(it: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """A tqdm bar on a terminal (or with ``NFPI_PROGRESS=1``), otherwise the bare iterable.

    Under Snakemake/SLURM stderr is a log file; a bar redrawn there is noise, so the loops log
    periodic summary lines instead.
    """
    show = sys.stderr.isatty() or os.environ.get("NFPI_PROGRESS") == "1"
    if not show:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, dynamic_ncols=True, **kwargs)
