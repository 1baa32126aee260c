"""The ``flow`` config slice and its presets, resolved without torch (the workflow's DAG reads ``levels`` here).

    >>> resolve_preset(FlowConfig(preset="digits")).levels
    2
"""

from __future__ import annotations

from dataclasses import dataclass

from nfpi.config import ConfigError
from nfpi.flows.presets import PRESETS, Preset

__all__ = ["FlowConfig", "BUILTIN_ARCHS", "resolve_preset"]

# The architectures nfpi.flows.registry registers itself (more can be added with register_flow).
BUILTIN_ARCHS: tuple[str, ...] = ("glow", "matexp_glow")


@dataclass(frozen=True)
class FlowConfig:
    """The pipeline's ``flow`` config slice.  ``None`` fields take the preset's value."""

    arch: str = "matexp_glow"  # registry name; "glow" = affine coupling + LU 1x1 conv
    preset: str = "digits"  # "digits" | "cifar" | "imagenet32" | "imagenet64"
    levels: int | None = None  # squeeze levels; H and W must be divisible by 2**levels
    steps: int | None = None  # flow steps per level (same number at every level)
    hidden: int | None = None  # coupling network channels
    res_blocks: tuple[int, ...] | None = None  # residual blocks per level (one value: all levels)
    steps_per_level: tuple[int, ...] | None = None  # overrides `steps` with one count per level
    actnorm_per_pixel: bool | None = None  # per-element actnorm (None: True for matexp_glow, False for glow)
    coupling_max_full: int = 24  # matexp coupling: full c2 x c2 generator up to this many channels, else low rank
    coupling_rank: int = 3  # rank of the low-rank matexp generator
    coupling_bound: float = 2.0  # matexp coupling: ||W||_inf <= bound (> 1; the initial norm is 1)
    coupling_expm: str = "series"  # "series" (fixed-degree Taylor on vectors) | "matrix_exp" (dense reference path)


def _per_level(value: tuple[int, ...], levels: int, key: str) -> tuple[int, ...]:
    if len(value) == 1:
        return value * levels
    if len(value) != levels:
        raise ConfigError(f"config key 'flow.{key}': {len(value)} values for {levels} levels; give one value or {levels}")
    return tuple(value)


def resolve_preset(cfg: FlowConfig) -> Preset:
    """The preset named by ``cfg.preset`` with ``cfg``'s overrides applied (validated)."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"config key 'flow.preset': unknown preset '{cfg.preset}'; known: {', '.join(sorted(PRESETS))}")
    p = PRESETS[cfg.preset]
    levels = cfg.levels if cfg.levels is not None else p.levels
    if levels < 1:
        raise ConfigError(f"config key 'flow.levels': must be >= 1, got {levels}")
    if cfg.steps_per_level is not None:
        steps = _per_level(cfg.steps_per_level, levels, "steps_per_level")
    elif cfg.steps is not None:
        steps = (cfg.steps,) * levels
    else:
        steps = _per_level(p.steps, levels, "steps") if levels == p.levels else (p.steps[0],) * levels
    if cfg.res_blocks is not None:
        blocks = _per_level(cfg.res_blocks, levels, "res_blocks")
    else:
        blocks = p.res_blocks if levels == p.levels else (p.res_blocks[0],) * levels
    hidden = cfg.hidden if cfg.hidden is not None else p.hidden
    if min(steps) < 1 or hidden < 1 or min(blocks) < 0:
        raise ConfigError(f"flow config: steps {steps} and hidden {hidden} must be >= 1, res_blocks {blocks} >= 0")
    return Preset(levels=levels, steps=steps, hidden=hidden, res_blocks=blocks)
