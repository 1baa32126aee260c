"""Stage ``flowfactor``: flow-factorized latent transformations (Song et al. 2023) in a trained flow's latent space.

    python -m nfpi flowfactor --config '{"flowfactor": {...}}' --threads 1 \
        --flow results/R/flows/nfpi.pt --data-dir results/R/data \
        --out-dir results/R/flowfactor --tables-dir results/R/tables \
        --figure results/R/figures/flowfactor_trajectories.png

First (``flowfactor.adapt_steps > 0``, the default) makes the flow transformation-aware: a copy of
``--flow`` is fine-tuned with the pipeline's training loop on the training images plus randomly
transformed copies (:func:`adapt_flow`; a flow trained on plain digits only rates rotated digits at
thousands of bits/dim and no latent field can follow rotation or zoom there), written to
``<out-dir>/adapted_flow.pt`` (resumable).  Then learns one time-conditioned potential per
pixel-space transformation (rotation, scale, intensity) on the (adapted, frozen) flow's latents of
transformed training sequences (:mod:`nfpi.flowfactor`), and reports on held-out test images:

- equivariance error per transformation (pixel MSE of ``f^{-1}(flow_k^n(f(x)))`` against the true
  ``T_k^n(x)``, steps ``1..T``), against no flow and against a constant latent shift;
- extrapolation (steps ``T+1..extrapolate_factor*T``) and composition (every ordered pair);
- identification: how often the best-matching potential is the sequence's true transformation
  (weak mode: after the best permutation of the potentials);
- likelihood (bits/dim) of transformed sequences under the flow and under the learned evolved prior;
- augmentation: a scikit-learn logistic regression on pixels trained on ``classifier_train_size``
  real images alone, + pixel-space transformations, + images moved along the learned fields,
  + NFPI's PCA mixup (``nfpi.augment``), tested on the clean and on a transformed test set.

Writes ``<out-dir>/metrics.json`` (+ ``config.json``, ``potentials.pt``, ``history.json``; with
adaptation ``adapted_flow.pt``, ``adapt.jsonl``, and in metrics ``flow_used`` and ``adaptation``: the
held-out bits/dim of plain and transformed images before and after), the
table ``<tables-dir>/flowfactor.{md,csv}`` and the trajectory figure, all atomically.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfpi import flowfactor as ff
from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.io import atomic_path, atomic_write_json, atomic_write_text

log = logging.getLogger("nfpi.stages.flowfactor")


# ----------------------------------------------------------------------------------------------
# Classifier comparison
# ----------------------------------------------------------------------------------------------


class _CodecFlow:
    """``forward``/``inverse`` view of a codec, for :func:`nfpi.augment.nf_augment`."""

    def __init__(self, codec: ff.LatentCodec) -> None:
        self.codec = codec

    def eval(self) -> _CodecFlow:
        return self

    def to(self, *_: Any, **__: Any) -> _CodecFlow:
        return self

    def parameters(self) -> Any:
        return iter([torch.zeros(1)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.codec.encode(x), torch.zeros(x.shape[0])

    __call__ = forward

    def inverse(self, z: Tensor) -> Tensor:
        return self.codec.decode(z)


def _stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with (as near as possible) equal counts per class."""
    classes = np.unique(labels)
    per = int(np.ceil(n / len(classes)))
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes])
    return np.sort(rng.permutation(idx)[:n])


def _logreg_acc(x_tr: Tensor, y_tr: Tensor, tests: dict[str, tuple[Tensor, Tensor]], seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(x_tr.reshape(x_tr.shape[0], -1).numpy() / 255.0, y_tr.numpy())
    return {k: float(clf.score(x.reshape(x.shape[0], -1).numpy() / 255.0, y.numpy())) for k, (x, y) in tests.items()}


def classifier_comparison(codec: ff.LatentCodec, bank: ff.PotentialBank, train_x: Tensor, train_y: Tensor,
                          test_x: Tensor, test_y: Tensor, cfg: ff.FlowFactorConfig, *, repeats: int = 3
                          ) -> dict[str, dict[str, float]]:
    """Accuracy of a logistic regression trained on real images + each augmentation (mean/std over repeats)."""
    from nfpi.augment import class_principal_axes, nf_augment

    num_classes = int(train_y.max()) + 1
    z_all = codec.encode(ff.images_to_unit(train_x))
    axes = class_principal_axes(z_all, train_y, num_classes, min(cfg.pca_axes, z_all.shape[1]), seed=cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed + 17)
    # a transformed test set: every test image under one random transformation for a random 1..T steps
    tx, ty = ff.pixel_augment(test_x, test_y, cfg, per_image=1, generator=g)
    tests = {"clean": (test_x, test_y), "transformed": (tx, ty)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("real", "pixel", "flowfactor", "pca_mixup")}
    for r in range(repeats):
        rng = np.random.default_rng(cfg.seed + r)
        idx = torch.from_numpy(_stratified_subset(train_y.numpy(), cfg.classifier_train_size, rng))
        x, y = train_x[idx], train_y[idx]
        gen = torch.Generator().manual_seed(cfg.seed + 1000 + r)
        per = cfg.augment_per_image
        aug = {
            "real": (x[:0], y[:0]),
            "pixel": ff.pixel_augment(x, y, cfg, per_image=per, generator=gen),
            "flowfactor": ff.augment_along_fields(codec, bank, x, y, cfg, per_image=per, generator=gen),
            "pca_mixup": nf_augment(_CodecFlow(codec), x, y, axes, copies=per, beta_max=cfg.pca_beta_max,
                                    generator=gen, device="cpu", latents=z_all[idx]),
        }
        for name, (ax, ay) in aug.items():
            runs[name].append(_logreg_acc(torch.cat([x, ax]), torch.cat([y, ay]), tests, cfg.seed + r))
    out: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        out[name] = {}
        for key in ("clean", "transformed"):
            vals = np.array([v[key] for v in rs])
            out[name][f"{key}_mean"] = float(vals.mean())
            out[name][f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def identification(bank: ff.PotentialBank, latents: Tensor, cfg: ff.FlowFactorConfig) -> dict[str, Any]:
    """How often the best-matching potential is the true transformation of a held-out sequence.

    ``latents`` ``[K, N, T + 1, d]``.  The potentials are matched to transformations by the best
    permutation (needed in weak mode, where potential ``k`` has no name; the identity in supervised).
    """
    K, N = latents.shape[:2]
    pred = ff.infer_transformation(bank, latents.reshape(K * N, *latents.shape[2:]), cfg).reshape(K, N)
    confusion = torch.stack([torch.bincount(pred[k], minlength=K) for k in range(K)]).numpy()  # [true, potential]
    best = max(itertools.permutations(range(K)), key=lambda p: sum(confusion[k, p[k]] for k in range(K)))
    acc = sum(confusion[k, best[k]] for k in range(K)) / (K * N)
    return {"accuracy": float(acc), "potential_of": [int(b) for b in best], "confusion": confusion.tolist()}


# ----------------------------------------------------------------------------------------------
# Transformation-aware flow
# ----------------------------------------------------------------------------------------------


def adapt_flow(flow_path: str | Path, train_x: Tensor, train_y: Tensor, cfg: ff.FlowFactorConfig, out_path: Path,
               *, metrics_path: Path | None = None) -> dict[str, Any]:
    """Fine-tune a copy of the trained flow at ``flow_path`` on plain + randomly transformed training images.

    A flow trained on plain digits only has never seen ink in the border pixels that rotation and
    zoom fill: it rates rotated digits at thousands of bits/dim and decoding latents near theirs gives
    saturated images, so no latent field can follow the transformation (docs/flowfactor.md).  The
    adaptation set is the training images plus ``adapt_copies`` copies of each under one random
    transformation by a real amount in ``[0, adapt_range * steps]`` (:func:`ff.random_transform_copies`);
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
    gen = torch.Generator().manual_seed(cfg.seed + 4242)
    tx, ty = ff.random_transform_copies(train_x, train_y, cfg, copies=cfg.adapt_copies,
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
    record.update({"stage": "factorize-adapt", "adapted_from": str(flow_path),
                   "adaptation": {k: getattr(cfg, k) for k in ("transformations", "rotate_deg", "scale_step",
                                                                "intensity_step", "steps", "adapt_copies",
                                                                "adapt_range")}})
    log.info("adapting %s: %d steps on %d images (%d plain + %d transformed)", flow_path, cfg.adapt_steps,
             len(dataset), len(train_x), len(tx))
    res = train_flow(trained.flow.float().cpu(), dataset, prior, tcfg, out_path=out_path,
                     init_checkpoint=start, config_record=record, metrics_path=metrics_path)
    return dataclasses.asdict(res)


def bits_per_dim(codec: ff.LatentCodec, images: Tensor) -> Tensor:
    """Bits/dim of each uint8 image under ``codec`` ``[N]`` (label-free: the prior's equal-weight class
    mixture; mid-bin dequantisation, 8-bit data)."""
    D = images[0].numel()
    lp = codec.log_prob(ff.images_to_unit(images)).double()
    return (-lp / D + np.log(256.0)) / np.log(2.0)


def flow_bpd(codec: ff.LatentCodec, images: Tensor, cfg: ff.FlowFactorConfig) -> dict[str, float]:
    """Bits/dim of held-out images, plain and each under one random transformation for 1..T steps: the mean
    and the median over images (a few out-of-distribution images can dominate the mean)."""
    tx, _ = ff.pixel_augment(images, torch.zeros(len(images), dtype=torch.long), cfg, per_image=1,
                             generator=torch.Generator().manual_seed(cfg.seed + 99))
    plain, trans = bits_per_dim(codec, images), bits_per_dim(codec, tx)
    return {"plain": float(plain.mean()), "transformed": float(trans.mean()),
            "plain_median": float(plain.median()), "transformed_median": float(trans.median())}


# ----------------------------------------------------------------------------------------------
# Figure and table
# ----------------------------------------------------------------------------------------------


def trajectory_figure(path: Path, codec: ff.LatentCodec, bank: ff.PotentialBank, images: Tensor,
                      cfg: ff.FlowFactorConfig) -> None:
    """Per transformation: true ``T_k^n(x)`` above the learned flow's ``f^{-1}(flow_k^n(f(x)))``, n = 0..nmax;
    the last block composes the first two transformations.  Extrapolated steps are framed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, nmax = cfg.steps, cfg.extrapolate_factor * cfg.steps
    params = cfg.params()
    rows: list[tuple[str, Tensor]] = []
    x = images[:1]
    for k, name in enumerate(cfg.transformations):
        truth = torch.stack([ff.transform_images(x, name, float(n), params) for n in range(nmax + 1)], 1)[0]
        pred = ff.apply_flow_images(codec, bank, x, [(k, nmax)], cfg)[0]
        rows += [(f"{name}: true", truth), (f"{name}: flow", pred)]
    if len(cfg.transformations) > 1:
        a, b = cfg.transformations[:2]
        half = nmax // 2
        truth = [ff.transform_images(x, a, float(min(n, half)), params) for n in range(nmax + 1)]
        truth = [ff.transform_images(t, b, float(max(0, n - half)), params) for n, t in enumerate(truth)]
        pred = ff.apply_flow_images(codec, bank, x, [(0, half), (1, nmax - half)], cfg)[0]
        rows += [(f"{a} then {b}: true", torch.cat(truth)), (f"{a} then {b}: flow", pred)]
    c = images.shape[1]
    fig, axs = plt.subplots(len(rows), nmax + 1, figsize=(0.8 * (nmax + 1) + 1.6, 0.85 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for n in range(nmax + 1):
            ax = axs[r, n]
            img = frames[n].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if n > T:
                for s in ax.spines.values():
                    s.set_edgecolor("red")
                    s.set_linewidth(1.5)
            if r == 0:
                ax.set_title(f"n={n}", fontsize=7)
        axs[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"Latent flows (trained on n <= {T}; red: extrapolated)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def build_table(metrics: dict[str, Any]) -> tuple[str, str]:
    """Markdown and CSV of the stage's numbers (pixel MSE in [0, 1] units; accuracies in %)."""
    rows: list[tuple[str, str, str, str, str]] = []  # section, item, flow, baseline(s), note
    eq = metrics["equivariance"]
    for name, m in eq.items():
        rows.append(("equivariance (steps 1..T)", name, f"{m['flow']:.5f}", f"{m['noflow']:.5f}", f"{m['linear']:.5f}"))
    for name, m in eq.items():
        if m["flow_extrap"] is not None:
            rows.append(("extrapolation (steps T+1..2T)", name, f"{m['flow_extrap']:.5f}", f"{m['noflow_extrap']:.5f}",
                         f"{m['linear_extrap']:.5f}"))
    for name, m in metrics["composition"].items():
        rows.append(("composition (T steps each)", name, f"{m['flow']:.5f}", f"{m['noflow']:.5f}", ""))
    for name, m in metrics["likelihood"].items():
        rows.append(("bits/dim at step T", name, f"{m['bpd_evolved'][-1]:.3f}", f"{m['bpd_flow'][-1]:.3f}",
                     f"step 0: {m['bpd_flow'][0]:.3f}"))
    ad = metrics.get("adaptation")
    if ad:
        for key in ("plain", "transformed"):
            after, before = ad["heldout_bpd_after"], ad["heldout_bpd_before"]
            rows.append(("flow bits/dim, held-out " + key, "adapted / input flow", f"{after[key]:.3f}",
                         f"{before[key]:.3f}", f"medians {after[key + '_median']:.3f} / {before[key + '_median']:.3f}; "
                         f"{ad['steps']} adaptation steps"))
    ident = metrics["identification"]
    rows.append(("identification accuracy", metrics["config"]["mode"], f"{100 * ident['accuracy']:.1f}",
                 f"{100 / len(eq):.1f}", "chance"))
    for name, m in metrics["classifier"].items():
        rows.append(("logreg accuracy % (clean / transformed test)", name,
                     f"{100 * m['clean_mean']:.1f} ± {100 * m['clean_std']:.1f}",
                     f"{100 * m['transformed_mean']:.1f} ± {100 * m['transformed_std']:.1f}", ""))
    head = ("section", "item", "learned flow", "no flow / flow prior", "linear shift / note")
    md = ["# Flow-factorized latent transformations (Song et al. 2023) on the NF latent space", "",
          f"Flow: `{metrics.get('flow_used') or metrics['inputs']['flow']}`"
          + (f" (adapted from `{metrics['inputs']['flow']}`)" if metrics.get("adaptation") else "")
          + f"; mode `{metrics['config']['mode']}`; "
          f"T = {metrics['config']['steps']} steps; held-out test images: {metrics['eval_images']}; "
          f"training {metrics['train_seconds']:.1f} s. Errors: pixel MSE in [0, 1] units (lower is better). "
          "Bits/dim: learned evolved prior vs the flow's own density. Classifier rows: column 3 clean test, "
          "column 4 transformed test.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", f"config hash `{metrics['provenance']['config_hash']}`, git `{metrics['provenance']['git_revision']}`", ""]
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(rows)
    return "\n".join(md), buf.getvalue()


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0])
    p.add_argument("--flow", required=True,
                   help="trained flow checkpoint (flows/nfpi.pt or flows/pretrain.pt); 'identity': pixel space (diagnostic)")
    p.add_argument("--data-dir", required=True, help="prepared data folder (data/)")
    p.add_argument("--out-dir", required=True, help="where metrics.json, config.json, potentials.pt go")
    p.add_argument("--tables-dir", required=True, help="where flowfactor.md / flowfactor.csv go")
    p.add_argument("--figure", required=True, help="trajectory figure PNG")
    args = p.parse_args(argv)
    start_stage(args, "flowfactor")
    cfg: ff.FlowFactorConfig = parse_slices(args.config, flowfactor=ff.FlowFactorConfig)["flowfactor"]
    from nfpi.data import PreparedData

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    data = PreparedData(args.data_dir)
    train_x, train_y = ff.numpy_images(data.images("train")), torch.from_numpy(np.array(data.labels("train")))
    test_x, test_y = ff.numpy_images(data.images("test")), torch.from_numpy(np.array(data.labels("test")))
    shape = tuple(int(s) for s in train_x.shape[1:])
    out = Path(args.out_dir)
    rng = np.random.default_rng(cfg.seed)
    tr_idx = torch.from_numpy(np.sort(rng.permutation(len(train_x))[: cfg.train_sequences]))
    ev_idx = torch.from_numpy(np.sort(rng.permutation(len(test_x))[: cfg.eval_images]))
    params = cfg.params()
    codec: ff.LatentCodec
    adaptation: dict[str, Any] | None = None
    used_flow = str(args.flow)
    if args.flow == "identity":  # diagnostic: the same method on pixel space (a perfectly conditioned "flow")
        codec = ff.IdentityCodec(shape)  # type: ignore[arg-type]
    else:
        codec = ff.codec_from_trained(args.flow, shape)  # type: ignore[arg-type]
        if cfg.adapt_steps > 0:
            t_ad = time.perf_counter()
            before = flow_bpd(codec, test_x[ev_idx], cfg)
            used_flow = str(out / "adapted_flow.pt")
            result = adapt_flow(args.flow, train_x, train_y, cfg, Path(used_flow),
                                metrics_path=out / "adapt.jsonl")
            codec = ff.codec_from_trained(used_flow, shape)  # type: ignore[arg-type]
            after = flow_bpd(codec, test_x[ev_idx], cfg)
            adaptation = {"input_flow": str(args.flow), "adapted_flow": used_flow, "steps": cfg.adapt_steps,
                          "train": result, "heldout_bpd_before": before, "heldout_bpd_after": after,
                          "seconds": time.perf_counter() - t_ad}
            log.info("adapted flow: held-out bits/dim plain %.3f -> %.3f, transformed %.3f -> %.3f (%.1f s)",
                     before["plain"], after["plain"], before["transformed"], after["transformed"],
                     adaptation["seconds"])
    if cfg.latent_coords == "asinh":
        codec = ff.AsinhCodec(codec, cfg.latent_scale)

    seqs = ff.make_sequences(train_x[tr_idx], cfg.transformations, cfg.steps, params)
    lat = ff.encode_sequences(codec, seqs)
    log.info("training %d potentials (%s) on %s latent sequences", len(cfg.transformations), cfg.mode, tuple(lat.shape))
    log_prior = codec.prior_log_prob(lat.reshape(-1, lat.shape[-1])).reshape(lat.shape[:-1])
    res = ff.train_potentials(lat, cfg, log_prior=log_prior)
    log.info("trained in %.1f s", res.seconds)

    ev_x = test_x[ev_idx]
    ev_lat = ff.encode_sequences(codec, ff.make_sequences(ev_x, cfg.transformations, cfg.steps, params))
    ident = identification(res.bank, ev_lat, cfg)
    bank = res.bank
    if cfg.mode == "weak":  # name the potentials: potential k becomes the one that best explains transformation k
        bank = ff.permute_bank(res.bank, ident["potential_of"])
    eq = ff.equivariance_errors(codec, bank, ev_x, cfg)
    comp = ff.composition_errors(codec, bank, ev_x, cfg)
    lik = ff.sequence_likelihood(codec, bank, ev_x[:100], cfg)
    clf = classifier_comparison(codec, bank, train_x, train_y, test_x, test_y, cfg)
    for name, m in eq.items():
        log.info("equivariance %s: flow %.5f no-flow %.5f linear %.5f | extrapolated flow %.5f no-flow %.5f",
                 name, m["flow"], m["noflow"], m["linear"], m["flow_extrap"] or float("nan"), m["noflow_extrap"] or float("nan"))

    with atomic_path(out / "potentials.pt", suffix=".pt") as tmp:
        torch.save({"format": "nfpi-flowfactor", "version": 1, "state_dict": bank.state_dict(),
                    "names": list(cfg.transformations), "num": bank.num, "dim": bank.dim, "config": dataclasses.asdict(cfg)}, tmp)
    atomic_write_json(out / "history.json", res.history)
    atomic_write_json(out / "config.json", {"flowfactor": cfg})
    metrics = {
        "stage": "factorize",
        "inputs": {"flow": str(args.flow), "data": str(args.data_dir)},
        "flow_used": used_flow,
        "adaptation": adaptation,
        "config": cfg,
        "train_seconds": res.seconds,
        "eval_images": int(len(ev_idx)),
        "equivariance": eq,
        "composition": comp,
        "likelihood": lik,
        "identification": ident,
        "classifier": clf,
        "classifier_kind": "scikit-learn LogisticRegression on pixels / 255 (C=1, max_iter=2000), 3 subsets",
        "final_loss": res.history[-1] if res.history else None,
        "wall_seconds": time.perf_counter() - t0,
        "provenance": provenance(args.config_hash),
    }
    md, csv_text = build_table({**metrics, "config": dataclasses.asdict(cfg)})
    trajectory_figure(Path(args.figure), codec, bank, ev_x, cfg)
    atomic_write_text(Path(args.tables_dir) / "flowfactor.md", md)
    atomic_write_text(Path(args.tables_dir) / "flowfactor.csv", csv_text)
    metrics["wall_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "metrics.json", metrics)  # last: the rule's target marks a complete run
    log.info("wrote %s (%.1f s)", out / "metrics.json", metrics["wall_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
