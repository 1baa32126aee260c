"""Stage ``pretrain``: train the flow with the standard N(0, I) prior (the monomodal NF of Section 3).

    python -m nfpi.pretrain --config '{"flow": {...}, "train": {...}}' --data-dir D --out flows/pretrain.pt

The same entry point fine-tunes a flow on solved class Gaussians (``nfpi.finetune`` passes
``--gaussians`` and ``--init``): one training loop for both, as in the paper where the flow is
trained on the FPI latent space after the Gaussians are solved.  Under ``torchrun`` every process
runs this module; ``nfpi.training.train_flow`` shards the global batch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.config import from_mapping
from nfpi.data import PreparedData
from nfpi.density import ClassGaussianPrior
from nfpi.flows import FlowConfig, build_flow
from nfpi.io import atomic_write_json, to_jsonable
from nfpi.runtime import seed_everything
from nfpi.training import TrainConfig, train_flow

log = logging.getLogger("nfpi.pretrain")


def run(argv: list[str] | None, stage: str) -> None:
    """Parse arguments and train; shared by ``pretrain`` and ``finetune``."""
    p = stage_parser(__doc__ or "")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True, help="final checkpoint (.pt)")
    p.add_argument("--metrics", required=True, help="summary JSON")
    p.add_argument("--log-jsonl", default=None, help="per-step metrics (JSONL)")
    p.add_argument("--gaussians", default=None, help="fine-tuning: solved class Gaussians (.pt from nfpi.solve)")
    p.add_argument("--init", default=None, help="fine-tuning: checkpoint to start from")
    args = p.parse_args(argv)
    start_stage(args, stage)

    import torch

    from nfpi.checkpoint import load_checkpoint

    data = PreparedData(args.data_dir)
    if args.init:
        # Fine-tuning keeps the pretrained architecture: the flow config comes from the checkpoint.
        ckpt = load_checkpoint(args.init, expected_kind="flow")
        flow_cfg_raw = ckpt["config"]["flow"]
        slices = parse_slices(args.config, train=TrainConfig)
        flow_cfg = from_mapping(FlowConfig, flow_cfg_raw, where=f"{args.init}: config.flow")
    else:
        slices = parse_slices(args.config, flow=FlowConfig, train=TrainConfig)
        flow_cfg = slices["flow"]
        flow_cfg_raw = to_jsonable(flow_cfg)
    train_cfg: TrainConfig = slices["train"]

    seed_everything(train_cfg.seed)  # the coupling networks' initial weights are drawn here
    flow = build_flow(flow_cfg, tuple(data.image_shape))
    if args.gaussians:
        g = torch.load(args.gaussians, map_location="cpu", weights_only=True)
        prior = ClassGaussianPrior.from_state_dict(g["prior"])
    else:
        prior = ClassGaussianPrior.standard(data.num_classes, flow.latent_dim)
    n_params = sum(p.numel() for p in flow.parameters())
    log.info("%s: %s flow (%s), %.2fM parameters, latent dim %d, %d classes, %d training images",
             stage, flow_cfg.arch, flow_cfg.preset, n_params / 1e6, flow.latent_dim, data.num_classes,
             len(data.labels("train")))
    record = {
        "flow": flow_cfg_raw,
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "train": to_jsonable(train_cfg),
        "stage": stage,
        "gaussians": str(args.gaussians) if args.gaussians else None,
    }
    if args.log_jsonl:
        # A declared output even when a resumed run has no step left to log.
        Path(args.log_jsonl).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log_jsonl).touch()
    result = train_flow(
        flow, data.dataset("train"), prior, train_cfg,
        out_path=Path(args.out), init_checkpoint=args.init, config_record=record, metrics_path=args.log_jsonl,
    )
    atomic_write_json(args.metrics, {
        "stage": stage, "result": result, "parameters": n_params, "config": record,
        "provenance": provenance(args.config_hash),
    })
    log.info("%s done: %s", stage, result)


def main(argv: list[str] | None = None) -> None:
    run(argv, "pretrain")


if __name__ == "__main__":
    main()
