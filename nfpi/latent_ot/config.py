"""The ``latent_ot`` config slice, without torch (the config check reads it here; :mod:`nfpi.latent_ot.prior`
fits the prior it describes).

    >>> LatentOTConfig().source
    'gaussian'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nfpi.config import ConfigError

__all__ = ["LatentOTConfig"]


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class LatentOTConfig:
    """Options of the latent OT prior (config slice ``latent_ot``).
    """

    source: Literal["gaussian", "uniform"] = "gaussian"  # the simple distribution transported onto each class: ``"gaussian"`` (``N(0, I)``) or ``"uniform"`` (``U[-sqrt 3, sqrt 3]^d``, also unit variance), in standardised coordinates.
    standardize: bool = True  # learn the map on class-standardised latents (class mean, per-dimension std); without it the source is ``N(0, I)`` in raw latent coordinates.
    hidden: int = 128  # width of each class's potential network (an MLP ``d -> hidden^depth -> 1``).
    depth: int = 2  # number of hidden layers of the potential network.
    steps: int = 200  # training steps (each solves one exact OT problem per class).
    batch_size: int = 128  # source samples per class per step; the class batch is ``min(batch_size, n_y)`` latents drawn without replacement.
    lr: float = 5e-3  # Adam learning rate of the potential networks.
    value_weight: float = 0.1  # weight of the regression of ``phi`` onto the centred OT dual potentials ``u``.
    grad_weight: float = 1.0  # weight of the gradient regulariser ``|grad phi(x_i) - (x_i - tbar_i)|^2``.
    map_scale: float = 1.0  # ``s`` in ``T(x) = x - s grad phi(x)``; 1 is the OT map, below 1 McCann interpolation.
    semi_discrete_samples: int = 4096  # source samples per class in the exact OT problem whose target duals are the semi-discrete weights ``g`` (0 disables the variant); the cell masses approach ``1/m`` as this grows relative to the class size ``m`` (LP cost grows like samples * m).
    min_class_size: int = 10  # a class with fewer training latents is an error (an OT map fitted to a handful of points is meaningless); the message names the class and this key.
    samples_per_class: int = 100  # latents generated per class by the stage (for metrics and images).
    temperature: float = 1.0  # NFPI Gaussians are sampled at this temperature (``z ~ N(mu, T^2 v)``) for the comparison; the OT prior's source is not tempered.
    mode_clusters: int = 5  # k-means clusters per class ("modes") for the mode-coverage metric.
    mode_min_share: float = 0.25  # a mode counts as covered when its share of the generated samples is at least this fraction of its share of the class's training latents.
    eval_points: int = 300  # at most this many points per class enter the exact W2 (``ot.emd2``) and MMD.
    grid_per_class: int = 10  # images per class in the sample grid PNG.
    seed: int = 0  # seeds network initialisation, batches and sampling (the map is deterministic given it).
    device: str = "cpu"  # ``"cpu"``, ``"cuda"`` or ``"auto"``.

    def __post_init__(self) -> None:
        checks = {
            "hidden": self.hidden >= 1,
            "depth": self.depth >= 1,
            "steps": self.steps >= 0,
            "batch_size": self.batch_size >= 2,
            "lr": self.lr > 0,
            "value_weight": self.value_weight >= 0,
            "grad_weight": self.grad_weight >= 0,
            "map_scale": self.map_scale >= 0,
            "semi_discrete_samples": self.semi_discrete_samples >= 0,
            "min_class_size": self.min_class_size >= 2,
            "samples_per_class": self.samples_per_class >= 1,
            "temperature": self.temperature >= 0,
            "mode_clusters": self.mode_clusters >= 1,
            "mode_min_share": 0 <= self.mode_min_share <= 1,
            "eval_points": self.eval_points >= 2,
            "grid_per_class": self.grid_per_class >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(f"config key 'latent_ot.{bad[0]}': value {getattr(self, bad[0])!r} is out of range "
                              "(see the LatentOTConfig docstring for the allowed values)")
        if self.source not in ("gaussian", "uniform"):
            raise ConfigError(f"config key 'latent_ot.source': {self.source!r} is not 'gaussian' or 'uniform'")
