"""Stage ``finetune``: train the pretrained flow on solved class Gaussians (held fixed).

    python -m nfpi.finetune --config '{"train": {...}}' --data-dir D --init flows/pretrain.pt \
        --gaussians gaussians/<setting>.pt --out flows/<setting>.pt --metrics ...

The class Gaussians come from ``nfpi.solve`` (one fixed-point solve on the pretrained flow's
latents, Section 4.2: "using only a single fixed point iteration at early training stages of the
NF ... gaussian parameters no longer need to be trained at the subsequent iterations").
"""

from __future__ import annotations

from nfpi.pretrain import run


def main(argv: list[str] | None = None) -> None:
    run(argv, "finetune")


if __name__ == "__main__":
    main()
