"""The flow training loop: one function for pretraining (N(0, I) prior) and fine-tuning (solved Gaussians).

- :mod:`nfpi.training.config`: the ``pretrain`` / ``finetune`` options and fine-tuning's round schedule
  (torch-free: the workflow's DAG and the config check import it).
- :mod:`nfpi.training.loop`: :func:`train_flow` (Eq. 1, Section 5 "Implementation Details"), resume,
  rollback, the deterministic batches and the trained flow's loader (torch); its names load on first use.

The stages ``pretrain`` and ``finetune`` (:mod:`nfpi.stages`) run it::

    >>> from nfpi.training import TrainConfig, train_flow
    >>> result = train_flow(flow, dataset, prior, TrainConfig(steps=100), out_path="flows/pretrain.pt")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.lazy import lazy_exports
from nfpi.training.config import FinetuneConfig, TrainConfig, round_steps

if TYPE_CHECKING:
    from nfpi.training.loop import (
        STOP_SIGNALS,
        StartWeights,
        TrainedFlow,
        TrainingStopped,
        TrainResult,
        batch_augment,
        batch_noise,
        dequantize_batch,
        global_batch_indices,
        load_batch,
        load_trained_flow,
        lr_at,
        resume_path,
        train_flow,
        training_inputs,
    )

__all__ = [
    "FinetuneConfig",
    "round_steps",
    "TrainConfig",
    "TrainResult",
    "TrainedFlow",
    "TrainingStopped",
    "STOP_SIGNALS",
    "train_flow",
    "load_trained_flow",
    "StartWeights",
    "resume_path",
    "lr_at",
    "global_batch_indices",
    "batch_noise",
    "load_batch",
    "dequantize_batch",
    "training_inputs",
    "batch_augment",
]

# The torch-backed names (and every other name of the former single module) load from nfpi.training.loop.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), rest="loop")
