"""Densities: dequantisation, bits/dim and the class-conditional Gaussian prior (paper Eq. 1, Sec. 4).

Conventions: an 8-bit image ``k in {0..255}^D`` is mapped to the continuous ``x = (k + u)/256 - 0.5``
with ``u ~ U[0, 1)^D`` (uniform dequantisation), so ``x in [-0.5, 0.5)``.  A flow gives the density
``log p(x)`` of that continuous ``x`` (nats); since each bin has width ``1/256`` per dimension,
``-log2 P(k) <= -log p(x)/log 2 + D * 8`` (Theis et al. 2016), reported per dimension as bits/dim.

The prior is a set of diagonal class Gaussians ``N(mu_y, diag v_y)`` on the full latent
``z in R^D``; the pretraining prior is ``N(0, I)`` for every class.  Log-densities of all classes
at once are matrix products (no per-class loop):
``log N(z; mu_y, v_y) = -0.5 * (z^2 @ (1/v).T - 2 z @ (mu/v).T + sum(mu^2/v) + sum(log v) + D log 2 pi)``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

__all__ = ["preprocess", "postprocess", "bits_per_dim", "ClassGaussianPrior", "flow_nll", "save_gaussians",
           "load_gaussians"]

_LOG_2PI = math.log(2.0 * math.pi)


def preprocess(
    x: Tensor, *, n_bits: int = 8, dequantize: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """uint8 images ``[B, C, H, W]`` -> float32 in ``[-0.5, 0.5)`` (the flow's input).

    With ``n_bits < 8`` the images are first reduced to ``2**n_bits`` levels (Glow).  With
    ``dequantize`` uniform noise is added inside each bin; without it the bin centre is used
    (deterministic latents for extraction / classification).  ``generator`` must live on
    ``x.device``.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {x.dtype}; pass the prepared data's uint8 arrays")
    if not 1 <= n_bits <= 8:
        raise ValueError(f"n_bits must be in 1..8, got {n_bits}")
    bins = float(2**n_bits)
    xf = x.to(torch.float32)
    if n_bits < 8:
        xf = torch.floor(xf / 2 ** (8 - n_bits))
    if dequantize:
        u = torch.rand(xf.shape, generator=generator, device=xf.device, dtype=xf.dtype)
        # rand is in [0, 1); keep strictly below the next bin even after float rounding
        xf = xf + u.clamp_(max=1.0 - 1e-6)
    else:
        xf = xf + 0.5
    return xf / bins - 0.5


def postprocess(x: Tensor, *, n_bits: int = 8) -> Tensor:
    """Float ``[-0.5, 0.5)`` -> uint8 ``[B, C, H, W]``: the bin containing ``x`` (clamped to range).

    Inverse of :func:`preprocess` for any dequantisation noise: ``postprocess(preprocess(k)) == k``.
    """
    bins = 2**n_bits
    k = torch.floor((x.float() + 0.5) * bins).clamp_(0, bins - 1)
    return (k * (256 // bins)).to(torch.uint8)


def bits_per_dim(log_px: Tensor, num_dims: int, n_bits: int = 8) -> Tensor:
    """Bits/dim of ``n_bits`` data from ``log p(x)`` (nats) of the preprocessed continuous ``x``.

    ``bpd = (-log p(x) + D * n_bits * log 2) / (D * log 2)``: the second term accounts for the
    bin width ``2**-n_bits`` of the ``[-0.5, 0.5)`` scaling.
    """
    ln2 = math.log(2.0)
    return (-log_px + num_dims * n_bits * ln2) / (num_dims * ln2)


class ClassGaussianPrior:
    """Diagonal class Gaussians ``N(mu_y, diag v_y)``, ``y = 0..K-1``, on latents ``z [B, D]``.

    Immutable: :meth:`to` returns a new prior.  The matrix-product coefficients are computed once.
    """

    def __init__(self, means: Tensor, variances: Tensor) -> None:
        if means.dim() != 2 or variances.shape != means.shape:
            raise ValueError(
                f"ClassGaussianPrior: means {tuple(means.shape)} and variances {tuple(variances.shape)} must both be [K, D]"
            )
        if not means.is_floating_point() or not variances.is_floating_point():
            raise TypeError("ClassGaussianPrior: means and variances must be floating point tensors")
        if not bool(torch.isfinite(means).all()) or not bool((variances > 0).all()) or not bool(torch.isfinite(variances).all()):
            raise ValueError("ClassGaussianPrior: means must be finite and variances finite and > 0 (check the solver output)")
        self.means = means
        self.variances = variances
        inv_v = 1.0 / variances
        self._inv_v = inv_v  # [K, D]
        self._mu_inv_v = means * inv_v  # [K, D]
        # per-class constant: sum(mu^2/v) + sum(log v) + D log 2 pi
        self._const = (means * self._mu_inv_v).sum(1) + torch.log(variances).sum(1) + means.shape[1] * _LOG_2PI

    @property
    def num_classes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def standard(cls, num_classes: int, dim: int, *, dtype: torch.dtype = torch.float32) -> ClassGaussianPrior:
        """All classes ``N(0, I)``: the pretraining prior."""
        return cls(torch.zeros(num_classes, dim, dtype=dtype), torch.ones(num_classes, dim, dtype=dtype))

    def _check(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"latent has shape {tuple(z.shape)}; the prior expects [B, {self.dim}]")
        if z.device != self.means.device:
            raise ValueError(f"latent on {z.device} but prior on {self.means.device}; call prior.to(device) once")

    def log_prob_all(self, z: Tensor) -> Tensor:
        """``log N(z_b; mu_y, v_y)`` for every image and class: ``[B, K]`` (three matrix products)."""
        self._check(z)
        dt = torch.promote_types(z.dtype, self.means.dtype)
        z = z.to(dt)
        quad = (z * z) @ self._inv_v.to(dt).T - 2.0 * (z @ self._mu_inv_v.to(dt).T)
        return -0.5 * (quad + self._const.to(dt))

    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """``log N(z_b; mu_{y_b}, v_{y_b})``: ``[B]``.

        Gathers each image's own class (direct form, O(B D), exact; no cancellation), which is the
        training loss term of the conditional flow (Eq. 1 with the class prior).
        """
        self._check(z)
        if y.shape != (z.shape[0],):
            raise ValueError(f"labels have shape {tuple(y.shape)}; expected [{z.shape[0]}]")
        dt = torch.promote_types(z.dtype, self.means.dtype)
        mu = self.means.to(dt)[y]
        inv_v = self._inv_v.to(dt)[y]
        d = z.to(dt) - mu
        logv = torch.log(self.variances.to(dt)).sum(1)[y]
        return -0.5 * ((d * d * inv_v).sum(1) + logv + self.dim * _LOG_2PI)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        """``log (1/K) sum_y N(z; mu_y, v_y)`` (equal class priors): ``[B]``."""
        return torch.logsumexp(self.log_prob_all(z), dim=1) - math.log(self.num_classes)

    def classify(self, z: Tensor) -> Tensor:
        """``argmax_y log N(z; mu_y, v_y)`` (NF-Acc): ``[B]`` int64."""
        return self.log_prob_all(z).argmax(dim=1)

    def sample(self, y: Tensor, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """``z ~ N(mu_y, T^2 v_y)`` for labels ``y [B]``: ``[B, D]``."""
        eps = torch.randn(
            (y.shape[0], self.dim), generator=generator, device=self.means.device, dtype=self.means.dtype
        )
        return self.means[y] + (temperature * self.variances[y].sqrt()) * eps

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ClassGaussianPrior:
        """A copy on ``device`` (and ``dtype``)."""
        return ClassGaussianPrior(self.means.to(device=device, dtype=dtype), self.variances.to(device=device, dtype=dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """``{"means": [K, D], "variances": [K, D]}`` (what ``gaussians/{setting}.pt`` stores)."""
        return {"means": self.means.detach().clone(), "variances": self.variances.detach().clone()}

    @classmethod
    def from_solution(cls, means: Tensor, variances: Tensor) -> ClassGaussianPrior:
        """The flow's prior (float32) from a solver's output (``nfpi.fpi.FPIResult.means`` / ``.variances``).

        A full-covariance solution (``[K, D, D]``, method ``fpi_full``) keeps its diagonal: the flow's
        class Gaussians are diagonal (the paper's Eq. 6 with ``Sigma_y = diag(v_y)``).
        """
        if variances.dim() == 3:
            variances = torch.diagonal(variances, dim1=-2, dim2=-1)
        return cls(means.to(torch.float32), variances.to(torch.float32))

    @classmethod
    def from_state_dict(cls, d: dict[str, Tensor]) -> ClassGaussianPrior:
        """Inverse of :meth:`state_dict`; names the missing key if ``d`` is not a prior state."""
        missing = [k for k in ("means", "variances") if k not in d]
        if missing:
            raise KeyError(f"ClassGaussianPrior state lacks {missing}; expected keys 'means' and 'variances'")
        return cls(torch.as_tensor(d["means"]), torch.as_tensor(d["variances"]))

    def __repr__(self) -> str:
        return f"ClassGaussianPrior(K={self.num_classes}, D={self.dim}, dtype={self.means.dtype}, device={self.means.device})"


def flow_nll(flow: torch.nn.Module, prior: ClassGaussianPrior, x_pre: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-image ``-log p(x | y)`` in nats (``y=None``: marginal over classes) and the latents.

    ``-log p(x|y) = -log N(f(x); mu_y, v_y) - log|det J_f(x)|`` (Eq. 1 with the class prior);
    ``x_pre`` is the preprocessed (dequantised) image.  The trainer minimises the mean; pass the
    result to :func:`bits_per_dim` (with ``-nll``) to report bits/dim.
    """
    z, logdet = flow(x_pre)
    lp = prior.log_prob(z, y) if y is not None else prior.marginal_log_prob(z)
    return -(lp + logdet), z


def save_gaussians(path: str | os.PathLike[str], prior: ClassGaussianPrior, record: dict[str, Any]) -> None:
    """Write a setting's solved class Gaussians: an :mod:`nfpi.checkpoint` of kind ``"gaussians"`` holding the
    prior's state and the solve record (``gaussians/<setting>.pt``; the record is ``gaussians/<setting>.json`` too).
    """
    from nfpi.checkpoint import save_checkpoint

    save_checkpoint(path, kind="gaussians", model={}, gaussians=prior.state_dict(), extra={"record": record})


def load_gaussians(path: str | os.PathLike[str]) -> tuple[ClassGaussianPrior, dict[str, Any]]:
    """The one loader of kind ``"gaussians"``: ``(prior, solve record)`` (float64, on the CPU).

    >>> prior, record = load_gaussians("results/digits/gaussians/nfpi.pt")  # doctest: +SKIP
    >>> record["lam"], prior.num_classes                                    # doctest: +SKIP
    """
    from nfpi.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, expected_kind="gaussians")
    return ClassGaussianPrior.from_state_dict(ckpt["gaussians"]), ckpt["extra"]["record"]
