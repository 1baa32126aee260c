"""Normalizing flows: layers, the multi-scale model, presets and a registry (paper Sections 3, 5.1).

- :mod:`nfpi.flows.config`: the ``flow`` config slice and :func:`resolve_preset` (no torch: the workflow's DAG
  reads the number of levels from it).
- :mod:`nfpi.flows.presets`: the multi-scale layouts (``digits``, ``cifar``, ``imagenet32``, ``imagenet64``).
- :mod:`nfpi.flows.layers`: the invertible layers (actnorm, 1x1 convolutions, couplings) and their registry.
- :mod:`nfpi.flows.model`: the multi-scale :class:`Flow`.
- :mod:`nfpi.flows.registry`: ``build_flow`` and the architecture registry.

The torch-backed names load on first use, so ``from nfpi.flows import FlowConfig`` does not import torch::

    >>> from nfpi.flows import FlowConfig, build_flow
    >>> flow = build_flow(FlowConfig(preset="digits"), (1, 8, 8))  # doctest: +SKIP
    >>> x = flow.inverse(flow(x)[0])                               # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.flows.config import BUILTIN_ARCHS, FlowConfig, resolve_preset
from nfpi.flows.presets import PRESETS, Preset
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.flows.layers import FlowLayer, available_layers, build_layer
    from nfpi.flows.model import Flow, FlowStep
    from nfpi.flows.registry import available_flows, build_flow, register_flow

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
    "BUILTIN_ARCHS",
]

# name -> submodule for the names that need torch
_LAZY: dict[str, str] = {
    **{n: "layers" for n in ("ActNorm", "AffineCoupling", "FlowLayer", "LUConv1x1", "MatExpConv1x1",
                             "MatExpCoupling", "available_layers", "build_layer")},
    **{n: "model" for n in ("Flow", "FlowStep")},
    **{n: "registry" for n in ("available_flows", "build_flow", "register_flow")},
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())  # torch-backed names load on first use (PEP 562)
