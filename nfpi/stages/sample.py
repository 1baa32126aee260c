"""Stage ``sample``: class-conditional images from a trained flow at temperature T.

    python -m nfpi sample --config '{"sample": {...}}' --checkpoint flows/<setting>.pt \
        --out samples/<setting>.npz --grid figures/samples_<setting>.png

``z ~ N(mu_y, T^2 v_y)``, ``x = f^{-1}(z)`` (spec, "Sampling at temperature T"); the same number of
images per class, so a classifier trained on them sees balanced labels (CNN-Acc).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.evaluation import SampleConfig
from nfpi.io import atomic_path, atomic_write_json

log = logging.getLogger("nfpi.stages.sample")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", checkpoint=True, data_dir=True, name=True,
                     out=".npz with images (uint8 N,C,H,W) and labels")
    p.add_argument("--grid", default=None, help="PNG grid, one row per class")
    args = p.parse_args(argv)
    start_stage(args, "sample")
    cfg: SampleConfig = parse_slices(args.config, sample=SampleConfig)["sample"]

    from nfpi.cli import load_flow_for_stage
    from nfpi.data import PreparedData
    from nfpi.evaluation import sample_images
    from nfpi.report.figures import sample_grid

    trained, device = load_flow_for_stage(args.checkpoint, cfg.device)
    data = PreparedData(args.data_dir)
    k = trained.prior.means.shape[0]
    labels = torch.arange(k).repeat_interleave(cfg.per_class)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    images = sample_images(trained.flow.to(device), trained.prior.to(device), labels, temperature=cfg.temperature,
                           batch_size=cfg.batch_size, generator=gen, device=device, n_bits=trained.n_bits)
    images_np = images.cpu().numpy().astype(np.uint8)
    labels_np = labels.numpy().astype(np.int64)
    with atomic_path(args.out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images_np, labels=labels_np)
    if args.grid:
        sample_grid(images_np, labels_np, args.grid, per_class=cfg.grid_per_class, class_names=data.class_names,
                    title=f"{args.name}: samples at T={cfg.temperature:g}")
    atomic_write_json(str(args.out).removesuffix(".npz") + ".json", {
        "setting": args.name, "num_images": int(len(labels_np)), "config": cfg, "provenance": provenance(args.config_hash),
    })
    log.info("%d samples (%d per class, T=%g) -> %s", len(labels_np), cfg.per_class, cfg.temperature, args.out)


if __name__ == "__main__":
    main()
