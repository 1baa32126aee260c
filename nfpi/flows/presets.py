"""Architecture presets (paper Section 5.1: the matrix-exponential Glow of Xiao & Liu 2020).

A preset fixes the multi-scale layout; every field can be overridden from ``FlowConfig``.

- ``cifar``: 3 levels x 8 steps, hidden 128, residual blocks (8, 4, 2) per level: the layout the
  team's issue specifies (~42.8M parameters, the count quoted for the public reference flow).
  The reference repository's own CIFAR json instead lists ``num_flows = [8, 4, 2]`` steps with
  8 blocks each; that variant is ``FlowConfig(preset="cifar", steps_per_level=(8, 4, 2),
  res_blocks=(8, 8, 8))`` (see docs/flows.md for both parameter counts).
- ``imagenet32`` / ``imagenet64``: the reference's ImageNet json files (``num_blocks`` 8 and 10, with
  ``num_flows = [8, 4, 2]``) read the same way as the ``cifar`` preset: ``num_blocks`` steps per
  level, residual blocks (8, 4, 2).  The literal reading is available through ``steps_per_level``.
- ``digits``: 8x8x1 sklearn digits, ~0.1M parameters, trains in minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Preset", "PRESETS"]


@dataclass(frozen=True)
class Preset:
    """Multi-scale layout of a flow."""

    levels: int  # number of squeeze levels (the image side must be divisible by 2**levels)
    steps: tuple[int, ...]  # flow steps (actnorm, 1x1 conv, coupling) per level
    hidden: int  # channels of the coupling networks
    res_blocks: tuple[int, ...]  # residual blocks of the coupling networks, per level


PRESETS: dict[str, Preset] = {
    "digits": Preset(levels=2, steps=(4, 4), hidden=24, res_blocks=(1, 1)),
    "cifar": Preset(levels=3, steps=(8, 8, 8), hidden=128, res_blocks=(8, 4, 2)),
    "imagenet32": Preset(levels=3, steps=(8, 8, 8), hidden=128, res_blocks=(8, 4, 2)),
    "imagenet64": Preset(levels=3, steps=(10, 10, 10), hidden=128, res_blocks=(8, 4, 2)),
}
