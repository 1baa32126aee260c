"""Stage ``augment``: NF-augmented training images (Tables 5-6, Fig. 2).

    python -m nfpi augment --config '{"augment": {...}}' --checkpoint flows/nfpi.pt \
        --latents latents/nfpi/train.parquet --data-dir D --out augment/nf_train.npz --figure figures/fig2.png

For two training images of class y with latents z_a, z_b and U_y the top principal axes of class
y's training latents, ``z' = z_a + U_y U_y^T (beta (z_b - z_a))``, ``beta ~ U(0, beta_max)``, and the new
image is ``f^{-1}(z')`` with label y (spec; the paper's "mixup in the span of the PCA axes of their
classwise gaussians").  The images are written once and reused by every classifier run.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.augment import AugmentConfig
from nfpi.io import atomic_path, atomic_write_json
from nfpi.seeds import stream_seed

log = logging.getLogger("nfpi.stages.augment")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", checkpoint=True, data_dir=True, out=True)
    p.add_argument("--latents", required=True, help="training latents of the same flow (for the class PCA axes)")
    p.add_argument("--figure", default=None)
    args = p.parse_args(argv)
    start_stage(args, "augment")
    cfg: AugmentConfig = parse_slices(args.config, augment=AugmentConfig)["augment"]

    from nfpi.augment import class_principal_axes, nf_augment
    from nfpi.data import PreparedData
    from nfpi.report.figures import augmentation_figure
    from nfpi.latents import open_latents
    from nfpi.cli import load_flow_for_stage

    trained, device = load_flow_for_stage(args.checkpoint, cfg.device, need_prior=False)
    flow = trained.flow
    data = PreparedData(args.data_dir)
    z, y = open_latents(args.latents).read_all()
    axes = class_principal_axes(torch.from_numpy(z).double(), torch.from_numpy(y), data.num_classes, cfg.num_axes)
    images = torch.from_numpy(np.asarray(data.images("train")))
    labels = torch.from_numpy(np.asarray(data.labels("train")))
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(z) != len(labels) or not np.array_equal(y, labels.numpy()):
        raise ValueError(f"{args.latents}: latents do not match the training split of {args.data_dir} row by row; "
                         "rerun the extract stage")
    # The training latents are already on disk (same order as the images): no forward pass needed.
    zt = torch.from_numpy(z)
    aug_x, aug_y = nf_augment(flow, images, labels, axes, copies=cfg.copies, beta_max=cfg.beta_max,
                              batch_size=cfg.batch_size, generator=gen, device=device, latents=zt,
                              n_bits=trained.n_bits)
    with atomic_path(args.out, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=aug_x.cpu().numpy().astype(np.uint8), labels=aug_y.cpu().numpy().astype(np.int64))
    log.info("%d NF-augmented images (%d per training image, beta_max=%g, %d axes) -> %s", len(aug_y), cfg.copies,
             cfg.beta_max, cfg.num_axes, args.out)
    if args.figure:
        # Fig. 2: a few originals (different classes) beside several augmented variants of each.
        pick = torch.stack([torch.nonzero(labels == c)[0, 0] for c in range(min(cfg.figure_rows, data.num_classes))])
        g2 = torch.Generator().manual_seed(stream_seed(cfg.seed, "augment.figure"))
        variants = []
        for _ in range(cfg.figure_variants):
            # Pair the chosen originals with random same-class partners from the whole training set.
            vx, _ = nf_augment(flow, images, labels, axes, copies=1, beta_max=cfg.beta_max, batch_size=cfg.batch_size,
                               generator=g2, device=device, indices=pick, latents=zt, n_bits=trained.n_bits)
            variants.append(vx.cpu().numpy())
        augmentation_figure(images[pick].numpy(), np.stack(variants, axis=1), labels[pick].numpy(), args.figure,
                            class_names=data.class_names,
                            title=f"NF augmentation (PCA-axis latent mixup, beta_max={cfg.beta_max:g})")
    atomic_write_json(str(args.out).removesuffix(".npz") + ".json", {
        "num_images": int(len(aug_y)), "config": cfg, "provenance": provenance(args.config_hash)})


if __name__ == "__main__":
    main()
