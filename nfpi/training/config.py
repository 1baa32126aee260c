"""The flow training loop's options (``pretrain``, ``finetune``) and fine-tuning's round schedule, without torch
(the workflow's DAG and the config check read them here; :mod:`nfpi.training.loop` trains).

    >>> FinetuneConfig(steps=10, rounds=3).loop_config(1, round_steps(10, 3)[1], n_bits=8).steps
    3
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nfpi.config import ConfigError
from nfpi.seeds import stream_seed

if TYPE_CHECKING:
    from nfpi.flow_augment import FlowAugment

__all__ = ["TrainConfig", "FinetuneConfig", "round_steps"]


@dataclass(frozen=True)
class TrainConfig:
    """Options of the flow training loop: the pipeline's ``pretrain`` / ``finetune`` ``train`` slices.

    Defaults follow the paper (Section 5, "Implementation Details": Adamax, lr 1e-2 linearly warmed
    up over the first 1000 iterations, exponential moving average of the weights).
    """

    steps: int = 500  # optimiser steps in total (a resumed run continues up to this count)
    batch_size: int = 64  # global batch (all ranks together); must be divisible by the number of processes
    lr: float = 1e-2  # peak learning rate (paper: 1e-2)
    warmup_steps: int = 1000  # linear warmup from lr/warmup_steps to lr, then constant (paper: 1000)
    optimizer: Literal["adamax", "adam"] = "adamax"  # paper: Adamax
    weight_decay: float = 0.0  # L2 penalty added to the gradient (torch's Adamax/Adam convention)
    ema_decay: float = 0.999  # EMA decay; effective decay min(ema_decay, (1+t)/(10+t)) so short runs' EMA is usable
    grad_clip: float | None = 50.0  # max global gradient norm; None: no clipping (the norm is still logged)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast on CUDA and bf16-capable CPUs (else fp32); weights stay fp32
    hflip: bool = False  # random horizontal flips (drawn per image from the (seed, step) generator)
    crop_pad: int = 0  # random translation by -crop_pad..crop_pad px per axis, edge extended (pad + random crop)
    rotate_deg: float = 0.0  # random rotation by U(-rotate_deg, rotate_deg) degrees (nearest neighbour)
    brightness: float = 0.0  # colour jitter: brightness factor U(max(0, 1-s), 1+s) (0: off)
    contrast: float = 0.0  # colour jitter: contrast factor U(max(0, 1-s), 1+s) (0: off)
    saturation: float = 0.0  # colour jitter: saturation factor U(max(0, 1-s), 1+s) (0: off; no-op on grey)
    n_bits: int | None = 8  # bits per channel of the modelled data (bits/dim are reported for it); null: the data's depth
    init_size: int = 256  # images used by actnorm's data-dependent init (the first of epoch 0's order)
    checkpoint_every: int = 200  # steps between rolling resume checkpoints (also the rollback target)
    log_every: int = 20  # steps between metrics lines (JSONL + log)
    max_nonfinite: int = 5  # consecutive non-finite steps (skipped) before rolling back to the last checkpoint
    max_rollbacks: int = 3  # rollbacks before giving up with an error (the run is diverging, lower lr)
    seed: int = 0  # seeds data order, dequantisation noise, flips, init batch
    device: str = "auto"  # "auto" (CUDA if visible, LOCAL_RANK under torchrun), "cpu", "cuda"
    compile: bool = False  # torch.compile the flow's forward (GPU runs; compilation costs minutes)

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 0, "train.steps must be >= 0"),
            (self.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.lr > 0, "train.lr must be > 0"),
            (self.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
            (0.0 <= self.ema_decay < 1.0, "train.ema_decay must be in [0, 1)"),
            (self.grad_clip is None or self.grad_clip > 0, "train.grad_clip must be > 0 or null"),
            (self.n_bits is None or 1 <= self.n_bits <= 8, "train.n_bits must be in 1..8 or null"),
            (self.init_size >= 1, "train.init_size must be >= 1"),
            (self.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
            (self.log_every >= 1, "train.log_every must be >= 1"),
            (self.max_nonfinite >= 1, "train.max_nonfinite must be >= 1"),
            (self.max_rollbacks >= 0, "train.max_rollbacks must be >= 0"),
            (self.crop_pad >= 0, "train.crop_pad must be >= 0"),
            (0.0 <= self.rotate_deg <= 180.0, "train.rotate_deg must be in [0, 180]"),
            (min(self.brightness, self.contrast, self.saturation) >= 0.0,
             "train.brightness, train.contrast and train.saturation must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def augment(self) -> FlowAugment:
        """The flow-training augmentations besides ``hflip`` (:mod:`nfpi.flow_augment`)."""
        from nfpi.flow_augment import FlowAugment  # torch: only the training loop asks

        return FlowAugment(self.crop_pad, self.rotate_deg, self.brightness, self.contrast, self.saturation)


# Fine-tuning's alternating schedule (stage ``finetune``; Eq. 4 by block coordinate descent).


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """The ``finetune`` config slice: the training loop's options plus the alternating schedule.

    ``n_bits`` is inherited from the pretrained flow (a different explicit value is an error).
    """

    rounds: int = 1  # Gaussian solves during fine-tuning (Eq. 4 by block coordinate descent); 1: solve once

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.rounds > max(self.steps, 1):
            raise ConfigError(f"finetune.rounds={self.rounds}: must be in 1..finetune.steps ({self.steps})")

    def loop_config(self, round_index: int, steps: int, n_bits: int) -> TrainConfig:
        """The training loop's options for one round: its share of the steps, its own seed stream."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        seed = stream_seed(self.seed, "finetune.round", round_index)
        return TrainConfig(**{**fields, "steps": steps, "seed": seed, "n_bits": n_bits})



def round_steps(steps: int, rounds: int) -> list[int]:
    """Optimiser steps per round: ``steps`` split as evenly as possible, earlier rounds first."""
    base, extra = divmod(steps, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]
