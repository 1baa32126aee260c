"""Stage ``tsne``: Fig. 1 of the paper, t-SNE panels of the latent space.

    python -m nfpi tsne --config '{"figures": {...}}' --latents latents/pretrain/train.parquet \
        --gaussians baseline1=gaussians/baseline1.pt small=gaussians/lam10.pt large=gaussians/lam1000.pt \
        --data-dir D --out figures/fig1_tsne.png

(a) the pretrained flow's training latents; (b) samples of the class Gaussians estimated from
them (Baseline 1); (c), (d) samples of the NFPI Gaussians for a small and a large lambda.  Each
panel is its own openTSNE embedding (PCA initialisation, fixed seed), coloured by class.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.report.figures import FiguresConfig
from nfpi.io import atomic_write_json

log = logging.getLogger("nfpi.stages.tsne")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", data_dir=True, out=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--gaussians", nargs="+", required=True, help="label=path pairs, in panel order")
    p.add_argument("--run", default=None, help="the run's name: the title of a user's npz / ImageFolder data")
    args = p.parse_args(argv)
    start_stage(args, "tsne")
    cfg: FiguresConfig = parse_slices(args.config, figures=FiguresConfig)["figures"]

    from nfpi.data import PreparedData, dataset_title
    from nfpi.density import load_gaussians
    from nfpi.report.figures import tsne_embed, tsne_panels
    from nfpi.latents import open_latents

    data = PreparedData(args.data_dir)
    z, y = open_latents(args.latents).read_all()
    rng = np.random.default_rng(cfg.seed)
    # A class-balanced subset of the data latents: panel (a).
    idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: cfg.tsne_per_class] for c in np.unique(y)])
    panels = [("(a) latents of the training data", z[idx], y[idx])]
    gen = torch.Generator().manual_seed(cfg.seed)
    letters = "bcdefgh"
    labels = torch.arange(data.num_classes).repeat_interleave(cfg.tsne_per_class)
    for i, item in enumerate(args.gaussians):
        name, _, path = item.rpartition("=")  # labels may contain "=" (lambda=10)
        prior, _ = load_gaussians(path)
        zs = prior.sample(labels, temperature=1.0, generator=gen).numpy()
        panels.append((f"({letters[i]}) samples: {name}", zs, labels.numpy()))
    embedded = []
    for title, pts, lab in panels:
        log.info("t-SNE of %d points for %s", len(pts), title)
        embedded.append((title, tsne_embed(pts, seed=cfg.seed, perplexity=cfg.perplexity, desc=f"t-SNE {title}"), lab))
    tsne_panels(embedded, args.out, class_names=data.class_names,
                title=f"Fig. 1: t-SNE of the latent space ({dataset_title(data.meta.get('name', ''), args.run)})")
    atomic_write_json(str(args.out).removesuffix(".png") + ".json",
                      {"panels": [t for t, _, _ in panels], "config": cfg, "provenance": provenance(args.config_hash)})


if __name__ == "__main__":
    main()
