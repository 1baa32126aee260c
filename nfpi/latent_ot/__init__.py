"""Latent-space optimal transport prior (Liu, Gu & Samaras 2018) beside NFPI's class Gaussians.

- :mod:`nfpi.latent_ot.config`: the ``latent_ot`` config slice (torch-free: the config check imports it).
- :mod:`nfpi.latent_ot.prior`: the prior itself (exact batch OT, potential networks, the OT map and
  its semi-discrete variant, the fit) and the distribution distances (W2, MMD^2, mode coverage, NN distance).
- :mod:`nfpi.latent_ot.metrics`: the comparison's metrics on a set of generated latents and images.
- :mod:`nfpi.latent_ot.report`: the comparison table and the sample grid.

The stage ``latent_ot`` (:mod:`nfpi.stages.latent_ot`) runs them on the NFPI flow's latents::

    >>> from nfpi.latent_ot import LatentOTConfig, fit_latent_ot
    >>> prior, report = fit_latent_ot(z_train, y_train, num_classes, LatentOTConfig())  # doctest: +SKIP
    >>> z, y = prior.sample(100, torch.Generator().manual_seed(0))                     # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nfpi.latent_ot.config import LatentOTConfig
from nfpi.lazy import lazy_exports

if TYPE_CHECKING:
    from nfpi.latent_ot.metrics import by_class, class_modes, image_metrics, latent_metrics
    from nfpi.latent_ot.report import METHODS, comparison_table, grid_figure
    from nfpi.latent_ot.prior import (
        BatchOT,
        ClassLatents,
        FitReport,
        LatentOTPrior,
        PotentialNetworks,
        TooFewLatentsError,
        batch_ot,
        eight_gaussians,
        eight_gaussians_centres,
        fit_latent_ot,
        group_by_class,
        median_bandwidth,
        mmd2,
        mode_coverage,
        nearest_neighbour_distance,
        ot_map,
        semi_discrete_assign,
        source_sample,
        wasserstein2,
    )

__all__ = [
    "LatentOTConfig",
    "TooFewLatentsError",
    "BatchOT",
    "ClassLatents",
    "PotentialNetworks",
    "LatentOTPrior",
    "FitReport",
    "group_by_class",
    "source_sample",
    "batch_ot",
    "ot_map",
    "semi_discrete_assign",
    "fit_latent_ot",
    "wasserstein2",
    "mmd2",
    "median_bandwidth",
    "mode_coverage",
    "nearest_neighbour_distance",
    "eight_gaussians",
    "eight_gaussians_centres",
    "by_class",
    "class_modes",
    "latent_metrics",
    "image_metrics",
    "METHODS",
    "comparison_table",
    "grid_figure",
]

# name -> submodule for the names that need torch
_LAZY: dict[str, str] = {
    **{n: "prior" for n in __all__[1:20]},
    **{n: "metrics" for n in ('by_class', 'class_modes', 'latent_metrics', 'image_metrics')},
    **{n: "report" for n in ('METHODS', 'comparison_table', 'grid_figure')},
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())  # torch-backed names load on first use (PEP 562)
