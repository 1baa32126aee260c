"""The ``augment`` config slice and the standard augmentations' options, without torch (the config check and
the classifiers' config read them here; :mod:`nfpi.augment.transforms` applies them).

    >>> AugmentConfig().beta_max, StandardAugConfig().mixup_alpha
    (0.5, 0.8)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AugmentConfig", "StandardAugConfig"]


@dataclass(frozen=True)
class StandardAugConfig:
    """The transformer's standard augmentations (paper Sec. 5.1, from timm / torchvision).
    """

    padding: int | None = None  # random-crop zero padding in pixels; ``None``: ``max(1, H // 8)`` (4 for 32x32, the CIFAR convention; 1 for 8x8 digits).
    hflip: bool = True  # random horizontal flip (off for digits: a flipped digit is another shape).
    auto_augment: bool = True  # torchvision AutoAugment, CIFAR10 policy, per sample.
    rand_augment: bool = True  # torchvision RandAugment (2 ops, magnitude 9), per sample.
    random_erasing: float = 0.25  # probability of random erasing per sample (0 disables).
    mixup_alpha: float = 0.8  # timm Mixup Beta(alpha, alpha) parameter (0 disables).
    cutmix_alpha: float = 1.0  # timm CutMix parameter (0 disables); mixup and cutmix alternate per batch.
    label_smoothing: float = 0.1  # label smoothing folded into the soft targets.


# The ``augment`` config slice (stage ``augment``).


@dataclass(frozen=True)
class AugmentConfig:
    """The ``augment`` config slice."""

    copies: int = 1  # augmented images per training image
    beta_max: float = 0.5  # beta ~ U(0, beta_max)
    num_axes: int = 8  # principal axes per class (U_y has this many columns)
    seed: int = 0  # seed of the pair and beta draws (the same images on every rerun)
    batch_size: int = 256  # images per forward / inverse pass
    figure_rows: int = 6  # Fig. 2: originals shown
    figure_variants: int = 3  # Fig. 2: augmented variants per original
    device: str = "auto"  # "auto" (CUDA if visible), "cpu", "cuda", "cuda:1"...
