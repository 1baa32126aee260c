"""Stage ``evaluate``: NF-Acc, per-class accuracy, confusion matrix and bits/dim of a trained flow.

    python -m nfpi evaluate --config '{"evaluate": {...}}' --checkpoint flows/<setting>.pt --data-dir D \
        --gaussians-json gaussians/<setting>.json --out metrics/<setting>.json

NF-Acc is ``argmax_y log N(f(x); mu_y, v_y)`` with equal class priors (Section 5.1) of each image at its
bin centres (deterministic; bits/dim use seeded dequantisation noise), computed with
the EMA weights on the validation split (model selection) and the test split (reported numbers).
"""

from __future__ import annotations

import logging

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.evaluation import EvaluateConfig
from nfpi.io import atomic_write_json, read_json

log = logging.getLogger("nfpi.stages.evaluate")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", checkpoint=True, data_dir=True, out=True, name=True)
    p.add_argument("--gaussians-json", default=None, help="the solve record (status, iterations) to carry along")
    args = p.parse_args(argv)
    start_stage(args, "evaluate")
    cfg: EvaluateConfig = parse_slices(args.config, evaluate=EvaluateConfig)["evaluate"]

    from nfpi.cli import load_flow_for_stage
    from nfpi.data import PreparedData
    from nfpi.evaluation import evaluate_flow

    trained, device = load_flow_for_stage(args.checkpoint, cfg.device)
    data = PreparedData(args.data_dir)
    out: dict = {"setting": args.name, "checkpoint": args.checkpoint}
    for split in cfg.splits:
        m = evaluate_flow(trained.flow.to(device), trained.prior.to(device), data.dataset(split),
                          batch_size=cfg.batch_size, device=device, n_bits=trained.n_bits)
        out[split] = m
        log.info("%s %s: NF-Acc %.2f%%, bits/dim %.3f (conditional) %.3f (marginal)", args.name, split,
                 100 * m["nf_acc"], m["bpd_conditional"], m["bpd_marginal"])
    if args.gaussians_json:
        g = read_json(args.gaussians_json)
        out["solver"] = {"status": g.get("status"), "spec": g.get("spec"), "result": g.get("result")}
    out["provenance"] = provenance(args.config_hash)
    atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
