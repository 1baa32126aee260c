"""Normalizing flows: layers, the multi-scale model, presets and a registry (paper Sections 3, 5.1).

``build_flow(FlowConfig(...), image_shape)`` returns a :class:`Flow`; the architecture is chosen
by name from a registry (``"matexp_glow"``: matrix-exponential 1x1 convolutions and couplings,
Xiao & Liu 2020, the paper's backbone; ``"glow"``: affine coupling and LU 1x1 convolution).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from nfpi.config import ConfigError
from nfpi.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    LUConv1x1,
    MatExpConv1x1,
    MatExpCoupling,
    available_layers,
    build_layer,
)
from nfpi.flows.model import Flow, FlowStep
from nfpi.flows.presets import PRESETS, Preset

__all__ = [
    "FlowConfig",
    "Flow",
    "FlowStep",
    "FlowLayer",
    "register_flow",
    "available_flows",
    "build_flow",
    "resolve_preset",
    "available_layers",
    "build_layer",
    "PRESETS",
    "Preset",
]


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


FlowBuilder = Callable[[FlowConfig, tuple[int, int, int]], Flow]
_REGISTRY: dict[str, FlowBuilder] = {}


def register_flow(name: str) -> Callable[[FlowBuilder], FlowBuilder]:
    """Decorator registering ``builder(cfg, image_shape) -> Flow`` under ``name``."""

    def deco(fn: FlowBuilder) -> FlowBuilder:
        if name in _REGISTRY:
            raise ValueError(f"flow architecture '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available_flows() -> list[str]:
    """Registered architecture names (valid values of ``flow.arch``)."""
    return sorted(_REGISTRY)


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


def _check_shape(image_shape: tuple[int, int, int], levels: int) -> tuple[int, int, int]:
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    c, h, w = (int(v) for v in image_shape)
    f = 2**levels
    if h % f or w % f:
        hint_h, hint_w = -(-h // f) * f, -(-w // f) * f
        raise ConfigError(
            f"config key 'flow.levels': image size {h}x{w} is not divisible by 2**levels = {f}; "
            f"pad/resize the images to {hint_h}x{hint_w} or use fewer levels"
            + (f" (levels <= {max(k for k in range(0, 12) if h % 2**k == 0 and w % 2**k == 0)} works for {h}x{w})")
        )
    return c, h, w


@register_flow("matexp_glow")
def _build_matexp_glow(cfg: FlowConfig, image_shape: tuple[int, int, int]) -> Flow:
    """Matrix-exponential Glow (Xiao & Liu 2020): actnorm -> exp(W) 1x1 conv -> matexp coupling."""
    p = resolve_preset(cfg)
    shape = _check_shape(image_shape, p.levels)
    per_pixel = True if cfg.actnorm_per_pixel is None else cfg.actnorm_per_pixel
    if cfg.coupling_expm not in ("series", "matrix_exp"):
        raise ConfigError(f"config key 'flow.coupling_expm': {cfg.coupling_expm!r} is not 'series' or 'matrix_exp'")
    if cfg.coupling_bound <= 1.0:
        raise ConfigError(f"config key 'flow.coupling_bound': must be > 1 (the generator starts at norm 1), got {cfg.coupling_bound}")

    def make_step(c: int, h: int, w: int, lvl: int) -> list[FlowLayer]:
        return [
            ActNorm(c, h, w, per_pixel=per_pixel),
            MatExpConv1x1(c),
            MatExpCoupling(
                c,
                p.hidden,
                p.res_blocks[lvl],
                max_full=cfg.coupling_max_full,
                rank=cfg.coupling_rank,
                bound=cfg.coupling_bound,
                expm=cfg.coupling_expm,
            ),
        ]

    return Flow(shape, p.steps, make_step)


@register_flow("glow")
def _build_glow(cfg: FlowConfig, image_shape: tuple[int, int, int]) -> Flow:
    """Plain Glow (Kingma & Dhariwal 2018): actnorm -> LU 1x1 conv -> affine coupling."""
    p = resolve_preset(cfg)
    shape = _check_shape(image_shape, p.levels)
    per_pixel = False if cfg.actnorm_per_pixel is None else cfg.actnorm_per_pixel

    def make_step(c: int, h: int, w: int, lvl: int) -> list[FlowLayer]:
        return [ActNorm(c, h, w, per_pixel=per_pixel), LUConv1x1(c), AffineCoupling(c, p.hidden, p.res_blocks[lvl])]

    return Flow(shape, p.steps, make_step)


def build_flow(cfg: FlowConfig, image_shape: tuple[int, int, int]) -> Flow:
    """Build the flow named by ``cfg.arch`` for images of shape ``(C, H, W)``."""
    if cfg.arch not in _REGISTRY:
        raise ConfigError(f"config key 'flow.arch': unknown architecture '{cfg.arch}'; known: {', '.join(available_flows())}")
    # Training processes should call nfpi.runtime.flush_denormals() (the stage modules do): the
    # series' backward pass underflows into denormals, ~100x slower on x86.  It is process-wide
    # state, so it is not switched on here behind a library caller's back.
    return _REGISTRY[cfg.arch](cfg, tuple(image_shape))  # type: ignore[arg-type]
