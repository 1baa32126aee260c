"""The ``flowfactor`` config slice, without torch (the config check reads it here; :mod:`nfpi.flowfactor.fields`
learns the potentials it describes).

    >>> FlowFactorConfig(steps=4, substeps=2).step_size
    0.125
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["TRANSFORMATIONS", "FlowFactorConfig"]

TRANSFORMATIONS: tuple[str, ...] = ("rotate", "scale", "intensity")
"""Pixel-space transformations this module knows how to apply to uint8 images."""


# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FlowFactorConfig:
    """Options of the flow-factorized transformation stage (config slice ``flowfactor``)."""

    flow: Literal["nfpi", "pretrain"] = "nfpi"  # Whose latent space: ``nfpi`` (flows/nfpi.pt, class-Gaussian prior) or ``pretrain`` (flows/pretrain.pt, N(0, I)); read by the rule.
    latent_coords: Literal["flow", "asinh"] = "flow"  # Coordinates of the potentials: the flow's latent ``z`` or ``asinh(z / latent_scale)`` (tames exploding latents).
    latent_scale: float = 1.0  # c of ``w = asinh(z / c)``: latents with |z| << c are left as they are.
    transformations: tuple[str, ...] = TRANSFORMATIONS  # Which transformations get a potential, in order (subset of ``rotate``, ``scale``, ``intensity``).
    rotate_deg: float = 7.0  # Rotation per step in degrees (counter-clockwise, about the image centre).
    scale_step: float = 1.06  # Zoom factor per step (> 1 enlarges the digit, about the image centre).
    intensity_step: float = 0.85  # Intensity factor per step (pixel values multiplied, then rounded back to uint8).
    steps: int = 5  # T: number of transformation steps in a training sequence x_0..x_T (time t = n/T).
    substeps: int = 1  # Explicit Euler steps per transformation step (step size h = 1 / (T * substeps)).
    hidden: int = 64  # Width of each potential MLP.
    depth: int = 2  # Number of hidden layers of each potential MLP (SiLU: smooth, so Hessians exist).
    quadratic_max_dim: int = 1024  # Largest latent dimension for which each potential gets the quadratic term 0.5 z^T S_k z (K d^2 parameters).
    mode: Literal["supervised", "weak"] = "supervised"  # ``supervised``: the transformation of each sequence is known; ``weak``: it is inferred.
    train_sequences: int = 512  # Training images (per transformation in supervised mode; pooled in weak mode).
    batch_size: int = 32  # Sequences per transformation per optimiser step.
    iterations: int = 300  # Adam steps.
    lr: float = 1e-2  # Adam learning rate (cosine-decayed to 5% over ``iterations``).
    hj_weight: float = 0.1  # Weight of the Hamilton-Jacobi residual penalty (mean squared residual at collocation points).
    init_weight: float = 0.1  # Weight of the HJ initial-condition (gauge) penalty: mean_z u_k(z, 0) = 0.
    density_weight: float = 0.1  # Weight of the density term (see ``density_target``), per dimension.
    density_target: Literal["consistency", "nll"] = "consistency"  # ``consistency``: evolved log-density change = the flow prior's log p_0(z_0) - log p_0(z_n) (Huber); ``nll``: minimise the log-det sum (the NLL of z_n under the evolved prior; rewards contraction).
    logdet: Literal["auto", "exact", "hutchinson"] = "auto"  # Density change estimator in evaluation: exact log det(I + h H) or Hutchinson; ``auto`` = exact iff d <= exact_max_dim.
    train_logdet: Literal["auto", "exact", "hutchinson"] = "hutchinson"  # Density change estimator inside the training loss (exact: d Hessian rows per point; a step ~5x slower at d=64).
    hj_points: int = 64  # HJ collocation points per potential and optimiser step (sampled from the rollout, plus as many at random times).
    exact_max_dim: int = 64  # Largest latent dimension for which ``auto`` uses the exact Hessian log-det.
    hutchinson_probes: int = 1  # Rademacher probes per sample for the Hutchinson estimate.
    hutchinson_order: int = 2  # Terms of the log-det power series sum_m (-1)^(m+1) tr((hH)^m)/m estimated by Hutchinson.
    weak_temperature: float = 0.05  # Weak mode: responsibilities softmax(-loss_k / temperature) (loss per dimension).
    weak_balance: float = 1.0  # Weak mode: weight of KL(mean responsibility || uniform) that keeps every potential in use.
    eval_images: int = 300  # Held-out (test split) images for the equivariance / composition / extrapolation metrics.
    extrapolate_factor: int = 2  # Extrapolation is evaluated up to extrapolate_factor * steps steps (trained: steps).
    augment_per_image: int = 1  # Augmented images per training image in the classifier comparison.
    classifier_train_size: int = 300  # Real training images for the classifier comparison (low-data regime, where augmentation matters).
    classifier: Literal["logreg"] = "logreg"  # Classifier of the comparison: scikit-learn logistic regression on pixels (fast on CPU).
    pca_axes: int = 8  # Principal axes per class for the NFPI PCA-mixup comparison.
    pca_beta_max: float = 0.5  # Mixup strength upper bound beta_max for the NFPI PCA-mixup comparison.
    adapt_steps: int = 300  # Make the flow transformation-aware first: fine-tune a copy of the input flow for this many steps (``nfpi.training.train_flow``, its own prior) on the training images plus ``adapt_copies`` randomly transformed copies of each, then learn the potentials in the adapted flow's latent space. 0: use the input flow as it is (a flow trained on plain digits rates rotated/zoomed digits at ~7700 bits/dim and its latent flows are worse than no flow; docs/flowfactor.md).
    adapt_lr: float = 1e-2  # Peak Adamax learning rate of the adaptation (linear warmup over its first 10% of steps; the paper's 1e-2).
    adapt_batch_size: int = 64  # Images per adaptation step (plain and transformed mixed).
    adapt_copies: int = 3  # Transformed copies per training image in the adaptation set (each: one random transformation).
    adapt_range: float = 1.0  # Adaptation amounts are drawn uniformly in ``[0, adapt_range * steps]`` transformation steps (real-valued); 1.0 = the range the potentials are trained on (extrapolated steps stay unseen by the flow).
    seed: int = 0  # Seed of the data subsets, initialisation, batches and probes.

    def __post_init__(self) -> None:
        bad = [t for t in self.transformations if t not in TRANSFORMATIONS]
        if bad or not self.transformations:
            raise ValueError(
                f"config key 'flowfactor.transformations': {list(self.transformations)} must be a non-empty subset of "
                f"{list(TRANSFORMATIONS)}"
            )
        for key in ("steps", "substeps", "hj_points", "quadratic_max_dim", "hidden", "depth", "train_sequences",
                    "batch_size", "iterations", "eval_images", "extrapolate_factor", "hutchinson_probes",
                    "hutchinson_order", "exact_max_dim", "classifier_train_size", "pca_axes", "augment_per_image",
                    "adapt_batch_size", "adapt_copies"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key 'flowfactor.{key}': must be >= 1, got {getattr(self, key)}")
        for key in ("hj_weight", "init_weight", "density_weight", "weak_balance", "pca_beta_max"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key 'flowfactor.{key}': must be >= 0, got {getattr(self, key)}")
        if self.adapt_steps < 0:
            raise ValueError(f"config key 'flowfactor.adapt_steps': must be >= 0 (0: no adaptation), got {self.adapt_steps}")
        for key in ("lr", "latent_scale", "weak_temperature", "scale_step", "intensity_step", "adapt_lr", "adapt_range"):
            if getattr(self, key) <= 0:
                raise ValueError(f"config key 'flowfactor.{key}': must be > 0, got {getattr(self, key)}")

    @property
    def step_size(self) -> float:
        """Euler step h in units of t (t = 1 at the end of a trained sequence)."""
        return 1.0 / (self.steps * self.substeps)

    def params(self) -> dict[str, float]:
        """Per-step parameter of every transformation (what ``transform_images`` needs)."""
        return {"rotate": self.rotate_deg, "scale": self.scale_step, "intensity": self.intensity_step}
