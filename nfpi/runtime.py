"""Process-level runtime helpers: seeding, device choice, mixed precision, logging (progress: nfpi.progress).

Importing this module does not import torch: a stage that never touches torch (``tabulate``,
``resolved_config``, ``curves``) should not pay seconds of CPU for it.  The process settings that only
matter to torch (intra-op threads, denormals) are applied by :func:`when_torch_loads` right after torch
is first imported, or at once when it already is.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.abc
import importlib.util
import logging
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from nfpi.progress import progress  # re-exported: the one progress helper lives in nfpi.progress

if TYPE_CHECKING:
    import torch

__all__ = ["seed_everything", "select_device", "autocast", "setup_logging", "progress", "set_threads", "flush_denormals", "keep_freed_memory", "cpu_has_bf16", "when_torch_loads"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU generator seeded the same way."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when a device is visible (LOCAL_RANK selects it under torchrun), else CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but no CUDA device is visible; set device: auto or cpu")
    return dev


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX); elsewhere it emulates, slowly."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_warned_bf16_fallback = False


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """Mixed precision as a context (timm style): ``"bf16"`` autocasts on CUDA and on bf16-capable CPUs.

    bf16 needs no loss scaling; the flow's log-determinants are accumulated in float32 by the
    layers themselves, so autocast only changes the convolution arithmetic.  On a CPU with native
    bf16 (AVX512-BF16 or AMX) oneDNN's bf16 convolutions made CIFAR-preset training 1.2x / 1.7x
    faster at batch 16 / 64 (docs/bench/flows.md); on other CPUs bf16 would be emulated, so it falls back to fp32
    with a warning (a paper config written for GPUs still runs there).
    """
    global _warned_bf16_fallback
    import torch

    if precision == "bf16" and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
        return
    if precision == "bf16" and not _warned_bf16_fallback:
        _warned_bf16_fallback = True
        logging.getLogger(__name__).warning(
            "precision: bf16 requested on %s, which has no native bf16 (needs CUDA, or a CPU with AVX512-BF16 "
            "or AMX): running fp32; set precision: fp32 to silence this", device)
    yield


def flush_denormals() -> None:
    """Flush denormal floats to zero for this process (CPU).

    The backward pass of the flows' fixed-degree matrix-exponential series multiplies gradients by
    W/k many times; once W is small (early training) they underflow into denormals, which x86
    handles ~100x slower (a CIFAR training step went from 3 s to 13 s).  Values below 1e-38 become
    0: no effect on results.  Process-wide, so stage processes call it, not the library.
    """
    import torch

    torch.set_flush_denormal(True)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Let glibc's malloc reuse freed blocks up to ``limit_bytes`` instead of returning them to the OS.

    By default glibc serves multi-megabyte blocks with fresh ``mmap`` pages and unmaps them on free,
    so every activation of a CPU forward pass pays page faults on first touch (an out-of-place
    ``clamp`` on a [64, 128, 16, 16] tensor took 570 us against 120 us in place).  Serving them from
    the heap and never trimming it made CIFAR-preset extraction 10-15% faster
    (docs/bench/flows.md).  The cost: the process keeps its peak heap until it exits, which is what
    a stage process does anyway.  Process-wide, so stage processes call it, not the library.
    Returns whether the allocator accepted the settings (False off glibc, e.g. macOS).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, int(limit_bytes)) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1


def set_threads(threads: int | None) -> None:
    """Limit intra-op threads (a Snakemake job gets ``threads`` cores; oversubscription is slow).

    Under torchrun the job's ``threads`` are shared by its ``LOCAL_WORLD_SIZE`` processes on the node,
    so each process takes its share (at least 1): N processes x ``threads`` threads each oversubscribed
    the cores (a 2-process CPU pretraining used 25x the CPU time of one process).
    """
    if threads:
        import torch

        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        torch.set_num_threads(max(1, int(threads) // local))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot post-import hook: ``callback()`` runs right after module ``name`` has been executed.

    It finds the module's spec through the rest of ``sys.meta_path`` (having removed itself, so it never
    sees its own lookup) and wraps that loader's ``exec_module`` for this one import.
    """

    def __init__(self, name: str, callback: Callable[[], None]) -> None:
        self.name, self.callback = name, callback

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if fullname != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            self.callback()  # nothing to wrap (a namespace or built-in module): the settings need torch anyway
            return spec
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            loader.exec_module = run_module  # type: ignore[method-assign]  (wrapped for this one import only)
            run_module(module)
            self.callback()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def when_torch_loads(callback: Callable[[], None]) -> None:
    """Run ``callback`` now if torch is imported, else right after the process first imports it.

    A stage's thread count and denormal flushing are torch settings: applying them on torch's first
    import gives torch stages exactly the settings they had (before any tensor exists) and costs the
    torch-free stages nothing.
    """
    if "torch" in sys.modules:
        callback()
        return
    sys.meta_path.insert(0, _AfterImport("torch", callback))


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
