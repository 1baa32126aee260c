"""The multi-scale flow (Glow's architecture; Section 3 of the paper, Eq. 1).

Each level squeezes (space-to-depth by 2), applies its flow steps (actnorm -> invertible 1x1
convolution -> coupling), then, except at the last level, factors out half of the channels.  The
factored-out halves and the last level's output are flattened and concatenated back into one latent
of the full dimension ``D = C*H*W``: the class Gaussians are a prior on all levels at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nfpi.flows.layers import DataInitModule, FlowLayer, squeeze2d, unsqueeze2d

__all__ = ["FlowStep", "Flow", "StepFactory"]

# (channels, height, width, level) -> the layers of one step, in forward order
StepFactory = Callable[[int, int, int, int], Sequence[FlowLayer]]


class FlowStep(FlowLayer):
    """A composition of flow layers; log-dets add up, the inverse runs backwards."""

    def __init__(self, layers: Sequence[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y


class Flow(nn.Module):
    """Multi-scale normalizing flow ``f: [B, C, H, W] -> [B, D]`` with ``log|det J_f|``.

    Attributes:
        image_shape: ``(C, H, W)`` of the (preprocessed) input.
        latent_dim: ``D = C*H*W``.
        initialized: buffer, True once :meth:`data_init` has run (saved in ``state_dict``).
    """

    def __init__(self, image_shape: tuple[int, int, int], steps: Sequence[int], make_step: StepFactory) -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        self.image_shape: tuple[int, int, int] = (c, h, w)
        self.latent_dim: int = c * h * w
        self.num_levels = len(steps)
        levels: list[nn.ModuleList] = []
        self._split_sizes: list[int] = []  # flattened sizes of the latent pieces, in output order
        self._split_shapes: list[tuple[int, int, int]] = []
        for lvl, n_steps in enumerate(steps):
            c, h, w = c * 4, h // 2, w // 2
            levels.append(nn.ModuleList([FlowStep(make_step(c, h, w, lvl)) for _ in range(n_steps)]))
            if lvl < self.num_levels - 1:
                keep = c // 2
                self._split_shapes.append((c - keep, h, w))
                c = keep
        self._split_shapes.append((c, h, w))
        self._split_sizes = [a * b * d for a, b, d in self._split_shapes]
        assert sum(self._split_sizes) == self.latent_dim
        self.levels = nn.ModuleList(levels)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, C, H, W]`` in ``[-0.5, 0.5)`` -> ``(z [B, D], logdet [B])`` (Eq. 1)."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"flow input has shape {tuple(x.shape)}; expected [B, {', '.join(map(str, self.image_shape))}]")
        h = x
        logdet = x.new_zeros(x.shape[0])
        pieces: list[Tensor] = []
        for lvl, level in enumerate(self.levels):
            h = squeeze2d(h)
            for step in level:
                h, ld = step(h)
                logdet = logdet + ld
            if lvl < self.num_levels - 1:
                keep = h.shape[1] // 2
                pieces.append(h[:, keep:].flatten(1))
                h = h[:, :keep]
        pieces.append(h.flatten(1))
        return torch.cat(pieces, dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        """``z [B, D]`` -> ``x [B, C, H, W]`` (the generative direction)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latent has shape {tuple(z.shape)}; expected [B, {self.latent_dim}]")
        b = z.shape[0]
        pieces = list(torch.split(z, self._split_sizes, dim=1))
        h = pieces[-1].reshape(b, *self._split_shapes[-1])
        for lvl in reversed(range(self.num_levels)):
            if lvl < self.num_levels - 1:
                h = torch.cat([h, pieces[lvl].reshape(b, *self._split_shapes[lvl])], dim=1)
            for step in reversed(self.levels[lvl]):
                h = step.inverse(h)
            h = unsqueeze2d(h)
        return h

    @torch.no_grad()
    def data_init(self, x: Tensor) -> None:
        """Data-dependent initialisation of every actnorm / normalised convolution from batch ``x``.

        A no-op if already initialised (the ``initialized`` buffer travels in ``state_dict``).
        Run it on one rank before wrapping in DDP; DDP then broadcasts rank 0's weights.
        """
        if bool(self.initialized):
            return
        pending = [m for m in self.modules() if isinstance(m, DataInitModule) and not bool(m.initialized)]
        for m in pending:
            m._init_pending = True
        try:
            self.forward(x)
        finally:
            for m in pending:
                m._init_pending = False
        self.initialized.fill_(True)

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, latent_dim={self.latent_dim}, levels={self.num_levels}"
