"""Image augmentations of the flow's *training* batches (Sec. 5.2), as batched pure tensor functions.

The paper trains the NF "with horizontal flip, padding, cropping, rotation and color jitter".  The
public reference code's CIFAR pipeline is, per image (torchvision, PIL images)::

    RandomHorizontalFlip -> ColorJitter(0.1, 0.1, 0.05) -> Pad(8, edge) -> RandomRotation(12)
    -> CenterCrop(36) -> RandomCrop(32)

i.e. colour jitter, a rotation by U(-12, 12) degrees about the centre (nearest neighbour, the edge
extended beyond the border), then a translation by an integer in [-2, 2] pixels per axis (the random
32-crop of the central 36 of the edge-padded image).  This module does the same for a whole batch at
once: :func:`color_jitter` then :func:`rotate_translate` (one gather: rotation and translation in a
single nearest-neighbour resampling with clamped coordinates, which *is* edge padding).  The flip
stays where it was (``nfpi.training.training_inputs``, after dequantisation): the flip commutes in
distribution with the rest (mirroring a rotation by ``a`` gives one by ``-a``, a shift by ``d`` one by
``-d``, and both ranges are symmetric), so the order does not change what the flow sees.

It is *not* :mod:`nfpi.augment` (the classifiers' standard augmentations) nor :mod:`nfpi.stages.augment`
(augmentation *by* the flow, Tables 5-6).

Determinism: the random parameters of a whole global batch are drawn at once from one generator
(``nfpi.training`` seeds it from ``(seed, step)``), always as a ``[B, 6]`` uniform draw whichever
augmentations are on, and a rank slices its shard out (:meth:`AugmentDraw.__getitem__`): an image's
augmentation depends on its position in the global batch, never on the number of processes.

Ranges: uint8 images stay uint8 in 0..255 (jitter rounds to the nearest level; the geometric part
only moves pixels, so no new value appears); float images are the flow's preprocessed inputs in
[-0.5, 0.5] and stay float in that range.  Every strength 0 is the identity, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FlowAugment", "AugmentDraw", "apply_augment", "color_jitter", "rotate_translate"]

# ITU-R 601-2 luma, torchvision's rgb_to_grayscale weights (used by its contrast and saturation).
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentDraw:
    """The random parameters of a batch: one row per image (a global batch, or a rank's slice of it).

    augment: the strengths they were drawn for (which parts :func:`apply_augment` runs).
    angles: ``[B]`` rotation in degrees (90 is ``torch.rot90(x, -1, (2, 3))``).
    shifts: ``[B, 2]`` int64 translation ``(dy, dx)`` in pixels.
    factors: ``[B, 3]`` brightness, contrast and saturation factors (1 = unchanged).
    """

    augment: FlowAugment
    angles: torch.Tensor
    shifts: torch.Tensor
    factors: torch.Tensor

    def __len__(self) -> int:
        return int(self.angles.shape[0])

    def __getitem__(self, sl: slice) -> AugmentDraw:
        return AugmentDraw(self.augment, self.angles[sl], self.shifts[sl], self.factors[sl])


@dataclass(frozen=True)
class FlowAugment:
    """Strengths of the flow-training augmentations (all 0: off, the identity).

    crop_pad: translate by a uniform integer in ``[-crop_pad, crop_pad]`` pixels per axis, the
        border extended (torchvision ``Pad(crop_pad, edge)`` + ``RandomCrop(size)``).
    rotate_deg: rotate by a uniform angle in ``[-rotate_deg, rotate_deg]`` degrees (nearest neighbour).
    brightness, contrast, saturation: ``ColorJitter`` strengths ``s``: a factor uniform in
        ``[max(0, 1 - s), 1 + s]`` (saturation is a no-op on one-channel images).
    """

    crop_pad: int = 0
    rotate_deg: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.crop_pad or self.rotate_deg or self.brightness or self.contrast or self.saturation)

    def draw(self, batch_size: int, generator: torch.Generator) -> AugmentDraw:
        """Parameters for ``batch_size`` images: always one ``[B, 6]`` uniform draw (stable streams)."""
        u = torch.rand(batch_size, 6, generator=generator, dtype=torch.float64)
        angles = (2.0 * u[:, 0] - 1.0) * self.rotate_deg
        n = 2 * self.crop_pad + 1
        shifts = torch.clamp((u[:, 1:3] * n).floor().long(), max=n - 1) - self.crop_pad
        s = torch.tensor([self.brightness, self.contrast, self.saturation], dtype=torch.float64)
        low = torch.clamp(1.0 - s, min=0.0)
        factors = low + u[:, 3:6] * (1.0 + s - low)
        return AugmentDraw(self, angles, shifts, factors)


def rotate_translate(x: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, C, H, W]`` about its centre by ``angles`` (degrees), then translate by ``shifts``.

    Output pixel ``p`` takes the source pixel nearest to ``R(-a) (p + d - c) + c`` (``c`` the centre),
    clamped to the image: nearest-neighbour resampling with the edge extended, any dtype, one gather.
    With angle 0 the coordinates are exact integers, so a pure translation is an exact pixel shift.
    """
    b, c, h, w = x.shape
    if b == 0:
        return x
    dev = x.device
    rad = torch.deg2rad(angles.to(dev, torch.float64)).view(b, 1, 1)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    py = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1)
    px = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w)
    qy = py + shifts[:, 0].to(dev, torch.float64).view(b, 1, 1) - cy
    qx = px + shifts[:, 1].to(dev, torch.float64).view(b, 1, 1) - cx
    sy = (cos * qy - sin * qx + cy).round().clamp(0, h - 1).long()
    sx = (sin * qy + cos * qx + cx).round().clamp(0, w - 1).long()
    index = (sy * w + sx).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def _gray(v: torch.Tensor) -> torch.Tensor:
    """Luma ``[B, 1, H, W]`` of values ``[B, C, H, W]`` in [0, 1] (the channel itself when C != 3)."""
    if v.shape[1] != 3:
        return v.mean(dim=1, keepdim=True)
    r, g, b = v.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation with per-image ``factors`` ``[B, 3]`` (torchvision's formulas).

    Applied in that fixed order (torchvision draws a random order per image; a fixed one keeps the
    batch vectorised).  uint8 in 0..255 -> uint8 (rounded); float in [-0.5, 0.5] -> float in [-0.5, 0.5].
    """
    if x.shape[0] == 0:
        return x
    integer = not x.is_floating_point()
    top = 255.0 if integer else 1.0  # work in the stored units (no rescaling pass for uint8)
    v = x.float() if integer else x.float() + 0.5  # a fresh tensor: the in-place ops below never touch x
    f = factors.to(v.device, torch.float32)
    bright, contrast, sat = (f[:, i].view(-1, 1, 1, 1) for i in range(3))
    v.mul_(bright).clamp_(0.0, top)
    mean = _gray(v).mean(dim=(1, 2, 3), keepdim=True)
    v.mul_(contrast).add_((1.0 - contrast) * mean).clamp_(0.0, top)
    if v.shape[1] == 3:
        v.mul_(sat).add_((1.0 - sat) * _gray(v)).clamp_(0.0, top)
    if integer:
        return v.round_().to(x.dtype)
    return v.sub_(0.5).to(x.dtype)


def apply_augment(x: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
    """``x`` augmented with ``draw``'s parameters: colour jitter, then rotation + translation.

    Only the enabled parts run, so strength 0 everywhere returns ``x`` itself.
    """
    if len(draw) != x.shape[0]:
        raise ValueError(f"apply_augment: {x.shape[0]} images but parameters for {len(draw)}")
    aug = draw.augment
    if aug.brightness or aug.contrast or aug.saturation:
        x = color_jitter(x, draw.factors)
    if aug.crop_pad or aug.rotate_deg:
        x = rotate_translate(x, draw.angles, draw.shifts)
    return x

