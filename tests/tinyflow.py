"""A tiny pretrained digits flow for the stage tests (finetune, lambda path): seconds, through the stage CLIs."""

from __future__ import annotations

import json
from pathlib import Path


#: A tiny digits flow (1 step per level, 8 hidden channels): what the stage tests pretrain in seconds.
TINY_FLOW = {"preset": "digits", "hidden": 8, "steps": 1, "actnorm_per_pixel": False}


def tiny_pretrained(root: Path) -> tuple[Path, Path]:
    """Prepared digits (12 training / 4 test images a class) under ``root/data`` and a 4-bit flow pretrained
    for 8 steps at ``root/pretrain.pt``, through the stage entry points; returns ``(data_dir, checkpoint)``."""
    from nfpi.stages import pretrain
    from nfpi.data import DataConfig, prepare_dataset

    data = root / "data"
    prepare_dataset(DataConfig(max_train_per_class=12, max_test_per_class=4), data)
    pre = root / "pretrain.pt"
    train = {"steps": 8, "batch_size": 16, "warmup_steps": 2, "checkpoint_every": 4, "log_every": 2, "n_bits": 4}
    pretrain.main(["--config", json.dumps({"flow": TINY_FLOW, "train": train}), "--data-dir", str(data),
                   "--out", str(pre), "--metrics", str(root / "pretrain.json")])
    return data, pre


def train_latents(data: Path, checkpoint: Path, out: Path) -> Path:
    """The training split's latents of the flow at ``checkpoint`` (dequantised, 4-bit) written to ``out``
    (what the workflow's extract stage gives the solve stage)."""
    from nfpi.data import PreparedData
    from nfpi.evaluation import extract_latents
    from nfpi.latents import write_latents
    from nfpi.training import load_trained_flow

    trained = load_trained_flow(checkpoint)
    d = PreparedData(data)
    write_latents(out, extract_latents(trained.flow, d.dataset("train"), dequantize=True, n_bits=4),
                  dim=trained.flow.latent_dim, split="train", num_rows=len(d.labels("train")))
    return out
