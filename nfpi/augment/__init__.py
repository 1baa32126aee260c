"""Image augmentation: NF augmentation in a flow's latent space (paper Sec. 5.4), and the standard image augmentations.

- :mod:`nfpi.augment.config`: the ``augment`` config slice and the standard augmentations' options
  (torch-free: the config check and :mod:`nfpi.classifiers.config` import them).
- :mod:`nfpi.augment.transforms`: the PCA mixup in latent space, the crop + flip, the timm / torchvision
  set (torch); its names load on first use.

The stage ``augment`` (:mod:`nfpi.stages.augment`) runs it::

    >>> from nfpi.augment import class_principal_axes, nf_augment
    >>> images, labels = nf_augment(flow, x, y, axes, copies=1, beta_max=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.augment.config import AugmentConfig, StandardAugConfig
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.augment.transforms import (
        build_batch_mixer,
        build_sample_transform,
        class_principal_axes,
        draw_pairs,
        nf_augment,
        pca_mixup,
        random_crop_flip,
        same_class_partners,
    )

__all__ = [
    "AugmentConfig",
    "class_principal_axes",
    "pca_mixup",
    "same_class_partners",
    "draw_pairs",
    "nf_augment",
    "random_crop_flip",
    "StandardAugConfig",
    "build_sample_transform",
    "build_batch_mixer",
]

# The torch-backed names (and every other name of the former single module) load from nfpi.augment.transforms.
__getattr__, __dir__ = lazy_exports(__name__, {}, globals(), rest="transforms")
