"""Stage ``prepare``: turn a dataset source into the uint8 on-disk format every later stage reads.

    python -m nfpi prepare --config '{"data": {...}}' --out-dir results/<run>/data --size-multiple 4
"""

from __future__ import annotations

import logging

from nfpi.cli import parse_slices, stage_parser, start_stage
from nfpi.data import DataConfig, prepare_dataset

log = logging.getLogger("nfpi.stages.prepare")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", out_dir="prepared dataset folder (meta.json is written last)")
    p.add_argument("--size-multiple", type=int, default=1, help="2**levels of the flow: H and W must divide by it")
    args = p.parse_args(argv)
    start_stage(args, "prepare")
    cfg = parse_slices(args.config, data=DataConfig)["data"]
    meta = prepare_dataset(cfg, args.out_dir, size_multiple=args.size_multiple, num_workers=max(args.threads, 1))
    log.info("prepared %s: %s classes, image shape %s, counts %s",
             meta.get("name"), meta.get("num_classes"), meta.get("image_shape"), meta.get("counts"))
