"""Stage ``latent_ot``: the latent-space OT prior (Liu et al. 2018) beside NFPI's Gaussians, on the same latents.

    python -m nfpi latent_ot --config '{"latent_ot": {...}}' --threads 1 \
        --flow results/R/flows/nfpi.pt --latents-train results/R/latents/nfpi/train.parquet \
        --latents-test results/R/latents/nfpi/test.parquet --gaussians results/R/gaussians/nfpi.pt \
        --data-dir results/R/data --out-dir results/R/latent_ot --tables-dir results/R/tables \
        --grid results/R/figures/samples_latent_ot.png

Fits :class:`nfpi.latent_ot.LatentOTPrior` on the NFPI flow's training latents, draws class-conditional
latents from (a) NFPI's class Gaussians ``N(mu_y, T^2 v_y)``, (b) the OT map, (c) the semi-discrete OT
map, decodes them through the flow's inverse (``x = f^{-1}(z)``), and compares them, with real training
data as a reference row:

- latent W2 (exact, ``ot.emd2``) and MMD^2 (Gaussian kernel, median-heuristic width of the held-out
  latents) to the held-out (test) latents of the same class, averaged over classes;
- mode coverage: per class, k-means "modes" of the training latents; a mode is covered when its share
  of the generated latents is at least ``mode_min_share`` times its share of the training latents;
- accuracy of an independent classifier (scikit-learn logistic regression on real training pixels) on
  the generated images, labelled by the class they were generated for;
- memorisation: pixel-space nearest-neighbour distance of each generated image to the training set, and
  the fraction of exact copies of a training image.

Writes ``<out-dir>/metrics.json`` (+ ``config.json``, ``prior.pt``, ``samples.npz``), the table
``<tables-dir>/latent_ot.{md,csv,tex,sources.json}`` and the sample grid PNG, all atomically.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.io import atomic_path, atomic_write_json
from nfpi.latent_ot import (
    METHODS,
    LatentOTConfig,
    by_class,
    class_modes,
    comparison_table,
    fit_latent_ot,
    grid_figure,
    image_metrics,
    latent_metrics,
    median_bandwidth,
)
from nfpi.seeds import stream_seed

log = logging.getLogger("nfpi.stages.latent_ot")


# Long (137 lines): the stage reads its inputs, fits, samples every method, measures and writes nine outputs;
# each step is one library call (nfpi.latent_ot), the length is the list of inputs and outputs.
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", data_dir=True, tables_dir=True,
                     out_dir="latent_ot/: metrics.json, config.json, prior.pt, samples.npz")
    p.add_argument("--flow", required=True, help="the NFPI flow checkpoint (flows/nfpi.pt)")
    p.add_argument("--latents-train", required=True, help="its training latents (latents/nfpi/train.parquet)")
    p.add_argument("--latents-test", required=True, help="its held-out latents (latents/nfpi/test.parquet)")
    p.add_argument("--gaussians", default=None, help="gaussians/nfpi.pt (else the flow checkpoint's own Gaussians)")
    p.add_argument("--grid", required=True, help="sample grid PNG")
    args = p.parse_args(argv)
    start_stage(args, "latent_ot")
    cfg: LatentOTConfig = parse_slices(args.config, latent_ot=LatentOTConfig)["latent_ot"]
    t_start = time.perf_counter()

    from sklearn.linear_model import LogisticRegression

    from nfpi.data import PreparedData
    from nfpi.density import load_gaussians
    from nfpi.evaluation import decode_latents
    from nfpi.latents import open_latents
    from nfpi.report.tables import write_table
    from nfpi.runtime import select_device
    from nfpi.training import load_trained_flow

    device = select_device(cfg.device)
    data = PreparedData(args.data_dir)
    k = data.num_classes
    trained = load_trained_flow(args.flow, map_location=device)
    prior_g = trained.prior
    if args.gaussians:
        prior_g, _ = load_gaussians(args.gaussians)
    if prior_g is None:
        raise ValueError(f"{args.flow}: the checkpoint has no class Gaussians; pass --gaussians gaussians/nfpi.pt")
    prior_g = prior_g.to("cpu", torch.float64)

    ztr_np, ytr_np = open_latents(args.latents_train).read_all()
    zte_np, yte_np = open_latents(args.latents_test).read_all()
    ztr, ytr = torch.from_numpy(ztr_np).double(), torch.from_numpy(ytr_np)
    zte, yte = torch.from_numpy(zte_np).double(), torch.from_numpy(yte_np)
    if ztr.shape[1] != prior_g.dim:
        raise ValueError(f"{args.latents_train}: latents have d={ztr.shape[1]} but the Gaussians d={prior_g.dim}; "
                         "both must come from the same flow (latents/nfpi and gaussians/nfpi)")
    log.info("latents: train %s, test %s, K=%d, d=%d", tuple(ztr.shape), tuple(zte.shape), k, ztr.shape[1])

    # -- fit (float32: the latents are float32 and the networks are small)
    prior, report = fit_latent_ot(ztr.float(), ytr, k, cfg, where=str(args.latents_train))
    prior = prior.cpu()
    out_dir = Path(args.out_dir)
    prior.save(out_dir / "prior.pt")

    # -- samples of every method, same count per class, classes in blocks
    n = cfg.samples_per_class
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "latent_ot.samples"))
    labels = torch.arange(k).repeat_interleave(n)
    latents: dict[str, Tensor] = {"nfpi": prior_g.sample(labels, cfg.temperature, gen)}
    latents["ot_map"] = prior.sample(n, gen)[0].double()
    if cfg.semi_discrete_samples > 0:
        latents["ot_semi_discrete"] = prior.sample_semi_discrete(n, gen)[0].double()
    # reference: real training latents (n per class, with replacement only if a class is smaller)
    pick = []
    for c in range(k):  # K index draws, not a hot path
        idx = torch.nonzero(ytr == c).flatten()
        sel = torch.randperm(len(idx), generator=gen)[:n] if len(idx) >= n else torch.randint(len(idx), (n,), generator=gen)
        pick.append(idx[sel])
    pick_t = torch.cat(pick)
    latents["real_train"] = ztr[pick_t]

    train_images = np.asarray(data.images("train"))
    train_labels = data.labels("train")
    if len(train_images) != len(ytr) or not np.array_equal(train_labels, ytr_np):
        raise ValueError(f"{args.latents_train}: rows do not match {args.data_dir} train split "
                         "(extract the latents from this prepared data)")
    images: dict[str, np.ndarray] = {}
    flow = trained.flow.to(device)
    for name, z in latents.items():
        images[name] = train_images[pick_t.numpy()] if name == "real_train" else decode_latents(flow, z, device=device, n_bits=trained.n_bits).numpy()

    # -- evaluation context: held-out latents, modes, kernel widths, the independent classifier
    test_by, train_by = by_class(zte, yte, k), by_class(ztr, ytr, k)
    small = [c for c, t in test_by.items() if len(t) < 2]
    if small:
        raise ValueError(f"{args.latents_test}: classes {small} have fewer than 2 held-out latents; W2/MMD need more")
    bandwidth = {c: median_bandwidth(t[: cfg.eval_points]) for c, t in test_by.items()}
    modes = class_modes(train_by, cfg.mode_clusters, cfg.seed)
    train_flat = train_images.reshape(len(train_images), -1).astype(np.float64) / 255.0
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(train_flat, train_labels)
    test_images = np.asarray(data.images("test"))
    real_test = image_metrics(test_images, data.labels("test"), clf, train_flat)
    log.info("independent classifier: real test accuracy %.4f", real_test["classifier_acc"])

    methods: dict[str, Any] = {}
    labels_np = labels.numpy()
    for name, z in latents.items():
        m = latent_metrics(z, labels, test_by, train_by, cfg, modes, bandwidth)
        m.update(image_metrics(images[name], labels_np, clf, train_flat))
        m["label"] = METHODS[name]
        methods[name] = m
        log.info("%-28s W2 %.3f  MMD2 %.4f  modes %.2f  clf acc %.3f  NN %.3f  copies %.2f", METHODS[name],
                 m["w2"], m["mmd2"], m["mode_coverage"], m["classifier_acc"], m["nn_train_mean"], m["copy_fraction"])

    # -- outputs
    with atomic_path(out_dir / "samples.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, labels=labels_np, **{f"images_{n_}": im for n_, im in images.items()},
                     **{f"latents_{n_}": z.float().numpy() for n_, z in latents.items()})
    grid_labels = labels_np
    panels = {METHODS[n_]: images[n_] for n_ in latents}
    grid_figure(panels, grid_labels, cfg.grid_per_class, args.grid,
                f"class-conditional samples on the NFPI flow's latents (NFPI at T={cfg.temperature:g})")

    prov = provenance(args.config_hash)
    metrics = {
        "stage": "latent_ot",
        "methods": methods,
        "real_test": real_test,
        "fit": report,
        "num_classes": k,
        "dim": int(ztr.shape[1]),
        "train_latents_per_class": [int((ytr == c).sum()) for c in range(k)],
        "test_latents_per_class": [int((yte == c).sum()) for c in range(k)],
        "samples_per_class": n,
        "seconds_total": time.perf_counter() - t_start,
        "inputs": {"flow": args.flow, "latents_train": args.latents_train, "latents_test": args.latents_test,
                   "gaussians": args.gaussians, "data_dir": args.data_dir},
        "config": cfg,
        "provenance": prov,
    }
    src = str(out_dir / "metrics.json")
    stamp = {"config_hash": args.config_hash or "none", "nfpi_version": prov["nfpi_version"],
             "git_revision": prov["git_revision"]}
    table = comparison_table(methods, real_test, cfg, fit_seconds=report.seconds, samples_per_class=n, source=src,
                             stamp=stamp)
    write_table(table, args.tables_dir)
    atomic_write_json(out_dir / "config.json", {"latent_ot": cfg})
    atomic_write_json(out_dir / "metrics.json", metrics)
    log.info("latent OT done in %.1fs -> %s", metrics["seconds_total"], src)


if __name__ == "__main__":
    main()
