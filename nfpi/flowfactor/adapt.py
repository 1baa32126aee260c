"""A transformation-aware copy of a trained flow: the pipeline's training loop on plain + transformed images.

    >>> adapt_flow("flows/nfpi.pt", train_x, train_y, cfg, Path("flowfactor/adapted_flow.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfpi.flowfactor.fields import FlowFactorConfig, random_transform_copies
from nfpi.seeds import stream_seed

__all__ = ["adapt_flow"]

log = logging.getLogger(__name__)


def adapt_flow(flow_path: str | Path, train_x: Tensor, train_y: Tensor, cfg: FlowFactorConfig, out_path: Path,
               *, metrics_path: Path | None = None) -> dict[str, Any]:
    """Fine-tune a copy of the trained flow at ``flow_path`` on plain + randomly transformed training images.

    A flow trained on plain digits only has never seen ink in the border pixels that rotation and
    zoom fill: it rates rotated digits at thousands of bits/dim and decoding latents near theirs gives
    saturated images, so no latent field can follow the transformation (docs/flowfactor.md).  The
    adaptation set is the training images plus ``adapt_copies`` copies of each under one random
    transformation by a real amount in ``[0, adapt_range * steps]`` (:func:`random_transform_copies`);
    the loop is the pipeline's own :func:`nfpi.training.train_flow` (Eq. 1 with the flow's own prior,
    the class Gaussians of ``flows/nfpi.pt`` or N(0, I)), started from the input flow's EMA weights.
    It writes ``out_path`` (a ``kind="flow"`` checkpoint) and resumes from ``<out_path>.resume/``
    after an interruption (the fingerprint covers the config, the adaptation set and the input flow's
    bytes, so a changed input starts afresh).  Returns the :class:`nfpi.training.TrainResult` as a dict.
    """
    from torch.utils.data import TensorDataset

    from nfpi.density import ClassGaussianPrior
    from nfpi.training import StartWeights, TrainConfig, resume_path, train_flow

    if metrics_path is not None and metrics_path.exists() and not resume_path(out_path).exists():
        metrics_path.unlink()  # a fresh adaptation: do not append to an earlier run's curve
    start = StartWeights.read(flow_path)  # one read: its config, prior and the start weights
    trained = start.trained_flow()
    num_classes = int(train_y.max()) + 1
    prior = trained.prior if trained.prior is not None else ClassGaussianPrior.standard(num_classes, train_x[0].numel())
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "flowfactor.adapt"))
    tx, ty = random_transform_copies(train_x, train_y, cfg, copies=cfg.adapt_copies,
                                        max_amount=cfg.adapt_range * cfg.steps, generator=gen)
    dataset = TensorDataset(torch.cat([train_x, tx]), torch.cat([train_y, ty]).long())
    tcfg = TrainConfig(
        steps=cfg.adapt_steps, batch_size=min(cfg.adapt_batch_size, len(dataset)), lr=cfg.adapt_lr,
        warmup_steps=max(1, cfg.adapt_steps // 10), optimizer="adamax",
        ema_decay=0.99,  # a short run: the EMA must follow the adaptation, not average in the input weights
        checkpoint_every=max(1, cfg.adapt_steps // 3), log_every=max(1, min(50, cfg.adapt_steps)), seed=cfg.seed,
        device="cpu",  # the stage's other work is CPU-bound and small (digits); latents stay on the CPU
    )
    record = {k: v for k, v in trained.config.items() if k not in ("train", "image_shape")}
    record.update({"stage": "flowfactor-adapt", "adapted_from": str(flow_path),
                   "adaptation": {k: getattr(cfg, k) for k in ("transformations", "rotate_deg", "scale_step",
                                                                "intensity_step", "steps", "adapt_copies",
                                                                "adapt_range")}})
    log.info("adapting %s: %d steps on %d images (%d plain + %d transformed)", flow_path, cfg.adapt_steps,
             len(dataset), len(train_x), len(tx))
    res = train_flow(trained.flow.float().cpu(), dataset, prior, tcfg, out_path=out_path,
                     init_checkpoint=start, config_record=record, metrics_path=metrics_path)
    return dataclasses.asdict(res)
