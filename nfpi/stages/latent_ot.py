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
from nfpi.progress import progress
from nfpi.latent_ot import (
    LatentOTConfig,
    LatentOTPrior,
    fit_latent_ot,
    median_bandwidth,
    mmd2,
    mode_coverage,
    nearest_neighbour_distance,
    wasserstein2,
)

log = logging.getLogger("nfpi.stages.latent_ot")

METHODS: dict[str, str] = {
    "nfpi": "NFPI Gaussians",
    "ot_map": "Latent OT (map)",
    "ot_semi_discrete": "Latent OT (semi-discrete)",
    "real_train": "Real training data (reference)",
}


def decode(flow: torch.nn.Module, z: Tensor, *, batch_size: int = 256, device: torch.device | str = "cpu",
           n_bits: int = 8) -> Tensor:
    """``x = f^{-1}(z)`` for latents ``z [B, D]`` as uint8 images ``[B, C, H, W]`` (spec, "Sampling");
    ``n_bits``: the bits per channel the flow was trained on."""
    from nfpi.density import postprocess

    out = []
    with torch.inference_mode():
        for s in progress(range(0, len(z), batch_size), desc="decode latents", unit="batch", logger=log):
            x = flow.inverse(z[s:s + batch_size].to(device, torch.float32))
            out.append(postprocess(x.float().cpu(), n_bits=n_bits))
    return torch.cat(out)


def latent_metrics(z: Tensor, y: Tensor, test: dict[int, Tensor], train: dict[int, Tensor], cfg: LatentOTConfig,
                   modes: dict[int, tuple[Tensor, Tensor]], bandwidth: dict[int, float]) -> dict[str, Any]:
    """W2, MMD^2, mode coverage and latent nearest-neighbour distance per class and their means."""
    per: dict[str, list[float]] = {"w2": [], "mmd2": [], "mode_coverage": [], "latent_nn_train": []}
    for k in sorted(test):  # few classes, each an exact LP on <= eval_points points: not a hot path
        zk = z[y == k][: cfg.eval_points]
        tk = test[k][: cfg.eval_points]
        per["w2"].append(wasserstein2(zk, tk))
        per["mmd2"].append(mmd2(zk, tk, bandwidth[k]))
        centres, share = modes[k]
        covered, _ = mode_coverage(zk, centres, share, cfg.mode_min_share)
        per["mode_coverage"].append(float(covered.double().mean()))
        per["latent_nn_train"].append(float(nearest_neighbour_distance(zk, train[k]).median()))
    return {**{k: float(np.mean(v)) for k, v in per.items()}, "per_class": per}


def image_metrics(images: np.ndarray, labels: np.ndarray, clf: Any, train_flat: np.ndarray) -> dict[str, Any]:
    """Classifier accuracy (labels = the class generated for) and pixel NN distance to the training set."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    pred = clf.predict(flat)
    nn = nearest_neighbour_distance(torch.from_numpy(flat), torch.from_numpy(train_flat)).numpy()
    return {
        "classifier_acc": float((pred == labels).mean()),
        "classifier_acc_per_class": [float((pred[labels == k] == k).mean()) for k in np.unique(labels)],
        "nn_train_mean": float(nn.mean()),
        "nn_train_median": float(np.median(nn)),
        # exact uint8 copies of a training image (distinct images differ by >= 1/255 in some pixel)
        "copy_fraction": float((nn < 0.5 / 255).mean()),
    }


def grid_figure(panels: dict[str, np.ndarray], labels: np.ndarray, per_class: int, path: str | Path,
                title: str) -> None:
    """One panel per method, one row per class, ``per_class`` images each (side by side, one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nfpi.figures import save_figure

    classes = np.unique(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * per_class * 0.45, len(classes) * 0.45 + 0.6),
                             squeeze=False, layout="constrained")
    for ax, (name, images) in zip(axes[0], panels.items()):
        c, h, w = images.shape[1:]
        canvas = np.full((len(classes) * (h + 1), per_class * (w + 1), c), 255, np.uint8)
        for r, k in enumerate(classes):
            idx = np.flatnonzero(labels == k)[:per_class]
            for j, i in enumerate(idx):
                canvas[r * (h + 1): r * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = images[i].transpose(1, 2, 0)
        ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([(h + 1) * r + h / 2 for r in range(len(classes))])
        ax.set_yticklabels([str(int(k)) for k in classes], fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _by_class(z: Tensor, y: Tensor, k: int) -> dict[int, Tensor]:
    return {c: z[y == c] for c in range(k)}


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "")
    p.add_argument("--flow", required=True, help="the NFPI flow checkpoint (flows/nfpi.pt)")
    p.add_argument("--latents-train", required=True, help="its training latents (latents/nfpi/train.parquet)")
    p.add_argument("--latents-test", required=True, help="its held-out latents (latents/nfpi/test.parquet)")
    p.add_argument("--gaussians", default=None, help="gaussians/nfpi.pt (else the flow checkpoint's own Gaussians)")
    p.add_argument("--data-dir", required=True, help="the prepared data folder (data/)")
    p.add_argument("--out-dir", required=True, help="latent_ot/: metrics.json, config.json, prior.pt, samples.npz")
    p.add_argument("--tables-dir", required=True, help="tables/: latent_ot.{md,csv,tex,sources.json}")
    p.add_argument("--grid", required=True, help="sample grid PNG")
    args = p.parse_args(argv)
    start_stage(args, "latent_ot")
    cfg: LatentOTConfig = parse_slices(args.config, latent_ot=LatentOTConfig)["latent_ot"]
    t_start = time.perf_counter()

    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression

    from nfpi.data import PreparedData
    from nfpi.density import ClassGaussianPrior
    from nfpi.latents import open_latents
    from nfpi.runtime import select_device
    from nfpi.tables import Cell, Table, write_table
    from nfpi.training import load_trained_flow

    device = select_device(cfg.device)
    data = PreparedData(args.data_dir)
    k = data.num_classes
    trained = load_trained_flow(args.flow, map_location=device)
    prior_g = trained.prior
    if args.gaussians:
        state = torch.load(args.gaussians, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "prior" not in state:
            raise ValueError(f"{args.gaussians}: not a gaussians file (no 'prior' key); rerun the solve stage")
        prior_g = ClassGaussianPrior.from_state_dict(state["prior"])
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
    gen = torch.Generator().manual_seed(cfg.seed + 1)
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
        images[name] = train_images[pick_t.numpy()] if name == "real_train" else decode(flow, z, device=device, n_bits=trained.n_bits).numpy()

    # -- evaluation context: held-out latents, modes, kernel widths, the independent classifier
    test_by, train_by = _by_class(zte, yte, k), _by_class(ztr, ytr, k)
    small = [c for c, t in test_by.items() if len(t) < 2]
    if small:
        raise ValueError(f"{args.latents_test}: classes {small} have fewer than 2 held-out latents; W2/MMD need more")
    bandwidth = {c: median_bandwidth(t[: cfg.eval_points]) for c, t in test_by.items()}
    modes: dict[int, tuple[Tensor, Tensor]] = {}
    for c, t in train_by.items():
        n_modes = min(cfg.mode_clusters, len(t))
        km = KMeans(n_clusters=n_modes, n_init=4, random_state=cfg.seed).fit(t.numpy())
        share = torch.from_numpy(np.bincount(km.labels_, minlength=n_modes) / len(t))
        modes[c] = (torch.from_numpy(km.cluster_centers_), share)
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
        "stage": "transport",
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
    cols = ["Method", "latent W2 (test) ↓", "MMD² (test) ↓", "Mode coverage ↑", "Classifier acc. (%) ↑",
            "NN dist. to train", "Exact copies (%)"]
    rows = []
    for name, m in methods.items():
        rows.append([Cell(m["label"]),
                     Cell(m["w2"], src, f"methods.{name}.w2", "{:.3f}"),
                     Cell(m["mmd2"], src, f"methods.{name}.mmd2", "{:.4f}"),
                     Cell(m["mode_coverage"], src, f"methods.{name}.mode_coverage", "{:.2f}"),
                     Cell(100 * m["classifier_acc"], src, f"methods.{name}.classifier_acc", "{:.1f}"),
                     Cell(m["nn_train_mean"], src, f"methods.{name}.nn_train_mean", "{:.3f}"),
                     Cell(100 * m["copy_fraction"], src, f"methods.{name}.copy_fraction", "{:.1f}")])
    rows.append([Cell("Real test images (reference)"), Cell(None, note="-"), Cell(None, note="-"),
                 Cell(None, note="-"),
                 Cell(100 * real_test["classifier_acc"], src, "real_test.classifier_acc", "{:.1f}"),
                 Cell(real_test["nn_train_mean"], src, "real_test.nn_train_mean", "{:.3f}"),
                 Cell(100 * real_test["copy_fraction"], src, "real_test.copy_fraction", "{:.1f}")])
    table = Table(
        name="latent_ot",
        title="Latent OT prior (Liu et al. 2018) vs NFPI Gaussians on the NFPI flow's latents",
        columns=cols,
        rows=rows,
        notes=[
            f"{n} samples per class; W2 / MMD² against the held-out (test) latents of the same class (at most "
            f"{cfg.eval_points} per class), averaged over classes; MMD² with a Gaussian kernel of median-heuristic width.",
            f"Mode coverage: {cfg.mode_clusters} k-means modes per class on the training latents; covered when the "
            f"generated share is >= {cfg.mode_min_share:g} x the training share.",
            "Classifier: logistic regression on real training pixels (independent of the flow); NN distance: "
            "pixel L2 in [0, 1] to the closest training image.",
            f"NFPI sampled at T={cfg.temperature:g}; OT source: {cfg.source}; fit {report.seconds:.1f}s.",
        ],
        stamp={"config_hash": args.config_hash or "none", "nfpi_version": prov["nfpi_version"],
               "git_revision": prov["git_revision"]},
    )
    write_table(table, args.tables_dir)
    atomic_write_json(out_dir / "config.json", {"latent_ot": cfg})
    atomic_write_json(out_dir / "metrics.json", metrics)
    log.info("latent OT done in %.1fs -> %s", metrics["seconds_total"], src)


if __name__ == "__main__":
    main()
