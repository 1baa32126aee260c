"""The flow registry: ``build_flow(FlowConfig(...), image_shape)`` builds the architecture named by ``flow.arch``
(``"matexp_glow"``: matrix-exponential 1x1 convolutions and couplings, Xiao & Liu 2020, the paper's backbone;
``"glow"``: affine coupling and LU 1x1 convolution, Kingma & Dhariwal 2018).  ``register_flow`` adds one.

    >>> flow = build_flow(FlowConfig(preset="digits"), (1, 8, 8))
    >>> z, logdet = flow(torch.rand(2, 1, 8, 8) - 0.5)
"""

from __future__ import annotations

from collections.abc import Callable


from nfpi.config import ConfigError
from nfpi.flows.layers import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    LUConv1x1,
    MatExpConv1x1,
    MatExpCoupling,
)
from nfpi.flows.model import Flow
from nfpi.flows.config import FlowConfig, resolve_preset

__all__ = ["register_flow", "available_flows", "build_flow"]


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
