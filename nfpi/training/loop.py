"""The flow training loop: one function for pretraining (N(0, I) prior) and fine-tuning (solved Gaussians).

:func:`train_flow` reads top to bottom, nanoGPT / DiT style, with one code path for 1 and N
processes (DDP under ``torchrun``; gloo on CPU, NCCL on GPU):

1. process group and device (:func:`nfpi.distributed.init_distributed`);
2. state: resume from the rolling checkpoint beside ``out_path`` when its config matches, else start
   from ``init_checkpoint`` (fine-tuning) or from actnorm's data-dependent init on rank 0, broadcast;
3. the loop: deterministic global batch -> this rank's shard -> dequantise -> NLL (Eq. 1 with the
   class Gaussians ``N(mu_y, v_y)``; the standard prior when pretraining) -> backward -> clip ->
   Adamax step (lr 1e-2 linearly warmed up over 1000 iterations, Section 5 "Implementation
   Details") -> EMA;
4. non-finite guard: a step whose loss or gradient norm is not finite on any rank is skipped on all
   ranks; after ``max_nonfinite`` consecutive skips the weights roll back to the last good checkpoint
   and training continues *past* the offending batches (PaLM's remedy: replaying them would diverge
   the same way);
5. periodic self-describing checkpoints (:mod:`nfpi.checkpoint`), a metrics JSONL log, and the final
   ``kind="flow"`` checkpoint at ``out_path``.

Determinism: the data order is a per-epoch permutation drawn from ``(seed, epoch)``; global batch
``b`` is ``perm[b*B:(b+1)*B]`` and rank ``r`` takes the contiguous slice ``r*B/W:(r+1)*B/W``.
Dequantisation noise, horizontal flips and the other augmentations' parameters
(:mod:`nfpi.flow_augment`) are drawn for the *whole global batch* from generators seeded by
``(seed, step)`` and then sliced, so 1 and N processes see identical inputs, and a resumed
run sees exactly what an uninterrupted run would have seen: no DataLoader state is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from nfpi import distributed as ddp
from nfpi.checkpoint import CheckpointError, capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from nfpi.config import config_hash, from_mapping
from nfpi.flow_augment import AugmentDraw, apply_augment
from nfpi.io import append_jsonl, atomic_path, to_jsonable
from nfpi.runtime import autocast, progress
from nfpi.seeds import derive_seed
from nfpi.training.config import TrainConfig

# The public names are listed once, in nfpi.training.__all__ (the package loads this module on first use of one).

logger = logging.getLogger(__name__)

# Streams of the derived seeds (so the permutation, the per-step noise and the init batch never share draws).
_STREAM_PERM, _STREAM_STEP, _STREAM_INIT = 0, 1, 2
# The augmentations' own streams: switching them on leaves the noise and flips of every step unchanged.
_STREAM_AUG, _STREAM_AUG_INIT = 3, 4


# Fields that do not change the training trajectory: a resume checkpoint written under other values
# of these is still valid (``steps`` lets a finished run be extended exactly).
_VOLATILE_FIELDS = ("steps", "checkpoint_every", "log_every", "max_nonfinite", "max_rollbacks", "device", "compile")


@dataclass(frozen=True)
class TrainResult:
    """Summary of a :func:`train_flow` call.

    steps: optimiser steps completed in total (including those before a resume).
    final_loss: mean -log p(x|y) (nats per image, of the dequantised x in [-0.5, 0.5), as
        :func:`nfpi.density.flow_nll`) over the last logging window (NaN if no step ran).
    final_bpd: the same as bits/dim of the ``n_bits`` data (:func:`nfpi.density.bits_per_dim`).
    images_per_sec: global training throughput of this call (all ranks).
    rollbacks: rollbacks to the last good checkpoint (total over the run).
    skipped_steps: steps skipped for a non-finite loss or gradient (total over the run).
    wall_s: wall time of this call.
    resumed_from: step this call resumed from (0 for a fresh start).
    """

    steps: int
    final_loss: float
    final_bpd: float
    images_per_sec: float
    rollbacks: int
    skipped_steps: int
    wall_s: float
    resumed_from: int = 0


@dataclass(frozen=True)
class TrainedFlow:
    """A trained flow rebuilt from its checkpoint.

    flow: the flow with EMA weights (or raw weights with ``use_ema=False``), in eval mode.
    prior: the class Gaussians it was trained with (``None`` if the checkpoint has none).
    config: the checkpoint's config record (``flow``, ``image_shape``, ``train``, ...).
    image_shape: (C, H, W).
    """

    flow: nn.Module
    prior: Any
    config: dict[str, Any]
    image_shape: tuple[int, int, int]

    @property
    def n_bits(self) -> int:
        """Bits per channel the flow was trained on: every downstream stage (extraction, evaluation,
        sampling, augmentation) must preprocess images the same way.  8 for checkpoints without a record."""
        return _record_n_bits(self.config)


def _record_n_bits(config: dict[str, Any]) -> int:
    return int((config.get("train") or {}).get("n_bits", 8))


@dataclass(frozen=True)
class StartWeights:
    """A flow checkpoint to start from: its content digest now, its contents loaded once, on first use.

    Fine-tuning and adaptation need the pretrained checkpoint's config (flow layout, ``n_bits``), its
    weights, and a digest of its bytes for the resume fingerprint; this object gives all three with
    one deserialisation (:func:`train_flow` accepts it as ``init_checkpoint``), and a run that
    resumes from its own state never loads it at all.
    """

    path: str
    digest: str

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> StartWeights:
        return cls(str(path), _file_digest(path))  # names the file and the stage that writes it when missing

    @functools.cached_property
    def checkpoint(self) -> dict[str, Any]:
        return load_checkpoint(self.path, expected_kind="flow")

    @property
    def config(self) -> dict[str, Any]:
        return self.checkpoint.get("config") or {}

    @property
    def n_bits(self) -> int:
        return _record_n_bits(self.config)

    @property
    def uses_ema(self) -> bool:
        return self.checkpoint.get("ema") is not None

    @property
    def weights(self) -> dict[str, torch.Tensor]:
        """The EMA weights when the checkpoint has them (the paper fine-tunes from them), else the raw ones."""
        return self.checkpoint["ema"] if self.uses_ema else self.checkpoint["model"]

    def trained_flow(self, *, map_location: str | torch.device = "cpu", use_ema: bool = True) -> TrainedFlow:
        """The flow rebuilt from this checkpoint (as :func:`load_trained_flow`), without rereading it."""
        return _rebuild_trained_flow(self.checkpoint, self.path, map_location=map_location, use_ema=use_ema)


# ----------------------------------------------------------------------------------------------
# Pure helpers (deterministic data order, noise, lr schedule)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup over ``warmup_steps``, then constant."""
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


class _EpochOrder:
    """Global batch indices for any step: epoch permutation from ``(seed, epoch)``, cached per epoch."""

    def __init__(self, num_examples: int, batch_size: int, seed: int) -> None:
        if num_examples < batch_size:
            raise ValueError(
                f"train.batch_size={batch_size} is larger than the training set ({num_examples} images); "
                "lower train.batch_size"
            )
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.steps_per_epoch = num_examples // batch_size  # the last partial batch is dropped (equal shards)
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, _STREAM_PERM, epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def batch(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        return self.permutation(epoch)[b * self.batch_size : (b + 1) * self.batch_size]


def global_batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Dataset indices of global batch ``step`` (see the module docstring); identical for any world size."""
    return _EpochOrder(num_examples, batch_size, seed).batch(step)


def batch_noise(
    seed: int, step: int, batch_size: int, image_shape: Sequence[int], *, stream: int = _STREAM_STEP
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation noise ``[B, C, H, W]`` in [0, 1) and flip flags ``[B]`` for a whole global batch.

    Drawn from a generator seeded by ``(seed, step)``; a rank slices its shard out, so the noise of an
    image depends on its position in the global batch, never on the number of processes.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, stream, step))
    flips = torch.rand(batch_size, generator=g) < 0.5
    noise = torch.rand((batch_size, *image_shape), generator=g)
    return noise, flips


def batch_augment(cfg: TrainConfig, step: int, batch_size: int, shard: slice = slice(None), *,
                  stream: int = _STREAM_AUG) -> AugmentDraw | None:
    """Augmentation parameters of a whole global batch from ``(seed, step)``, then ``shard``'s rows.

    ``None`` when every augmentation is off (no draw at all: those runs are unchanged bit for bit).
    Like :func:`batch_noise`, an image's parameters depend on its position in the global batch only.
    """
    if not cfg.augment.active:
        return None
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, stream, step))
    return cfg.augment.draw(batch_size, g)[shard]


def load_batch(dataset: Dataset, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fetch ``(images, labels)`` for ``indices`` (TensorDataset and ``__getitems__`` fast paths)."""
    if isinstance(dataset, TensorDataset):
        x, y = dataset.tensors[0][indices], dataset.tensors[1][indices]
        return x, torch.as_tensor(y, dtype=torch.int64)
    idx = indices.tolist()
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(idx) if getitems is not None else [dataset[i] for i in idx]
    if isinstance(items, (tuple, list)) and len(items) == 2 and isinstance(items[0], torch.Tensor) and \
            items[0].dim() == 4:  # already collated (images [B,C,H,W], labels [B])
        return items[0], torch.as_tensor(items[1], dtype=torch.int64)
    xs = torch.stack([torch.as_tensor(item[0]) for item in items])
    ys = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    return xs, ys


def dequantize_batch(x: torch.Tensor, noise: torch.Tensor | None, *, n_bits: int = 8) -> torch.Tensor:
    """Images -> flow input in [-0.5, 0.5) (uniform dequantisation, as :func:`nfpi.density.preprocess`).

    uint8 images are reduced to ``n_bits`` and dequantised with ``noise`` in [0, 1) (in units of one
    bin; ``None``: the bin centre, deterministic).  The noise is an argument rather than drawn inside
    so that it can be drawn for the whole global batch and sliced per rank.  Float images are taken
    to be preprocessed already and used as they are.
    """
    if x.is_floating_point():
        return x.float()
    from nfpi.density import preprocess

    centre = preprocess(x, n_bits=n_bits, dequantize=False)  # (k + 0.5) / 2^n - 0.5
    if noise is None:
        return centre
    # Same clamp as preprocess: stay strictly inside the bin after float rounding.
    u = noise.to(centre.device, centre.dtype).clamp(max=1.0 - 1e-6)
    return centre + (u - 0.5) / (2**n_bits)


def training_inputs(
    x: torch.Tensor, noise: torch.Tensor, flips: torch.Tensor, *, n_bits: int, hflip: bool,
    augment: AugmentDraw | None = None,
) -> torch.Tensor:
    """The flow's training input: augment (``augment``: this batch's parameters from
    :func:`batch_augment`), dequantise, then mirror the images flagged in ``flips`` (if ``hflip``).

    One function for the loop and for actnorm's data init, so both see the same distribution (a
    per-pixel actnorm initialised on unflipped digits blows up on flipped ones).  The augmentations
    act on the stored (uint8) images, before the dequantisation noise, so the noise stays uniform
    within each bin of the augmented image.
    """
    if augment is not None:
        x = apply_augment(x, augment)
    x = dequantize_batch(x, noise, n_bits=n_bits)
    if hflip:
        x = torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    return x


# ----------------------------------------------------------------------------------------------
# Model state helpers


class _EMA:
    """Exponential moving average of a module's parameters (buffers are copied, not averaged)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> None:
        # Warm-started decay (TensorFlow's num_updates rule): early averages are not dominated by init.
        d = min(self.decay, (1 + num_updates) / (10 + num_updates))
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


def _tensor_digest(state: dict[str, Any] | None) -> str:
    """Short content hash of a state dict's tensors (detects changed Gaussians between runs)."""
    if not state:
        return "none"
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                     if v.dim() else str(v.item()).encode())
        else:
            h.update(repr(v).encode())
    return h.hexdigest()[:16]


def _file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (streamed): identifies the init checkpoint by content, not by path."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: init checkpoint not found (run the pretrain stage that writes it)")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _data_digest(dataset: Dataset) -> str:
    """Cheap content digest of a dataset: its size and 64 evenly spaced (image, label) pairs.

    Hashing every image would cost a full pass over ImageNet; the sample catches a re-prepared or
    different dataset, which is what would make a resume state stale.
    """
    n = len(dataset)
    idx = torch.unique(torch.linspace(0, max(n - 1, 0), steps=min(64, n)).round().long())
    x, y = load_batch(dataset, idx)
    return _tensor_digest({"n": torch.tensor(n), "x": x.contiguous(), "y": y})


def _fingerprint(cfg: TrainConfig, record: dict[str, Any] | None, dataset: Dataset, prior: Any,
                 start: StartWeights | None) -> str:
    """What a resume checkpoint must match: trajectory-relevant config, flow record, data, Gaussians, start weights."""
    train = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE_FIELDS}
    rec = {k: v for k, v in (record or {}).items() if k != "train"}  # the record's copy of cfg holds `steps`
    # A trainable prior (nfpi.joint_gd) adds its options, the step count of its lr policy included.
    joint = {"joint": prior.spec()} if getattr(prior, "trainable", False) else {}
    return config_hash({
        "train": train, "record": rec, "data": _data_digest(dataset),
        "gaussians": _tensor_digest(prior.state_dict()) if prior is not None else "none",
        "init": start.digest if start is not None else None, **joint,
    })


def resume_path(out_path: str | os.PathLike[str]) -> Path:
    """The rolling resume checkpoint for ``out_path``: ``<out>.resume/state.pt``.

    A side folder, not ``out_path`` itself: Snakemake deletes the declared outputs of a failed job,
    which would throw away the state a rerun should resume from.
    """
    out = Path(out_path)
    return out.with_name(out.name + ".resume") / "state.pt"


def _all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def _where(record: dict[str, Any]) -> str:
    """`` (round r/R)`` for a fine-tuning round, so that resume and stop lines name it."""
    return f" (round {int(record['round']) + 1}/{int(record['rounds'])})" if "round" in record and "rounds" in record \
        else ""


def _trim_metrics(path: str | os.PathLike[str], step: int) -> None:
    """Keep the metrics log's rows up to ``step``, the step training (re)starts from.

    Rows an interrupted attempt logged after its last checkpoint are logged again by the resumed run
    (so the log of a killed and resumed run equals an uninterrupted one's), a fresh start begins an
    empty log, and the torn last line of an append cut short by a kill is dropped.
    """
    p = Path(path)
    if not p.is_file():
        return
    keep = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= step:
            keep.append(line + "\n")
    with atomic_path(p) as tmp:
        tmp.write_text("".join(keep), encoding="utf-8")


def _written(out_path: Path, fingerprint: str, step: int) -> bool:
    """True when ``out_path`` already holds the final checkpoint of this run (same fingerprint and step).

    A rerun that has nothing left to train then leaves the file as it is: a later stage identifies
    its start weights by the file's bytes (:class:`StartWeights`), and a rewrite changes them (the
    checkpoint's time stamp), which made the next fine-tuning round discard its resume state.
    """
    if not out_path.is_file():
        return False
    try:
        ck = load_checkpoint(out_path, expected_kind="flow")
    except CheckpointError:
        return False
    return (ck.get("extra") or {}).get("fingerprint") == fingerprint and int(ck["step"]) == step


#: Signals on which training stops after the current step with a resume checkpoint: SIGTERM (SLURM at
#: the time limit (``--signal``) or on pre-emption, ``scancel``, ``kill``, torchrun passing its own on),
#: SIGINT (Ctrl-C), SIGUSR1 (``sbatch --signal=USR1@<seconds>``).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class TrainingStopped(SystemExit):
    """Raised by :func:`train_flow` when a stop signal arrived: the resume checkpoint holds ``step``.

    A ``SystemExit`` with code 128 + the signal number, so the stage exits as a process killed by that
    signal would (non-zero, so Snakemake and SLURM mark the job failed and a rerun or requeue resumes
    it), without a traceback.
    """

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


class _StopSignals:
    """While :func:`train_flow` runs, a stop signal only sets ``signum``; the loop acts on it after its step.

    A signal that arrives after the loop's last check (while the final checkpoint is written) takes its
    usual effect when :func:`train_flow` returns, so a stage never runs on after a stop request.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum  # repeats (torchrun passing on what SLURM sent too) change nothing

    def __enter__(self) -> _StopSignals:
        self.signum = 0
        if threading.current_thread() is threading.main_thread():  # Python sets handlers there only
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self.signum and exc_type is None:
            signal.raise_signal(self.signum)


_STOP = _StopSignals()


def _stops_on_signals(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _STOP:
            return fn(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------
# The training loop


@dataclass
class _Window:
    """Sums over the current logging window (one line of the metrics log per ``log_every`` steps).

    The sums stay on the device (no host sync per step); ``steps`` counts the optimiser steps taken,
    ``seen`` every step (skipped ones too: they cost the same time).
    """

    loss: torch.Tensor
    gnorm: torch.Tensor
    steps: int = 0
    seen: int = 0
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def add(self, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
        self.loss += loss.detach().double()
        self.gnorm += gnorm.detach().double()
        self.steps += 1

    def reset(self) -> None:
        self.loss.zero_()
        self.gnorm.zero_()
        self.steps, self.seen, self.t0 = 0, 0, time.perf_counter()


@dataclass
class _Run:
    """The state one :func:`train_flow` call shares between its steps (built by :func:`_set_up`)."""

    cfg: TrainConfig
    info: ddp.DistInfo
    flow: nn.Module  # the module the optimiser, EMA and checkpoints hold
    model: nn.Module  # what the forward pass calls: ``flow``, wrapped in DDP / torch.compile when asked
    prior: Any
    joint: bool  # a trainable prior (nfpi.joint_gd): its Gaussians are optimised with the flow
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: _EMA
    dataset: Dataset
    order: _EpochOrder
    image_shape: tuple[int, ...]
    out_path: Path
    state_file: Path
    fingerprint: str
    record: dict[str, Any]
    metrics_path: str | os.PathLike[str] | None
    t_start: float
    counters: dict[str, Any]  # rollbacks, skipped steps, last logged loss: saved in every checkpoint
    window: _Window
    start_step: int = 0
    saved_at: int = 0  # the step of the resume checkpoint on disk
    steps_run: int = 0
    consecutive_bad: int = 0

    @property
    def shard(self) -> int:
        return self.cfg.batch_size // self.info.world_size

    @property
    def num_dims(self) -> int:
        return int(np.prod(self.image_shape))


@_stops_on_signals
def train_flow(
    flow: nn.Module,
    dataset: Dataset,
    prior: Any,
    cfg: TrainConfig,
    *,
    out_path: str | os.PathLike[str],
    init_checkpoint: str | os.PathLike[str] | StartWeights | None = None,
    config_record: dict[str, Any] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``flow`` by maximum likelihood under ``prior`` (Eq. 1; class-conditional ``N(mu_y, v_y)``).

    ``prior`` is a :class:`nfpi.density.ClassGaussianPrior` held fixed: the standard one for
    pretraining, the solved Gaussians (Prop. 1) for fine-tuning; or a trainable prior
    (:class:`nfpi.joint_gd.JointGaussianPrior`, Baseline 2 as the paper runs it), whose Gaussians
    then take a gradient step of Eq. 4 with every flow step and are part of the resume state.  ``init_checkpoint`` gives start
    weights (the pretrained flow's EMA weights when fine-tuning; a path, or a :class:`StartWeights`
    already read by the caller); otherwise actnorm is initialised from
    data on rank 0.  Writes the final ``kind="flow"`` checkpoint to ``out_path`` (model, EMA,
    ``gaussians=prior.state_dict()``, and ``config`` = ``config_record`` + ``train`` + ``image_shape``
    so :func:`load_trained_flow` can rebuild it), keeps a resume checkpoint at :func:`resume_path`
    and resumes from it when its fingerprint (trajectory-relevant config, flow record, a data sample,
    Gaussians, start weights) matches.  Every rank calls this function under ``torchrun``; only rank 0 writes files.

    On a stop signal (:data:`STOP_SIGNALS`, on any rank) every rank finishes the current step, rank 0
    writes the resume checkpoint at that step, and :class:`TrainingStopped` is raised (exit code
    128 + signal number): a rerun resumes from that step.
    """
    t_start = time.perf_counter()
    run = _set_up(flow, dataset, prior, cfg, t_start=t_start, out_path=Path(out_path), init_checkpoint=init_checkpoint,
                  config_record=config_record, metrics_path=metrics_path)
    loop_t0 = time.perf_counter()
    bar = progress(range(run.start_step, cfg.steps), initial=run.start_step, total=cfg.steps, unit="step",
                   logger=logger, desc=str(run.record.get("stage", "train")), disable=not run.info.is_main)
    for step in bar:
        stop_signal = _optimisation_step(run, step)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            _log_window(run, step, bar)
        _checkpoint(run, step, stop_signal)
        if stop_signal:
            _stop(run, done, int(stop_signal))
    return _finish(run, time.perf_counter() - loop_t0)


# ----------------------------------------------------------------------------------------------
# Set-up: process group, optimiser, start state (resume > init checkpoint > data-dependent init)


def _set_up(flow: nn.Module, dataset: Dataset, prior: Any, cfg: TrainConfig, *, t_start: float, out_path: Path,
            init_checkpoint: str | os.PathLike[str] | StartWeights | None, config_record: dict[str, Any] | None,
            metrics_path: str | os.PathLike[str] | None) -> _Run:
    """Everything before the first step: the checks, the device, the optimiser and the start state."""
    if cfg.n_bits is None:
        raise ValueError("train_flow: cfg.n_bits is None; resolve it first (the pretrain stage uses the prepared "
                         "data's bit depth, PreparedData.n_bits)")
    info = ddp.init_distributed(cfg.device)
    if cfg.batch_size % info.world_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by the {info.world_size} processes")
    order = _EpochOrder(len(dataset), cfg.batch_size, cfg.seed)  # checks the set holds one batch
    record = dict(config_record or {})
    start = (init_checkpoint if isinstance(init_checkpoint, StartWeights) or init_checkpoint is None
             else StartWeights.read(init_checkpoint))
    fingerprint = _fingerprint(cfg, record, dataset, prior, start)

    flow = flow.to(info.device).train()
    prior = prior.to(info.device)
    opt_cls = torch.optim.Adamax if cfg.optimizer == "adamax" else torch.optim.Adam
    # foreach: one kernel per op over all tensors (torch picks it on CUDA only; flows have many small tensors)
    optimizer = opt_cls(flow.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    zero = functools.partial(torch.zeros, (), dtype=torch.float64, device=info.device)
    run = _Run(
        cfg=cfg, info=info, flow=flow, model=flow, prior=prior,
        joint=bool(getattr(prior, "trainable", False)), optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, cfg) / cfg.lr),
        ema=None, dataset=dataset,  # type: ignore[arg-type]  # _start_state sets it
        order=order, image_shape=tuple(int(s) for s in flow.image_shape), out_path=out_path,
        state_file=resume_path(out_path), fingerprint=fingerprint, record=record, metrics_path=metrics_path, t_start=t_start,
        counters={"rollbacks": 0, "skipped": 0, "last_loss": math.nan}, window=_Window(zero(), zero()),
    )
    resume = _start_state(run, start)
    if info.world_size > 1:  # every rank read the resume file itself; a rank that could not would silently diverge
        s = torch.tensor([float(run.start_step)], device=info.device)
        if float(ddp.all_reduce_max(s)) != -float(ddp.all_reduce_max(-s)):
            raise RuntimeError(f"ranks disagree on the resume state in {run.state_file} (is the folder on a "
                               "filesystem all ranks see?); delete it to start fresh")
    run.saved_at = run.start_step
    if resume is None:
        _save_resume(run, run.start_step, with_window=False)  # the first rollback target (no data init on resume)
    if info.is_main and metrics_path is not None:
        _trim_metrics(metrics_path, run.start_step)
    run.model = _wrap(flow, cfg, info)
    run.window.t0 = time.perf_counter()  # the first window's img/s counts the loop only
    window = (resume["extra"] or {}).get("window") if resume is not None else None
    if window:  # resumed inside a logging window: the window's sums so far, so its line is the same
        run.window.loss.fill_(window[0])
        run.window.gnorm.fill_(window[1])
        run.window.steps, run.window.seen, run.consecutive_bad = int(window[2]), int(window[3]), int(window[4])
    return run


def _start_state(run: _Run, start: StartWeights | None) -> dict[str, Any] | None:
    """Resume from the rolling checkpoint, else load ``start``, else actnorm's data init; returns the resume state."""
    cfg, flow = run.cfg, run.flow
    resume = _try_resume(run.state_file, run.fingerprint, cfg.steps)
    if resume is not None:
        flow.load_state_dict(resume["model"])
        run.ema = _EMA(flow, cfg.ema_decay)
        run.ema.module.load_state_dict(resume["ema"])
        run.optimizer.load_state_dict(resume["optimizer"])
        run.scheduler.load_state_dict(resume["scheduler"])
        restore_rng_state(resume["rng"])
        if run.joint:
            run.prior.load_resume_state(resume["gaussians"])
        run.start_step = int(resume["step"])
        counters = run.counters
        counters.update({k: resume["extra"].get(k, counters[k]) for k in counters})
        counters["last_loss"] = math.nan if counters["last_loss"] is None else counters["last_loss"]
        logger.info("resumed from step %d of %d%s (%s)", run.start_step, cfg.steps, _where(run.record), run.state_file)
        return resume
    if start is not None:
        flow.load_state_dict(start.weights)
        logger.info("start weights: %s (%s weights, step %s)", start.path,
                    "EMA" if start.uses_ema else "raw", start.checkpoint.get("step"))
    elif run.info.is_main:
        _data_init(run)
    ddp.broadcast_module(flow, src=0)
    run.ema = _EMA(flow, cfg.ema_decay)
    return None


def _data_init(run: _Run) -> None:
    """Actnorm's data-dependent init, on rank 0 only (the caller broadcasts the weights to all ranks)."""
    cfg, dataset = run.cfg, run.dataset
    idx = run.order.permutation(0)[: min(cfg.init_size, len(dataset))]
    x, _ = load_batch(dataset, idx)
    noise, flips = batch_noise(cfg.seed, 0, len(idx), run.image_shape, stream=_STREAM_INIT)
    # Same input pipeline as the loop: per-pixel actnorm must be initialised on flipped images too.
    x = training_inputs(x, noise, flips, n_bits=cfg.n_bits, hflip=cfg.hflip,
                        augment=batch_augment(cfg, 0, len(idx), stream=_STREAM_AUG_INIT))
    with torch.no_grad():
        run.flow.data_init(x.to(run.info.device))
    if not _all_finite(run.flow):  # a NaN here would poison every later step and the rollback target
        raise ValueError(f"actnorm data init gave non-finite weights: the {len(idx)} init images (the "
                         "first of epoch 0's order) contain NaN/Inf or are constant; check the dataset")


def _wrap(flow: nn.Module, cfg: TrainConfig, info: ddp.DistInfo) -> nn.Module:
    """The module the forward pass calls: DDP over ``flow`` with more than one process, compiled when asked."""
    model: nn.Module = flow
    if info.world_size > 1:
        # Buffers (actnorm's `initialized` flags) never change after init: no per-forward buffer sync.
        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                else {"broadcast_buffers": False})
        model = nn.parallel.DistributedDataParallel(
            flow, device_ids=[info.device] if info.device.type == "cuda" else None, **sync
        )
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


# ----------------------------------------------------------------------------------------------
# One step: inputs, loss, backward, the non-finite guard, the optimiser and the EMA


def _inputs(run: _Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous shard of global batch ``step``; noise / flips drawn for the global batch, then sliced."""
    cfg, sl = run.cfg, slice(run.info.rank * run.shard, (run.info.rank + 1) * run.shard)
    x, y = load_batch(run.dataset, run.order.batch(step)[sl])
    noise, flips = batch_noise(cfg.seed, step, cfg.batch_size, run.image_shape)
    x = training_inputs(x, noise[sl], flips[sl], n_bits=cfg.n_bits, hflip=cfg.hflip,
                        augment=batch_augment(cfg, step, cfg.batch_size, sl))
    return x.to(run.info.device, non_blocking=True), y.to(run.info.device, non_blocking=True)


def _optimisation_step(run: _Run, step: int) -> float:
    """One step of Eq. 1 (and Eq. 4 for a trainable prior), or a skip; returns the stop signal's number (0: none)."""
    cfg, prior, optimizer = run.cfg, run.prior, run.optimizer
    x, y = _inputs(run, step)
    for group in optimizer.param_groups:  # scheduler is the record; lr is a pure function of step
        group["lr"] = lr_at(step, cfg)

    with autocast(run.info.device, cfg.precision):
        z, logdet = run.model(x)
    # -log p(x|y) in nats (Eq. 1 with N(mu_y, v_y)), as nfpi.density.flow_nll; the prior term is
    # evaluated outside autocast so that under bf16 only the flow's convolutions run in low precision.
    loss = -(prior.log_prob(z.float(), y) + logdet.float()).mean()
    optimizer.zero_grad(set_to_none=True)
    if run.joint:  # Eq. 4 jointly: the separation term moves the Gaussians (the logged loss stays the NLL)
        prior.zero_grad()
        (loss + prior.penalty()).backward()
        prior.sync_grads()
    else:
        loss.backward()
    max_norm = cfg.grad_clip if cfg.grad_clip is not None else math.inf
    gnorm = torch.nn.utils.clip_grad_norm_(run.flow.parameters(), max_norm, foreach=True)
    # the Gaussians' gradient must be finite too (it is not clipped: their optimiser is Adam)
    check = gnorm + prior.grad_norm().to(gnorm) if run.joint else gnorm
    # Every rank must take the same decisions (DDP), so the flags are reduced with max: skip this
    # step (non-finite)? stop after it (a stop signal reached some rank; its number)?
    bad, stop_signal = ddp.all_reduce_max(torch.stack([
        (~torch.isfinite(loss) | ~torch.isfinite(check)).float(),
        torch.tensor(float(_STOP.signum), device=run.info.device),
    ])).tolist()
    if bool(bad):
        _skip(run, step, loss, gnorm)
    else:
        run.consecutive_bad = 0
        optimizer.step()
        if run.joint:
            prior.step(step)
        run.ema.update(run.flow, step)
        run.window.add(loss, gnorm)
    run.scheduler.step()
    run.steps_run += 1
    run.window.seen += 1
    return stop_signal


def _skip(run: _Run, step: int, loss: torch.Tensor, gnorm: torch.Tensor) -> None:
    """A non-finite step: drop its gradients; after ``max_nonfinite`` in a row, roll back to the last good state."""
    run.optimizer.zero_grad(set_to_none=True)
    run.consecutive_bad += 1
    run.counters["skipped"] += 1
    logger.warning("step %d: non-finite loss (%s) or gradient norm (%s); step skipped (%d in a row)",
                   step, f"{loss.item():.4g}", f"{gnorm.item():.4g}", run.consecutive_bad)
    if run.consecutive_bad >= run.cfg.max_nonfinite:
        _rollback_run(run, step)
        run.consecutive_bad = 0


def _rollback_run(run: _Run, step: int) -> None:
    """:func:`_rollback` of this run's flow, EMA, optimiser and (when trained with the flow) Gaussians."""
    _rollback(run.flow, run.ema, run.optimizer, run.state_file, step, run.counters, run.cfg,
              run.prior if run.joint else None)


# ----------------------------------------------------------------------------------------------
# Logging, checkpoints, stop, and the final checkpoint


def _log_window(run: _Run, step: int, bar: Any) -> None:
    """One line of the metrics log: the window's mean loss and gradient norm over all ranks; the window restarts."""
    from nfpi.density import bits_per_dim

    cfg, win, done = run.cfg, run.window, step + 1
    stats = ddp.all_reduce_mean(torch.stack([win.loss, win.gnorm]))
    dt = time.perf_counter() - win.t0
    n_ok = max(win.steps, 1)
    loss_nats = float(stats[0]) / n_ok if win.steps else math.nan
    run.counters["last_loss"] = loss_nats
    bpd = float(bits_per_dim(torch.tensor(-loss_nats, dtype=torch.float64), run.num_dims, cfg.n_bits))
    rec = {
        "step": done, "loss": loss_nats, "bpd": bpd,
        "lr": lr_at(step, cfg), "grad_norm": float(stats[1]) / n_ok if win.steps else math.nan,
        "images_per_sec": cfg.batch_size * win.seen / max(dt, 1e-9),
        "elapsed": time.perf_counter() - run.t_start, "skipped": run.counters["skipped"],
        "rollbacks": run.counters["rollbacks"],
    }
    if run.info.is_main:
        if run.metrics_path is not None:
            append_jsonl(run.metrics_path, rec)
        bar.set(loss=loss_nats, bpd=rec["bpd"])
        logger.info("step %d/%d  loss %.4f nats  %.4f bits/dim  lr %.2e  |g| %.3g  %.0f img/s",
                    done, cfg.steps, loss_nats, rec["bpd"], rec["lr"], rec["grad_norm"], rec["images_per_sec"])
    win.reset()


def _save_resume(run: _Run, step: int, *, with_window: bool = True) -> None:
    """The rolling resume checkpoint at ``step`` (rank 0 writes; every rank waits), with the logging window's sums."""
    run.saved_at = step
    if run.info.is_main:
        win = run.window
        window = [float(v) for v in (win.loss, win.gnorm, win.steps, win.seen, run.consecutive_bad)] \
            if with_window else None
        save_checkpoint(
            run.state_file, kind="resume", model=run.flow.state_dict(), ema=run.ema.module.state_dict(),
            optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(), step=step,
            rng=capture_rng_state(), gaussians=run.prior.resume_state() if run.joint else run.prior.state_dict(),
            config={"fingerprint": run.fingerprint, "train": run.cfg, "record": run.record},
            extra={**run.counters, "window": window},
        )
    ddp.barrier()


def _checkpoint(run: _Run, step: int, stop_signal: float) -> None:
    """Every ``checkpoint_every`` steps, at the end, and on a stop: the resume checkpoint, never of a bad state."""
    done = step + 1
    if done % run.cfg.checkpoint_every == 0 or done == run.cfg.steps:
        if not _all_finite(run.flow):  # never make a bad state the rollback target
            _rollback_run(run, step)
        else:
            _save_resume(run, done)
    elif stop_signal and _all_finite(run.flow):
        _save_resume(run, done)


def _stop(run: _Run, done: int, signum: int) -> None:
    """A stop signal reached some rank: every rank raises :class:`TrainingStopped` after the step's checkpoint."""
    if run.info.is_main:
        logger.warning("stopped at step %d of %d%s on %s; resume checkpoint %s at step %d: rerun the same "
                       "command to continue from it", done, run.cfg.steps, _where(run.record),
                       signal.Signals(signum).name, run.state_file, run.saved_at)
    raise TrainingStopped(signum, done)


def _finish(run: _Run, loop_s: float) -> TrainResult:
    """The final ``kind="flow"`` checkpoint at ``out_path`` (left as it is when a rerun trained nothing) and the summary."""
    from nfpi.density import bits_per_dim

    cfg, counters = run.cfg, run.counters
    final_step = max(run.start_step, cfg.steps)
    if run.info.is_main and not (run.steps_run == 0 and _written(run.out_path, run.fingerprint, final_step)):
        final_config = {**run.record, "train": to_jsonable(cfg), "image_shape": list(run.image_shape)}
        save_checkpoint(
            run.out_path, kind="flow", model=run.flow.state_dict(), ema=run.ema.module.state_dict(),
            gaussians=run.prior.state_dict(), step=final_step, config=final_config,
            extra={"rollbacks": counters["rollbacks"], "skipped_steps": counters["skipped"],
                   "final_loss": counters["last_loss"], "world_size": run.info.world_size,
                   "fingerprint": run.fingerprint},
        )
    ddp.barrier()
    last = float(counters["last_loss"]) if counters["last_loss"] is not None else math.nan
    return TrainResult(
        steps=final_step,
        final_loss=last,
        final_bpd=float(bits_per_dim(torch.tensor(-last, dtype=torch.float64), run.num_dims, cfg.n_bits)),
        images_per_sec=cfg.batch_size * run.steps_run / loop_s if run.steps_run and loop_s > 0 else 0.0,
        rollbacks=int(counters["rollbacks"]),
        skipped_steps=int(counters["skipped"]),
        wall_s=time.perf_counter() - run.t_start,
        resumed_from=run.start_step,
    )


def _try_resume(state_file: Path, fingerprint: str, steps: int) -> dict[str, Any] | None:
    """Load the resume checkpoint if it exists, is readable, matches ``fingerprint`` and is not past ``steps``."""
    if not state_file.exists():
        return None
    try:
        ck = load_checkpoint(state_file, expected_kind="resume")
    except CheckpointError as exc:
        logger.warning("ignoring unreadable resume checkpoint (%s); starting fresh", exc)
        return None
    if (ck.get("config") or {}).get("fingerprint") != fingerprint:
        logger.warning("%s: written under another config (fingerprint differs); starting fresh", state_file)
        return None
    if int(ck["step"]) > steps:
        logger.warning("%s: at step %d, past train.steps=%d; starting fresh", state_file, ck["step"], steps)
        return None
    return ck


def _rollback(flow: nn.Module, ema: _EMA, optimizer: torch.optim.Optimizer, state_file: Path, step: int,
              counters: dict[str, Any], cfg: TrainConfig, joint_prior: Any = None) -> None:
    """Restore weights, EMA and optimiser from the last good checkpoint; keep the step (skip the bad batches)."""
    counters["rollbacks"] += 1
    if counters["rollbacks"] > cfg.max_rollbacks:
        raise RuntimeError(
            f"training diverged: {counters['rollbacks'] - 1} rollbacks to {state_file} did not help "
            f"(train.max_rollbacks={cfg.max_rollbacks}); lower train.lr or check the data for NaN/Inf"
        )
    ck = load_checkpoint(state_file, expected_kind="resume")
    flow.load_state_dict(ck["model"])
    ema.module.load_state_dict(ck["ema"])
    optimizer.load_state_dict(ck["optimizer"])
    if joint_prior is not None:  # the Gaussians trained with the flow go back with it
        joint_prior.load_resume_state(ck["gaussians"])
    ddp.broadcast_module(flow, src=0)
    logger.warning("step %d: rolled back to the last good checkpoint %s (step %d), rollback %d/%d; "
                   "continuing at step %d past the offending batches",
                   step, state_file, ck["step"], counters["rollbacks"], cfg.max_rollbacks, step + 1)


# ----------------------------------------------------------------------------------------------
# Loading a trained flow


def load_trained_flow(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu",
                      use_ema: bool = True) -> TrainedFlow:
    """Rebuild a trained flow from a ``kind="flow"`` checkpoint via :func:`nfpi.flows.build_flow`.

    The EMA weights are loaded by default (the paper evaluates and samples with them); the class
    Gaussians stored with the flow come back as a :class:`nfpi.density.ClassGaussianPrior`.
    """
    ckpt = load_checkpoint(path, map_location=map_location, expected_kind="flow")
    return _rebuild_trained_flow(ckpt, str(path), map_location=map_location, use_ema=use_ema)


def _rebuild_trained_flow(ckpt: dict[str, Any], path: str, *, map_location: str | torch.device,
                          use_ema: bool) -> TrainedFlow:
    from nfpi.density import ClassGaussianPrior
    from nfpi.flows import FlowConfig, build_flow

    config = ckpt.get("config") or {}
    if "flow" not in config or "image_shape" not in config:
        raise CheckpointError(f"{path}: checkpoint config lacks 'flow' / 'image_shape'; it cannot be rebuilt "
                              "(write it with nfpi.training.train_flow and a config_record holding 'flow')")
    flow_cfg = from_mapping(FlowConfig, config["flow"], where=f"{path}: config.flow")
    image_shape = tuple(int(s) for s in config["image_shape"])
    flow = build_flow(flow_cfg, image_shape=image_shape)
    weights = ckpt["ema"] if use_ema and ckpt.get("ema") is not None else ckpt["model"]
    try:
        flow.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the flow rebuilt from its config (the flow code or "
                              f"config changed since it was written; retrain it): {exc}") from exc
    flow.to(map_location).eval()
    prior = ClassGaussianPrior.from_state_dict(ckpt["gaussians"]) if ckpt.get("gaussians") else None
    if prior is not None:
        prior = prior.to(map_location)
    return TrainedFlow(flow=flow, prior=prior, config=config, image_shape=image_shape)  # type: ignore[arg-type]
