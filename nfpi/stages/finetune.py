"""Stage ``finetune``: train the pretrained flow on solved class Gaussians, re-solving them between rounds.

    python -m nfpi finetune --config '{"train": {...}, "setting": {<FPIConfig keys>}}' --data-dir D \
        --init flows/pretrain.pt --gaussians gaussians/<setting>.pt --out flows/<setting>.pt --metrics ...

Eq. 4 couples the flow parameters Theta and the Gaussians Psi.  Fine-tuning minimises it by block
coordinate descent: round 0 trains Theta by gradient steps on the Gaussians the ``solve`` stage found
on the pretrained flow's latents (Psi fixed); each further round first re-solves Psi on the current
flow's training latents with the same setting (the fixed point of Prop. 1 for NFPI, lambda = 0 for
Baseline 1, gradient descent for Baseline 2), then trains Theta again.  ``rounds: 1`` is the single
solve of Section 4.2 ("a single fixed point iteration at early training stages of the NF ... gaussian
parameters no longer need to be trained at the subsequent iterations").  ``steps`` counts optimiser
steps over all rounds.  A ``gd_joint`` setting (Baseline 2 as the paper runs it, :mod:`nfpi.joint_gd`)
trains the Gaussians by gradient descent with the flow at every step instead: one round of ``steps``
steps, nothing to re-solve.

Each round writes its own checkpoint under ``<out>.rounds/`` and resumes from its rolling state
after an interruption; a rerun skips nothing it cannot verify (``train_flow`` checks fingerprints).
The intermediate round checkpoints are removed once the final one is written.  Under ``torchrun``
every process re-solves the Gaussians itself (same weights, same data: the same result) so no
broadcast is needed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.config import ConfigError
from nfpi.io import atomic_path, atomic_write_json, to_jsonable
from nfpi.training import FinetuneConfig, round_steps

log = logging.getLogger("nfpi.stages.finetune")


def _merge_curves(parts: list[tuple[int, Path]], out: Path) -> None:
    """Concatenate the rounds' JSONL curves into ``out`` with global step numbers and a ``round`` field."""
    with atomic_path(out, suffix=".jsonl") as tmp:
        with open(tmp, "w") as fh:
            for r, (offset, part) in enumerate(parts):
                if not part.exists():
                    continue
                for line in part.read_text().splitlines():
                    if line.strip():
                        row = json.loads(line)
                        if "step" in row:
                            row["step"] = int(row["step"]) + offset
                        fh.write(json.dumps({**row, "round": r}) + "\n")


# Long (132 lines): the rounds of Eq. 4's block coordinate descent (re-solve, train) with per-round resume and
# the merged curve; each step is one library call (nfpi.fpi, nfpi.lampath, nfpi.training).
def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", data_dir=True, out="final checkpoint (.pt)")
    p.add_argument("--init", required=True, help="the pretrained flow checkpoint")
    p.add_argument("--gaussians", required=True, help="round 0's class Gaussians (.pt from nfpi.stages.solve)")
    p.add_argument("--metrics", required=True, help="summary JSON")
    p.add_argument("--log-jsonl", default=None, help="per-step metrics of all rounds (JSONL)")
    args = p.parse_args(argv)
    start_stage(args, "finetune")

    import torch

    from nfpi.data import PreparedData
    from nfpi.density import ClassGaussianPrior, load_gaussians
    from nfpi.evaluation import evaluate_flow, extract_latents, latent_class_stats
    from nfpi.lampath import solve_path
    from nfpi.fpi import FPIConfig, solve
    from nfpi.config import from_mapping
    from nfpi.flows import FlowConfig, build_flow
    from nfpi.runtime import seed_everything
    from nfpi.seeds import stream_seed
    from nfpi.training import StartWeights, train_flow

    slices = parse_slices(args.config, train=FinetuneConfig)
    cfg: FinetuneConfig = slices["train"]
    spec = slices.get("setting")
    if cfg.rounds > 1 and not isinstance(spec, dict):
        raise ConfigError("finetune.rounds > 1 re-solves the Gaussians: --config needs the setting's solver spec "
                          "('setting': {<nfpi.fpi.FPIConfig keys>}), as the workflow's finetune rule passes it")
    joint = isinstance(spec, dict) and spec.get("method") == "gd_joint"  # Gaussians trained with the flow
    solver = from_mapping(FPIConfig, spec, where="setting") if isinstance(spec, dict) and not joint else None

    # The flow config, the bits per channel and the start weights: one read of the pretrained checkpoint.
    start = StartWeights.read(args.init)
    n_bits = start.n_bits
    explicit = (json.loads(args.config).get("train") or {}).get("n_bits")
    if explicit is not None and int(explicit) != n_bits:
        raise ConfigError(f"finetune.n_bits={explicit} but {args.init} was trained with n_bits={n_bits}; the flow "
                          "models one quantisation: set pretrain.n_bits and drop finetune.n_bits")
    flow_cfg = from_mapping(FlowConfig, start.config["flow"], where=f"{args.init}: config.flow")

    data = PreparedData(args.data_dir)
    train_set = data.dataset("train")
    prior, g_record = load_gaussians(args.gaussians)
    out = Path(args.out)
    work = out.with_name(out.name + ".rounds")
    plan = [cfg.steps] if joint else round_steps(cfg.steps, cfg.rounds)
    if joint:
        from nfpi.joint_gd import joint_prior

        prior = joint_prior(prior, spec, g_record, cfg.steps)
        log.info("joint GD (Baseline 2 as in the paper): %r trained with the flow over %d steps", prior, cfg.steps)
    per_epoch = max(len(train_set) // cfg.batch_size, 1)  # the loop drops each epoch's partial batch
    log.info("finetune: %d steps (%.2f epochs of %d steps, batch %d) in %d round(s) %s, n_bits=%d, %d training "
             "images", cfg.steps, cfg.steps / per_epoch, per_epoch, cfg.batch_size, cfg.rounds, plan, n_bits,
             len(train_set))

    main_rank = int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK; train_flow writes on rank 0 too
    rounds: list[dict[str, Any]] = []
    curves: list[tuple[int, Path]] = []
    offset, result, trained = 0, None, None
    for r, steps in enumerate(plan):
        solve_rec: dict[str, Any] = {"source": args.gaussians}
        if r > 0:
            # Psi-step of Eq. 4: the setting's solver on the current flow's training latents.
            t0 = time.perf_counter()
            stats = latent_class_stats(trained.flow, train_set, data.num_classes, batch_size=512, n_bits=n_bits,
                                       seed=stream_seed(cfg.seed, "finetune.round", r), full=solver.method == "fpi_full")
            path = None
            if solver.lam == "auto" and solver.method == "fpi":
                # the lambda path again, on the current latents, warm-started from the previous round's choice
                val_batches = list(extract_latents(trained.flow, data.dataset("val"), batch_size=512, n_bits=n_bits))
                zv = torch.cat([torch.from_numpy(z) for z, _ in val_batches]).to(torch.float64)
                yv = torch.cat([torch.from_numpy(y) for _, y in val_batches])
                path = solve_path(stats, solver, zv, yv, start=(prior.means.to(torch.float64),
                                                                prior.variances.to(torch.float64)))
                sol = path.result
            elif solver.lam == "auto":  # GD under lam: auto: the lambda its Gaussians were solved with
                sol = solve(stats, dataclasses.replace(solver, lam=float(g_record["result"]["settings"]["lam"])))
            else:
                sol = solve(stats, solver)
            prior = ClassGaussianPrior.from_solution(sol.means, sol.variances)
            solve_rec = {"status": sol.status, "iterations": sol.iterations, "message": sol.message,
                         "lam": sol.settings.get("lam"), "seconds": time.perf_counter() - t0}
            if path is not None:
                solve_rec["path"] = path.to_dict()
            log.info("round %d: re-solved the Gaussians on the current latents: %s after %d iterations (%.1fs)",
                     r, sol.status, sol.iterations, solve_rec["seconds"])
        last = r == len(plan) - 1
        out_r = out if last else work / f"round{r}.pt"
        curve_r = work / f"round{r}.jsonl"
        curve_r.parent.mkdir(parents=True, exist_ok=True)
        seed_everything(stream_seed(cfg.seed, "finetune.round", r))
        flow = build_flow(flow_cfg, tuple(data.image_shape))  # weights come from `start` inside train_flow
        record = {"flow": to_jsonable(flow_cfg), "image_shape": list(data.image_shape),
                  "num_classes": data.num_classes, "stage": "finetune", "gaussians": str(args.gaussians),
                  "round": r, "rounds": len(plan)}
        result = train_flow(flow, train_set, prior, cfg.loop_config(r, steps, n_bits), out_path=out_r,
                            init_checkpoint=start, config_record=record, metrics_path=curve_r)
        # Read once: the validation and the next round's re-solve use its EMA flow, the next round
        # starts from its weights.
        start = StartWeights.read(out_r)
        trained = start.trained_flow()
        val = (evaluate_flow(trained.flow, trained.prior, data.dataset("val"), n_bits=n_bits)["nf_acc"]
               if len(data.labels("val")) else None)
        rounds.append({"round": r, "steps": steps, "solve": solve_rec, "train": to_jsonable(result),
                       "val_nf_acc": val})
        log.info("round %d/%d done: %d steps, final loss %.3f, val NF-Acc %s", r + 1, len(plan), steps,
                 result.final_loss, "n/a" if val is None else f"{100 * val:.2f}%")
        curves.append((offset, curve_r))
        offset += steps

    if not main_rank:
        return  # under torchrun, rank 0 writes the summary and cleans up (train_flow wrote the weights)
    if args.log_jsonl:
        _merge_curves(curves, Path(args.log_jsonl))
    atomic_write_json(args.metrics, {
        "stage": "finetune", "result": result, "rounds": rounds,
        "parameters": sum(p.numel() for p in trained.flow.parameters()),
        "config": {"flow": to_jsonable(flow_cfg), "train": to_jsonable(cfg), "setting": spec, "n_bits": n_bits,
                   "image_shape": list(data.image_shape), "gaussians": str(args.gaussians)},
        "provenance": provenance(args.config_hash),
    })
    # The intermediate rounds' weights are superseded by the final checkpoint (large for paper-scale flows).
    for r in range(len(plan) - 1):
        for path in (work / f"round{r}.pt", work / f"round{r}.pt.resume"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    log.info("finetune done: %s", result)


if __name__ == "__main__":
    main()
