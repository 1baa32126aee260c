"""Stage ``pretrain``: train the flow with the standard N(0, I) prior (the monomodal NF of Section 3).

    python -m nfpi pretrain --config '{"flow": {...}, "train": {...}}' --data-dir D --out flows/pretrain.pt

``nfpi.stages.finetune`` continues from its checkpoint on the solved class Gaussians with the same training
loop (``nfpi.training.train_flow``).  ``train.n_bits`` (null: the prepared data's bit depth, 4 for
digits and 8 for the other sources) is the quantisation every later stage uses (it is recorded in the
checkpoint).  Under ``torchrun`` every process runs this module;
``train_flow`` shards the global batch.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.data import PreparedData
from nfpi.density import ClassGaussianPrior
from nfpi.flows import FlowConfig, build_flow
from nfpi.io import atomic_write_json, atomic_write_text, to_jsonable
from nfpi.runtime import seed_everything
from nfpi.training import TrainConfig, resume_path, train_flow

log = logging.getLogger("nfpi.stages.pretrain")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", data_dir=True, out="final checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="summary JSON")
    p.add_argument("--log-jsonl", default=None, help="per-step metrics (JSONL)")
    args = p.parse_args(argv)
    start_stage(args, "pretrain")

    data = PreparedData(args.data_dir)
    slices = parse_slices(args.config, flow=FlowConfig, train=TrainConfig)
    flow_cfg: FlowConfig = slices["flow"]
    train_cfg: TrainConfig = slices["train"]
    if train_cfg.n_bits is None:  # the source's bit depth, recorded by the prepare stage (digits: 4, else 8)
        train_cfg = dataclasses.replace(train_cfg, n_bits=data.n_bits)

    seed_everything(train_cfg.seed)  # the coupling networks' initial weights are drawn here
    flow = build_flow(flow_cfg, tuple(data.image_shape))
    prior = ClassGaussianPrior.standard(data.num_classes, flow.latent_dim)
    n_params = sum(p.numel() for p in flow.parameters())
    log.info("pretrain: %s flow (%s), %.2fM parameters, latent dim %d, %d classes, %d training images, %d-bit data",
             flow_cfg.arch, flow_cfg.preset, n_params / 1e6, flow.latent_dim, data.num_classes,
             len(data.labels("train")), train_cfg.n_bits)
    per_epoch = max(len(data.labels("train")) // train_cfg.batch_size, 1)  # the loop drops the partial batch
    log.info("pretrain: %d steps = %.2f epochs of %d steps (batch %d)", train_cfg.steps, train_cfg.steps / per_epoch,
             per_epoch, train_cfg.batch_size)
    record = {
        "flow": to_jsonable(flow_cfg),
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "train": to_jsonable(train_cfg),
        "stage": "pretrain",
        "gaussians": None,
    }
    # The curve grows beside the resume state (a rerun continues it from the resume step) and is
    # published whole at the end: the declared output is never seen half-written.
    curve = resume_path(args.out).with_name("curve.jsonl") if args.log_jsonl else None
    result = train_flow(flow, data.dataset("train"), prior, train_cfg, out_path=Path(args.out),
                        config_record=record, metrics_path=curve)
    if curve is not None:
        atomic_write_text(args.log_jsonl, curve.read_text() if curve.exists() else "")
    atomic_write_json(args.metrics, {
        "stage": "pretrain", "result": result, "parameters": n_params, "config": record,
        "provenance": provenance(args.config_hash),
    })
    log.info("pretrain done: %s", result)


if __name__ == "__main__":
    main()
