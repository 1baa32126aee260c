"""Stage ``flowfactor``: flow-factorized latent transformations (Song et al. 2023) in a trained flow's latent space.

    python -m nfpi flowfactor --config '{"flowfactor": {...}}' --threads 1 \
        --flow results/R/flows/nfpi.pt --data-dir results/R/data \
        --out-dir results/R/flowfactor --tables-dir results/R/tables \
        --figure results/R/figures/flowfactor_trajectories.png

First (``flowfactor.adapt_steps > 0``, the default) makes the flow transformation-aware: a copy of
``--flow`` is fine-tuned with the pipeline's training loop on the training images plus randomly
transformed copies (:func:`nfpi.flowfactor.adapt_flow`; a flow trained on plain digits only rates rotated digits at
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
table ``<tables-dir>/flowfactor.{md,csv,tex,html,sources.json}`` (:func:`nfpi.report.tables.write_table`, like
the paper's tables) and the trajectory figure, all atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nfpi import flowfactor as ff
from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.flowfactor import adapt_flow, build_table, classifier_comparison, flow_bpd, identification, trajectory_figure
from nfpi.io import atomic_write_json
from nfpi.report.tables import write_table

log = logging.getLogger("nfpi.stages.flowfactor")


# Long (98 lines): the stage's sequence of library calls (adapt, train, measure, write) and its outputs.
def main(argv: list[str] | None = None) -> int:
    p = stage_parser(__doc__.splitlines()[0], data_dir=True, tables_dir=True,
                     out_dir="where metrics.json, config.json, potentials.pt go")
    p.add_argument("--flow", required=True,
                   help="trained flow checkpoint (flows/nfpi.pt or flows/pretrain.pt); 'identity': pixel space (diagnostic)")
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

    ff.save_potentials(out / "potentials.pt", bank, cfg)
    atomic_write_json(out / "history.json", res.history)
    atomic_write_json(out / "config.json", {"flowfactor": cfg})
    metrics = {
        "stage": "flowfactor",
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
    prov = metrics["provenance"]
    stamp = {"config_hash": args.config_hash or "none", "nfpi_version": prov["nfpi_version"],
             "git_revision": prov["git_revision"]}
    table = build_table({**metrics, "config": dataclasses.asdict(cfg)}, source=str(out / "metrics.json"), stamp=stamp)
    trajectory_figure(Path(args.figure), codec, bank, ev_x, cfg)
    write_table(table, args.tables_dir)
    metrics["wall_seconds"] = time.perf_counter() - t0
    atomic_write_json(out / "metrics.json", metrics)  # last: the rule's target marks a complete run
    log.info("wrote %s (%.1f s)", out / "metrics.json", metrics["wall_seconds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
