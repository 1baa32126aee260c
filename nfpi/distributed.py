"""DDP plumbing: torchrun environment -> process group, rank helpers, parameter broadcast.

One code path serves 1 and N processes (nanoGPT / DiT style): :func:`init_distributed` reads the
variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); when they are absent (a plain ``python -m ...`` run) it returns a single-process
:class:`DistInfo` and every helper below becomes a no-op.  The backend is gloo on CPU and NCCL on
CUDA (NCCL has no CPU tensors; gloo is slow on GPU tensors).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nfpi.runtime import select_device

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup",
    "barrier",
    "broadcast_module",
    "all_reduce_mean",
    "all_reduce_max",
    "is_distributed",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    rank: global rank (0 when not distributed).
    world_size: number of processes (1 when not distributed).
    local_rank: rank on this node; selects the CUDA device.
    device: the device this process computes on.
    is_main: True on rank 0, which writes files and logs.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True


def is_distributed() -> bool:
    """True when a process group is initialised (under torchrun with ``WORLD_SIZE`` > 1)."""
    return dist.is_available() and dist.is_initialized()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise the process group from the torchrun environment; single process when it is absent.

    ``device`` is ``"auto"`` (CUDA ``LOCAL_RANK`` when visible, else CPU), ``"cpu"`` or ``"cuda"``.
    Idempotent: called again in the same process (e.g. by :func:`nfpi.training.train_flow` after a
    stage module already called it) it returns the same information without re-initialising.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if device == "cuda":
        device = f"cuda:{local_rank}"
    dev = select_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world_size > 1 and not is_distributed():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ValueError(
                    f"WORLD_SIZE={world_size} but {var} is not set; launch with torchrun (which sets it) "
                    "or export MASTER_ADDR/MASTER_PORT"
                )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=30),
            **kwargs,
        )
        logger.info("process group: backend %s, rank %d/%d, device %s", backend, rank, world_size, dev)
    elif is_distributed():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


def cleanup() -> None:
    """Destroy the process group if one exists (safe to call in single-process runs)."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for all ranks (no-op in single-process runs)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy all parameters and buffers of ``module`` from rank ``src`` to every rank, in place.

    Used after actnorm's data-dependent initialisation, which runs on rank 0 only, so that every rank
    starts from bit-identical weights (DDP assumes it and would otherwise silently average different
    models' gradients).
    """
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dtype == torch.bool:  # gloo has no bool collectives: go through uint8
            buf = tensor.data.to(torch.uint8)
            dist.broadcast(buf, src=src)
            tensor.data.copy_(buf.bool())
        else:
            dist.broadcast(tensor.data, src=src)


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (returns a new tensor; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max of ``t`` over ranks (used to agree on "skip this step" flags)."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out
