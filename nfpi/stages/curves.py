"""Stage ``curves``: training curves (bits/dim against step) of the pretraining and fine-tuning runs.

    python -m nfpi curves --out figures/training_curves.png flows/pretrain.jsonl flows/nfpi.jsonl ...
"""

from __future__ import annotations

from pathlib import Path

from nfpi.cli import stage_parser, start_stage
from nfpi.report.figures import training_curves


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", out=True)
    p.add_argument("--key", default="bpd")
    p.add_argument("logs", nargs="+", help="JSONL metrics logs written by nfpi.training")
    args = p.parse_args(argv)
    start_stage(args, "curves")
    training_curves({Path(p).stem: p for p in args.logs}, args.out, key=args.key,
                    title="Training curves: pretraining, then fine-tuning on each setting's Gaussians")


if __name__ == "__main__":
    main()
