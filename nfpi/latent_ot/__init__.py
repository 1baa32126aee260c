"""Latent-space optimal transport prior (Liu, Gu & Samaras 2018) beside NFPI's class Gaussians.

- :mod:`nfpi.latent_ot.prior`: the prior itself (config, exact batch OT, potential networks, the OT map and
  its semi-discrete variant, the fit) and the distribution distances (W2, MMD^2, mode coverage, NN distance).
- :mod:`nfpi.latent_ot.metrics`: the comparison's metrics on a set of generated latents and images.
- :mod:`nfpi.latent_ot.report`: the comparison table and the sample grid.

The stage ``latent_ot`` (:mod:`nfpi.stages.latent_ot`) runs them on the NFPI flow's latents::

    >>> from nfpi.latent_ot import LatentOTConfig, fit_latent_ot
    >>> prior, report = fit_latent_ot(z_train, y_train, num_classes, LatentOTConfig())  # doctest: +SKIP
    >>> z, y = prior.sample(100, torch.Generator().manual_seed(0))                     # doctest: +SKIP
"""

from __future__ import annotations

from nfpi.latent_ot.metrics import by_class, class_modes, image_metrics, latent_metrics
from nfpi.latent_ot import prior as _prior
from nfpi.latent_ot.prior import *  # noqa: F403  (the prior's names: listed once, in prior.__all__)
from nfpi.latent_ot.report import METHODS, comparison_table, grid_figure

__all__ = [*_prior.__all__, "by_class", "class_modes", "latent_metrics", "image_metrics", "METHODS",
           "comparison_table", "grid_figure"]
