"""Flow-factorized latent transformations (Song, Keller, Sebe & Welling, NeurIPS 2023) in an NF latent space.

Each input transformation ``k`` (rotation, scale, intensity, ...) is a *latent flow*: a latent
``z = f(x)`` of the normalizing flow ``f`` moves along the gradient field of a learned,
time-conditioned potential ``u_k(z, t)``,

    dz/dt = grad_z u_k(z, t),                                          (flow ODE)
    d_t u_k + 0.5 |grad_z u_k|^2 = 0,   u_k(., 0) = u_k0               (Hamilton-Jacobi: dynamic OT)
    log p_t(z_t) = log p_0(z_0) - int_0^t Laplacian u_k(z_s, s) ds     (continuity equation)

and the transformed image is ``f^{-1}(z_t)``.  Time is discretised with explicit Euler steps
``z <- z + h grad u_k(z, t)``; the exact discrete density change of one step is
``-log det(I + h Hess u_k)`` (used for small ``d``), estimated for large ``d`` by Hutchinson
probes of the log-det power series.  Under the HJ equation the characteristics are straight lines
travelled at constant speed (the velocity is transported unchanged), which is what lets a field
trained on ``T`` steps extrapolate beyond them and makes fields of different transformations
composable one after another.

Only the abstract of Song et al. is available to this project (``shared/seeds/002``).  The
following details are *reconstructed* here (see ``docs/flowfactor.md``): the potential
architecture (one MLP per transformation on ``[z, t]``, batched over transformations), the time
unit (``t = n / T`` for step ``n`` of a trained sequence of ``T`` steps), the trajectory loss
(mean squared error of an Euler rollout from ``z_0`` against the flow's latents of
``x_1..x_T``), the HJ initial condition (a gauge: ``u_k(., 0)`` has zero mean on the data; the
HJ residual fixes everything else), the density term (the negative log-density change along the
rolled-out trajectory, i.e. the NLL of the transformed latents under the evolved prior up to the
constant ``log p_0(z_0)``), and the weakly supervised mode (responsibilities ``softmax(-loss_k /
tau)`` over the ``K`` potentials plus a balance term, hard ``argmin`` at inference).

Everything that touches images works on uint8 ``[N, C, H, W]`` arrays/tensors; latents are
``[B, D]`` float, ``D = C*H*W``.  The flow itself is abstracted by :class:`LatentCodec`
(encode/decode/log-prob), so the library runs on the identity map over pixel space, on a linear
stand-in, or on a trained ``nfpi`` flow (:func:`codec_from_trained`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfpi.flowfactor.config import TRANSFORMATIONS, FlowFactorConfig
from nfpi.progress import progress

__all__ = [
    "TRANSFORMATIONS",
    "FlowFactorConfig",
    "LatentCodec",
    "IdentityCodec",
    "LinearCodec",
    "FlowCodec",
    "AsinhCodec",
    "codec_from_trained",
    "PotentialBank",
    "permute_bank",
    "FieldEval",
    "field",
    "hessian",
    "logdet_exact",
    "logdet_hutchinson",
    "step_logdet",
    "Rollout",
    "rollout",
    "hj_residual",
    "transform_images",
    "make_sequences",
    "encode_sequences",
    "LossTerms",
    "flowfactor_loss",
    "PotentialFit",
    "train_potentials",
    "infer_transformation",
    "move_latents",
    "apply_flow_images",
    "equivariance_errors",
    "composition_errors",
    "sequence_likelihood",
    "augment_along_fields",
    "pixel_augment",
    "random_transform_copies",
    "images_to_unit",
    "unit_to_images",
    "numpy_images",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# The flow, abstracted: images <-> latents
# ----------------------------------------------------------------------------------------------


def images_to_unit(images: Tensor) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> float in ``[-0.5, 0.5)`` at the bin centres (deterministic dequantisation).

    Mid-bin values make encodings reproducible; this is ``nfpi.density.preprocess(dequantize=False)``.
    """
    from nfpi.density import preprocess

    return preprocess(images, dequantize=False)


def unit_to_images(x: Tensor) -> Tensor:
    """Float in ``[-0.5, 0.5)`` -> uint8 (the bin containing ``x``, clipped): ``nfpi.density.postprocess``."""
    from nfpi.density import postprocess

    return postprocess(x)


class LatentCodec(Protocol):
    """What this module needs from a normalizing flow: a bijection images <-> latents ``[B, D]``."""

    shape: tuple[int, int, int]

    def encode(self, x: Tensor) -> Tensor:
        """Float images in ``[-0.5, 0.5)`` ``[B, C, H, W]`` -> latents ``[B, D]``."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """Latents ``[B, D]`` -> float images ``[B, C, H, W]``."""
        ...

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) of float images under the flow (prior + log|det J|), in nats, ``[B]``."""
        ...

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p_0(z) of latents under the flow's prior, ``[B]``."""
        ...


def _std_normal_log_prob(z: Tensor) -> Tensor:
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


class IdentityCodec:
    """The identity map over pixel space (scaled so latents have unit-ish spread): a test stand-in."""

    def __init__(self, shape: tuple[int, int, int], scale: float = 4.0) -> None:
        self.shape = shape
        self.scale = scale

    def encode(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) * self.scale

    def decode(self, z: Tensor) -> Tensor:
        return (z / self.scale).reshape(z.shape[0], *self.shape)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return _std_normal_log_prob(z)

    def log_prob(self, x: Tensor) -> Tensor:
        d = x[0].numel()
        return self.prior_log_prob(self.encode(x)) + d * math.log(self.scale)


class LinearCodec:
    """An invertible affine stand-in flow ``z = W (x - m)`` (PCA whitening of training images).

    Fitted in closed form in milliseconds; it mixes all pixels, so a latent move is a non-local
    image edit, which is the property the real flow has and the identity lacks.
    """

    def __init__(self, mean: Tensor, weight: Tensor, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        self.mean = mean
        self.weight = weight
        self.inv = torch.linalg.inv(weight.double()).to(weight.dtype)
        self._logdet = float(torch.linalg.slogdet(weight.double())[1])

    @classmethod
    def fit(cls, images: Tensor, eps: float = 1e-3) -> LinearCodec:
        """PCA-whiten uint8 ``images`` (``eps`` regularises near-empty border pixels)."""
        x = images_to_unit(images).reshape(images.shape[0], -1).double()
        mean = x.mean(0)
        cov = torch.cov((x - mean).T) + eps * torch.eye(x.shape[1], dtype=x.dtype)
        evals, evecs = torch.linalg.eigh(cov)
        weight = (evecs / evals.sqrt()).T  # rows: principal axes scaled to unit variance
        return cls(mean.float(), weight.float(), tuple(images.shape[1:]))  # type: ignore[arg-type]

    def encode(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) - self.mean) @ self.weight.T

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.inv.T + self.mean).reshape(z.shape[0], *self.shape)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        return _std_normal_log_prob(z)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.prior_log_prob(self.encode(x)) + self._logdet


class FlowCodec:
    """Adapter for a trained ``nfpi`` flow: ``flow(x) -> (z, logdet)`` and ``flow.inverse(z)``.

    The call conventions of the flow are probed once (tuple or tensor outputs, multi-scale lists)
    so this module does not depend on the internals of ``nfpi.flows``.  ``prior`` is the trained
    prior (``log_prob(z)`` or ``log_prob(z, y)``); without one, N(0, I).
    """

    def __init__(self, flow: nn.Module, shape: tuple[int, int, int], prior: object | None = None,
                 batch: int = 1024) -> None:
        self.flow = flow.eval()
        self.shape = shape
        self.prior = prior
        self.batch = batch
        self.device = next(iter(flow.parameters()), torch.empty(0)).device

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.flow(x.to(self.device))
        z, ld = (out[0], out[1]) if isinstance(out, (tuple, list)) and len(out) == 2 else (out, None)
        if isinstance(z, (list, tuple)):
            z = torch.cat([t.reshape(t.shape[0], -1) for t in z], 1)
        z = z.reshape(z.shape[0], -1)
        if ld is None:
            ld = torch.zeros(z.shape[0], device=z.device)
        return z.float(), ld.reshape(-1).float()

    def _inverse(self, z: Tensor) -> Tensor:
        for name in ("inverse", "reverse", "decode"):
            fn = getattr(self.flow, name, None)
            if fn is not None:
                break
        else:
            raise TypeError("the loaded flow has no inverse()/reverse(); nfpi.flowfactor needs an invertible flow")
        try:
            x = fn(z.to(self.device))
        except Exception:  # a flow that wants image-shaped latents
            x = fn(z.to(self.device).reshape(z.shape[0], *self.shape))
        x = x[0] if isinstance(x, (tuple, list)) else x
        return x.reshape(z.shape[0], *self.shape).float()

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        return torch.cat([self._forward(c)[0].cpu() for c in x.split(self.batch)])

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return torch.cat([self._inverse(c).cpu() for c in z.split(self.batch)])

    def prior_log_prob(self, z: Tensor) -> Tensor:
        if self.prior is None or not (hasattr(self.prior, "marginal_log_prob") or hasattr(self.prior, "log_prob")):
            return _std_normal_log_prob(z)
        with torch.no_grad():
            marginal = getattr(self.prior, "marginal_log_prob", None)  # ClassGaussianPrior: equal class weights
            lp = marginal(z) if marginal is not None else self.prior.log_prob(z)  # type: ignore[attr-defined]
        return lp.reshape(-1).float().cpu()

    @torch.no_grad()
    def log_prob(self, x: Tensor) -> Tensor:
        out = []
        for c in x.split(self.batch):
            z, ld = self._forward(c)
            out.append(self.prior_log_prob(z.cpu()) + ld.cpu())
        return torch.cat(out)


class AsinhCodec:
    """Wrap a codec with the elementwise bijection ``w = asinh(z / c)`` (latent coordinates the potentials see).

    A flow trained on 8x8 digits maps transformed digits far out of its training distribution
    (ink in always-empty border pixels): their latents reach |z| ~ 10^3 while untransformed ones
    stay O(1), and a squared loss in ``z`` is then decided by a few exploding coordinates.
    ``asinh`` is linear near 0 (``w ~ z / c`` for |z| << c) and logarithmic in the tails, so the
    composed map is still a normalizing flow (diagonal Jacobian ``c cosh w``, added to the log-density)
    with O(1..10) coordinates.  ``c`` is the scale below which nothing changes.
    """

    def __init__(self, inner: LatentCodec, scale: float = 1.0) -> None:
        self.inner = inner
        self.scale = scale
        self.shape = inner.shape

    def encode(self, x: Tensor) -> Tensor:
        return torch.asinh(self.inner.encode(x) / self.scale)

    def decode(self, w: Tensor) -> Tensor:
        return self.inner.decode(self.scale * torch.sinh(w))

    def _log_jac(self, w: Tensor) -> Tensor:  # log |dz/dw| summed over coordinates
        return (math.log(self.scale) + torch.log(torch.cosh(w))).sum(-1)

    def prior_log_prob(self, w: Tensor) -> Tensor:
        return self.inner.prior_log_prob(self.scale * torch.sinh(w)) + self._log_jac(w)

    def log_prob(self, x: Tensor) -> Tensor:
        # p_x is the same density whatever the latent coordinates: the Jacobians cancel
        return self.inner.log_prob(x)


def codec_from_trained(path: str, shape: tuple[int, int, int]) -> FlowCodec:
    """Load ``nfpi.training.load_trained_flow(path)`` (``.flow``, ``.prior``) into a :class:`FlowCodec`."""
    from nfpi.training import load_trained_flow  # library -> library import; heavy, so local

    trained = load_trained_flow(path)
    flow = trained.flow.float().cpu()
    prior = getattr(trained, "prior", None)
    if isinstance(prior, nn.Module):
        prior = prior.float().cpu()
    return FlowCodec(flow, shape, prior)


# ----------------------------------------------------------------------------------------------
# Potentials u_k(z, t), batched over transformations
# ----------------------------------------------------------------------------------------------


class PotentialBank(nn.Module):
    """K scalar potentials ``u_k(z, t)`` evaluated together with batched matrix products.

    ``u_k(z, t) = (a_k + t b_k)^T z + 0.5 z^T S_k z + MLP_k([z, t])`` with ``S_k`` symmetric: the
    quadratic part gives every field an affine component (an intensity change is exactly such a
    field in a linear latent space) that is learnt in a few steps; the MLP adds the non-linear part.
    Weights are ``[K, in, out]`` so one ``baddbmm`` per layer serves all transformations (no loop
    over ``k``).  SiLU keeps ``u`` smooth: the HJ residual needs ``grad u`` to be differentiable and
    the density change needs the Hessian.  The output layer, ``a``, ``b`` and ``S`` start at zero,
    so an untrained bank is the no-flow baseline (zero field).
    """

    def __init__(self, num: int, dim: int, hidden: int = 128, depth: int = 2, quadratic: bool = True) -> None:
        super().__init__()
        self.num, self.dim = num, dim
        sizes = [dim + 1, *([hidden] * depth), 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = torch.randn(num, a, b) / math.sqrt(a)
            if i == len(sizes) - 2:
                w = torch.zeros(num, a, b)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(num, 1, b)))
        self.lin = nn.Parameter(torch.zeros(num, 2, dim))  # a_k, b_k
        # S_k = (Q + Q^T) / 2: K d^2 parameters, so large latents (d = 3072 .. 12288) go without it
        self.quad = nn.Parameter(torch.zeros(num, dim, dim)) if quadratic else None

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        """``z`` ``[K, B, d]``, ``t`` ``[K, B]`` (or broadcastable) -> ``u`` ``[K, B]``."""
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[:2])
        h = torch.cat([z, t.unsqueeze(-1)], -1)
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.to(h.dtype), h, w.to(h.dtype))
            if i < n - 1:
                h = F.silu(h)
        lin = self.lin.to(z.dtype)
        u = h.squeeze(-1) + (z * (lin[:, :1] + t.unsqueeze(-1) * lin[:, 1:])).sum(-1)
        if self.quad is not None:
            sym = 0.5 * (self.quad + self.quad.transpose(1, 2)).to(z.dtype)
            u = u + 0.5 * (torch.bmm(z, sym) * z).sum(-1)
        return u


def permute_bank(bank: PotentialBank, order: Sequence[int]) -> PotentialBank:
    """A bank whose potential ``k`` is ``bank``'s potential ``order[k]`` (names weak-mode potentials)."""
    out = PotentialBank(bank.num, bank.dim, bank.weights[0].shape[-1], len(bank.weights) - 1, bank.quad is not None)
    idx = torch.as_tensor(list(order), dtype=torch.long)
    with torch.no_grad():
        for dst, src in zip(out.parameters(), bank.parameters()):
            dst.copy_(src[idx])
    return out.eval()


class FieldEval(NamedTuple):
    """Potential, its gradient field and (optionally) its time derivative at ``[K, B]`` points."""

    u: Tensor  # [K, B]
    grad: Tensor  # [K, B, d]
    dt: Tensor | None  # [K, B]


def field(bank: PotentialBank, z: Tensor, t: Tensor | float, *, create_graph: bool = False,
          with_dt: bool = False) -> FieldEval:
    """Gradient field ``grad_z u_k(z, t)`` (the latent velocity) and optionally ``d_t u_k``.

    ``u_k`` of sample ``b`` depends only on ``z[k, b]``, so the gradient of the sum is the
    per-sample gradient.  ``create_graph`` keeps the graph for losses on the field (training,
    Hessians).
    """
    z = z if z.requires_grad else z.detach().requires_grad_(True)
    tt = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[:2]).clone()
    if with_dt:
        tt.requires_grad_(True)
    with torch.enable_grad():
        u = bank(z, tt)
        inputs = (z, tt) if with_dt else (z,)
        grads = torch.autograd.grad(u.sum(), inputs, create_graph=create_graph)
    return FieldEval(u, grads[0], grads[1] if with_dt else None)


def hessian(grad: Tensor, z: Tensor, *, create_graph: bool = False) -> Tensor:
    """Hessian ``[K, B, d, d]`` of the potential from its gradient ``grad`` (``[K, B, d]``, built with graph).

    One batched vector-Jacobian product per row (``is_grads_batched``: vmap, no Python loop over d).
    """
    d = grad.shape[-1]
    eye = torch.eye(d, dtype=grad.dtype, device=grad.device)
    probes = eye[:, None, None, :].expand(d, *grad.shape)
    rows = torch.autograd.grad(grad, z, grad_outputs=probes, is_grads_batched=True, create_graph=create_graph,
                               retain_graph=True)[0]
    return rows.permute(1, 2, 0, 3)  # [d, K, B, d] -> [K, B, d(row), d]


def logdet_exact(hess: Tensor, h: float) -> Tensor:
    """``log |det(I + h H)|`` ``[K, B]``: the exact log-Jacobian of one Euler step ``z + h grad u``."""
    d = hess.shape[-1]
    eye = torch.eye(d, dtype=hess.dtype, device=hess.device)
    # H is symmetric: eigvalsh is cheaper and differentiable; 1 + h*lambda <= 0 means the Euler step
    # is not invertible there (step too large for the field's curvature): reported via abs.
    lam = torch.linalg.eigvalsh(eye + h * 0.5 * (hess + hess.transpose(-1, -2)))
    return lam.abs().clamp_min(1e-30).log().sum(-1)


def logdet_hutchinson(grad: Tensor, z: Tensor, h: float, *, probes: int = 1, order: int = 2,
                      generator: torch.Generator | None = None, create_graph: bool = False) -> Tensor:
    """Hutchinson estimate of ``log det(I + h H)`` ``[K, B]`` by the series ``sum_m (-1)^(m+1) tr((hH)^m) / m``.

    ``tr(A^m) ~ mean_v v^T A^m v`` with Rademacher ``v``; ``A^m v`` costs ``m`` Hessian-vector
    products (no d x d matrix), so the cost is independent of ``d``.  Unbiased for the truncated
    series; the truncation error is O((h |H|)^(order+1)).
    """
    shape = (probes, *grad.shape)
    v = torch.randint(0, 2, shape, generator=generator).to(grad) * 2 - 1
    w = v
    est = torch.zeros(grad.shape[:2], dtype=grad.dtype, device=grad.device)
    for m in range(1, order + 1):
        w = h * torch.autograd.grad(grad, z, grad_outputs=w, is_grads_batched=True,
                                    create_graph=create_graph, retain_graph=True)[0]
        est = est + ((-1) ** (m + 1) / m) * (v * w).sum(-1).mean(0)
    return est


def step_logdet(ev: FieldEval, z: Tensor, h: float, method: Literal["exact", "hutchinson"], *,
                probes: int = 1, order: int = 2, generator: torch.Generator | None = None,
                create_graph: bool = False) -> Tensor:
    """Log-density decrease of one Euler step, ``log |det(I + h H_u)|``, by the chosen estimator."""
    if method == "exact":
        return logdet_exact(hessian(ev.grad, z, create_graph=create_graph), h)
    return logdet_hutchinson(ev.grad, z, h, probes=probes, order=order, generator=generator,
                             create_graph=create_graph)


class Rollout(NamedTuple):
    """An Euler rollout: latents at every transformation step and the accumulated log-det."""

    states: Tensor  # [K, B, n_steps + 1, d]  (index n: after n transformation steps)
    logdet: Tensor | None  # [K, B, n_steps + 1]  cumulative sum of log|det(I + hH)|; None if not asked
    points: list[tuple[Tensor, float]]  # (z, t) at every Euler evaluation (collocation points)


def rollout(bank: PotentialBank, z0: Tensor, n_steps: int, substeps: int, h: float, *, t0: float = 0.0,
            logdet: Literal["none", "exact", "hutchinson"] = "none", create_graph: bool = False,
            probes: int = 1, order: int = 2, generator: torch.Generator | None = None) -> Rollout:
    """Integrate ``dz/dt = grad u_k(z, t)`` with explicit Euler from ``z0`` ``[K, B, d]``.

    ``n_steps`` transformation steps of ``substeps`` Euler steps each (``t`` advances by ``h`` per
    Euler step, from ``t0``).  With ``logdet`` the density change is accumulated:
    ``log p_n(z_n) = log p_0(z_0) - logdet[..., n]``.
    """
    z = z0
    states = [z0]
    lds = [torch.zeros(z0.shape[:2], dtype=z0.dtype, device=z0.device)] if logdet != "none" else None
    points: list[tuple[Tensor, float]] = []
    t = t0
    need_graph = create_graph or logdet != "none"
    for _ in range(n_steps):
        acc = lds[-1] if lds is not None else None
        for _ in range(substeps):
            zin = z if z.requires_grad else z.detach().requires_grad_(True)
            ev = field(bank, zin, t, create_graph=need_graph)
            points.append((zin, t))
            if lds is not None:
                ld = step_logdet(ev, zin, h, logdet, probes=probes, order=order, generator=generator,
                                 create_graph=create_graph)
                acc = acc + (ld if create_graph else ld.detach())
            g = ev.grad if create_graph else ev.grad.detach()
            z = zin + h * g
            if not create_graph:
                z = z.detach()
            t += h
        states.append(z)
        if lds is not None:
            lds.append(acc)  # type: ignore[arg-type]
    return Rollout(torch.stack(states, 2), torch.stack(lds, 2) if lds is not None else None, points)


def hj_residual(bank: PotentialBank, z: Tensor, t: Tensor | float, *, create_graph: bool = True) -> Tensor:
    """Hamilton-Jacobi residual ``d_t u + 0.5 |grad_z u|^2`` ``[K, B]`` (zero for a dynamic-OT potential)."""
    ev = field(bank, z, t, create_graph=create_graph, with_dt=True)
    return ev.dt + 0.5 * ev.grad.pow(2).sum(-1)  # type: ignore[operator]


# ----------------------------------------------------------------------------------------------
# Pixel-space transformations and sequences
# ----------------------------------------------------------------------------------------------


def transform_images(images: Tensor, name: str, amount: Tensor | float, params: dict[str, float]) -> Tensor:
    """Apply ``amount`` steps of transformation ``name`` to uint8 ``images`` ``[N, C, H, W]``.

    ``amount`` may differ per image (``[N]``, real-valued).  Rotation and scaling are one batched
    bilinear ``affine_grid``/``grid_sample`` (the same resampling as torchvision's affine, but with
    a per-image angle); intensity multiplies pixel values.  The cumulative parameter is applied to
    the source image (rotate by ``n * angle``), never step after step, so interpolation blur does not
    pile up along a sequence.
    """
    n = images.shape[0]
    a = torch.as_tensor(amount, dtype=torch.float32).reshape(-1).expand(n)
    x = images.to(torch.float32)
    if name == "intensity":
        y = x * params["intensity"] ** a[:, None, None, None]
    elif name in ("rotate", "scale"):
        ang = torch.deg2rad(params["rotate"] * a) if name == "rotate" else torch.zeros(n)
        s = params["scale"] ** a if name == "scale" else torch.ones(n)
        c, si = torch.cos(ang) / s, torch.sin(ang) / s
        # affine_grid maps output coords to input coords: the inverse of rotate-by-ang, zoom-by-s.
        theta = torch.stack([torch.stack([c, -si, torch.zeros(n)], 1), torch.stack([si, c, torch.zeros(n)], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    else:
        raise ValueError(f"unknown transformation '{name}'; known: {list(TRANSFORMATIONS)} (config flowfactor.transformations)")
    return torch.clamp(torch.round(y), 0, 255).to(torch.uint8)


def make_sequences(images: Tensor, names: Sequence[str], steps: int, params: dict[str, float]) -> Tensor:
    """Sequences ``x_0..x_T`` of every transformation: uint8 ``[K, N, T + 1, C, H, W]``."""
    out = []
    for name in names:
        out.append(torch.stack([transform_images(images, name, float(n), params) for n in range(steps + 1)], 1))
    return torch.stack(out, 0)


def encode_sequences(codec: LatentCodec, seqs: Tensor) -> Tensor:
    """Latents of uint8 sequences ``[..., C, H, W]`` -> ``[..., D]`` (mid-bin dequantisation)."""
    lead = seqs.shape[:-3]
    z = codec.encode(images_to_unit(seqs.reshape(-1, *seqs.shape[-3:])))
    return z.reshape(*lead, -1)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


class LossTerms(NamedTuple):
    """The loss and its parts (all scalars; ``resp`` only in weak mode)."""

    total: Tensor
    match: Tensor
    hj: Tensor
    init: Tensor
    density: Tensor
    resp: Tensor | None


def flowfactor_loss(bank: PotentialBank, seq: Tensor, cfg: FlowFactorConfig, *, weak: bool = False,
                    log_prior: Tensor | None = None, generator: torch.Generator | None = None) -> LossTerms:
    """Training loss on latent sequences ``seq``: ``[K, B, T + 1, d]`` (supervised) or ``[B, T + 1, d]`` (weak).

    ``match``: mean squared error (per dimension) of the Euler rollout from ``z_0`` against
    ``z_1..z_T``; ``hj``: mean squared HJ residual (divided by ``d``, like ``match``) at ``hj_points``
    rollout points and at the same points at random times in ``[0, extrapolate_factor]``; ``init``:
    ``(mean_z u_k(z, 0) / d)^2`` (the HJ initial condition as a gauge); ``density``: the log-density decrease over the sequence,
    ``sum_s log|det(I + h H)|`` per dimension (the NLL of ``z_T`` under the evolved prior up to
    ``log p_0(z_0)``; ``density_target: nll``), or (default ``consistency``) the Huber distance of that
    log-density change to the flow prior's ``log p_0(z_0) - log p_0(z_n)`` (``log_prior``: ``[K, B, T+1]``,
    ``[B, T+1]`` in weak mode; without it the target is volume preservation), computed along the rollout
    with the ``train_logdet`` estimator.  In weak mode every
    sequence is rolled out under every potential; responsibilities ``softmax(-match_k / tau)`` weight
    the per-potential losses and a KL-to-uniform term keeps all potentials in use.
    """
    K, d, T = bank.num, bank.dim, cfg.steps
    if weak:
        seq = seq.unsqueeze(0).expand(K, *seq.shape)
    ro = rollout(bank, seq[:, :, 0], T, cfg.substeps, cfg.step_size, create_graph=True)
    err = (ro.states[:, :, 1:] - seq[:, :, 1:]).pow(2).mean((-1, -2))  # [K, B]
    if weak:
        resp = torch.softmax(-err.detach() / cfg.weak_temperature, 0)  # [K, B]
        w = resp
    else:
        resp = None
        w = torch.full_like(err, 1.0 / K)
    match = (w * err).sum(0).mean()
    # Collocation points: a random subset of the rollout's Euler points (detached: the PDE and density
    # terms train the potential's values there, not the path), plus the same points at random times in
    # [0, extrapolation horizon] (the PDE must hold off the data path too, where we extrapolate).
    zs = torch.cat([p[0].detach() for p in ro.points], 1)
    ts = torch.cat([torch.full(p[0].shape[:2], p[1]) for p in ro.points], 1)
    wz = w.repeat(1, len(ro.points)) if weak else torch.full_like(ts, 1.0 / K)
    sel = torch.randperm(zs.shape[1], generator=generator)[: cfg.hj_points]  # subsample: these terms dominate cost
    zs, ts, wz = zs[:, sel], ts[:, sel], wz[:, sel]
    rnd_t = torch.rand(ts.shape, generator=generator) * cfg.extrapolate_factor
    # per-dimension scale: u and |grad u|^2 are sums over d coordinates while ``match`` is a mean over
    # them; dividing by d keeps the weights meaningful across latent sizes (d = 64 .. 12288).
    res = (torch.cat([hj_residual(bank, zs, ts), hj_residual(bank, zs, rnd_t)], 1) / d).pow(2)  # [K, 2M]
    hj = (wz.repeat(1, 2) * res).sum(0).mean()
    u0 = bank(seq[:, :, 0], torch.zeros(seq.shape[:2]))
    init = (u0.mean(1) / d).pow(2).mean()
    if cfg.density_weight > 0:
        # Density change along the rollout: log p_n(zhat_n) = log p_0(z_0) - sum_{s < n} log|det(I + h H)|.
        ro_ld = rollout(bank, seq[:, :, 0], T, cfg.substeps, cfg.step_size, create_graph=True,
                        logdet=_logdet_method(cfg, d, cfg.train_logdet), probes=cfg.hutchinson_probes,
                        order=cfg.hutchinson_order, generator=generator).logdet[:, :, 1:]  # type: ignore[index]
        if cfg.density_target == "nll":
            per_seq = ro_ld.mean(-1) / d
        else:
            # consistency: the evolved density of the moved latent equals the flow prior's density of the
            # true transformed latent, i.e. sum log det = log p_0(z_0) - log p_0(z_n) (0 without priors:
            # volume preservation).  Huber in nats/dim: exploding latents must not dominate the loss.
            lp = log_prior if log_prior is None or not weak else log_prior.unsqueeze(0).expand(K, *log_prior.shape)
            target = (lp[:, :, :1] - lp[:, :, 1:]) if lp is not None else torch.zeros_like(ro_ld)
            per_seq = F.huber_loss(ro_ld / d, target / d, reduction="none", delta=1.0).mean(-1)
        density = (w * per_seq).sum(0).mean()
    else:
        density = torch.zeros(())
    total = match + cfg.hj_weight * hj + cfg.init_weight * init + cfg.density_weight * density
    if weak:
        mean_r = resp.mean(1).clamp_min(1e-8)  # type: ignore[union-attr]
        # balance computed from soft responsibilities of a differentiable softmax (not detached) so
        # that an unused potential is pulled towards the sequences it nearly explains.
        soft = torch.softmax(-err / cfg.weak_temperature, 0).mean(1).clamp_min(1e-8)
        total = total + cfg.weak_balance * (soft * (soft * K).log()).sum()
        resp = mean_r
    return LossTerms(total, match.detach(), hj.detach(), init.detach(), density.detach(), resp)


def _logdet_method(cfg: FlowFactorConfig, d: int, choice: str | None = None) -> Literal["exact", "hutchinson"]:
    choice = choice or cfg.logdet
    if choice == "auto":
        return "exact" if d <= cfg.exact_max_dim else "hutchinson"
    return choice  # type: ignore[return-value]


class PotentialFit(NamedTuple):
    """Trained potentials and their loss history (one dict of floats per logged step)."""

    bank: PotentialBank
    history: list[dict[str, float]]
    seconds: float


def train_potentials(latents: Tensor, cfg: FlowFactorConfig, *, log_prior: Tensor | None = None,
                     weak: bool | None = None,
                     log_every: int = 100, on_log: Callable[[dict[str, float]], None] | None = None) -> PotentialFit:
    """Fit ``K`` potentials to latent sequences ``latents`` ``[K, N, T + 1, d]`` (flow frozen).

    Supervised mode uses sequence ``latents[k]`` for potential ``k``; weak mode pools all
    sequences and never looks at ``k`` (the pooled order is shuffled).  Adam with a cosine learning
    rate decay to 5%.
    """
    weak = (cfg.mode == "weak") if weak is None else weak
    K, N, T1, d = latents.shape
    if T1 != cfg.steps + 1:
        raise ValueError(f"latent sequences have {T1 - 1} steps but config flowfactor.steps = {cfg.steps}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    bank = PotentialBank(K, d, cfg.hidden, cfg.depth, quadratic=d <= cfg.quadratic_max_dim)
    opt = torch.optim.Adam(bank.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(i, cfg.iterations) / cfg.iterations)))
    if log_prior is not None and tuple(log_prior.shape) != (K, N, T1):
        raise ValueError(f"log_prior must be [K, N, T + 1] = {[K, N, T1]} (prior log-density of each latent); "
                         f"got {list(log_prior.shape)}")
    perm = torch.randperm(K * N, generator=gen)
    pooled = latents.reshape(K * N, T1, d)[perm] if weak else None
    pooled_lp = log_prior.reshape(K * N, T1)[perm] if weak and log_prior is not None else None
    history: list[dict[str, float]] = []
    t_start = time.perf_counter()
    bar = progress(range(1, cfg.iterations + 1), desc=f"flowfactor potentials ({'weak' if weak else 'supervised'})",
                   unit="step", logger=log)
    for it in bar:
        if weak:
            idx = torch.randint(0, K * N, (cfg.batch_size * K,), generator=gen)
            batch = pooled[idx]  # type: ignore[index]
            lp = pooled_lp[idx] if pooled_lp is not None else None
        else:
            idx = torch.randint(0, N, (K, cfg.batch_size), generator=gen)
            batch = torch.gather(latents, 1, idx[:, :, None, None].expand(K, cfg.batch_size, T1, d))
            lp = torch.gather(log_prior, 1, idx[:, :, None].expand(K, cfg.batch_size, T1)) if log_prior is not None else None
        terms = flowfactor_loss(bank, batch, cfg, weak=weak, log_prior=lp, generator=gen)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(bank.parameters(), 10.0)
        opt.step()
        sched.step()
        if not torch.isfinite(terms.total):
            raise FloatingPointError(
                f"flowfactor training diverged at step {it} (loss {float(terms.total)}); lower flowfactor.lr "
                "or raise flowfactor.substeps")
        if it % log_every == 0 or it == cfg.iterations:
            rec = {"step": it, "loss": float(terms.total.detach()), "match": float(terms.match), "hj": float(terms.hj),
                   "init": float(terms.init), "density": float(terms.density),
                   "seconds": time.perf_counter() - t_start}
            history.append(rec)
            bar.set(loss=rec["loss"], match=rec["match"], hj=rec["hj"])
            log.info("flowfactor step %d: loss %.4g match %.4g hj %.3g density %.3g", it, rec["loss"],
                     rec["match"], rec["hj"], rec["density"])
            if on_log is not None:
                on_log(rec)
    bank.eval()
    return PotentialFit(bank, history, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------------------------
# Use and evaluation
# ----------------------------------------------------------------------------------------------


def _gather_k(x: Tensor, k: Tensor) -> Tensor:
    """Select ``x[k[b], b]`` from ``[K, B, ...]``."""
    return x[k, torch.arange(x.shape[1])]


@torch.no_grad()
def infer_transformation(bank: PotentialBank, seq: Tensor, cfg: FlowFactorConfig) -> Tensor:
    """Weak mode inference: the potential whose rollout best matches each sequence ``[B, T+1, d]`` -> ``[B]``."""
    z = seq.unsqueeze(0).expand(bank.num, *seq.shape)
    ro = rollout(bank, z[:, :, 0], cfg.steps, cfg.substeps, cfg.step_size)
    err = (ro.states[:, :, 1:] - z[:, :, 1:]).pow(2).mean((-1, -2))
    return err.argmin(0)


def move_latents(bank: PotentialBank, z: Tensor, k: Tensor | int, n_steps: int, cfg: FlowFactorConfig,
                 *, t0: float = 0.0) -> Tensor:
    """Move latents ``z`` ``[B, d]`` ``n_steps`` transformation steps along potential ``k`` -> ``[B, n_steps+1, d]``.

    ``k`` is one index or one per latent.  All ``K`` fields are integrated together (K is small) and
    the requested one is selected, so a mixed batch needs no loop over transformations.
    """
    ks = torch.as_tensor(k).reshape(-1).expand(z.shape[0])
    ro = rollout(bank, z.unsqueeze(0).expand(bank.num, *z.shape), n_steps, cfg.substeps, cfg.step_size, t0=t0)
    return _gather_k(ro.states, ks)


def apply_flow_images(codec: LatentCodec, bank: PotentialBank, images: Tensor, plan: Sequence[tuple[int, int]],
                      cfg: FlowFactorConfig) -> Tensor:
    """Transform uint8 ``images`` by moving their latents along fields in order.

    ``plan`` is a list of ``(k, n_steps)``: each transformation restarts its own time at 0 (a
    composition applies one learned flow after the other).  Returns uint8 ``[N, S + 1, C, H, W]``
    with ``S = sum n_steps`` (index 0: the decoded unmoved latent).
    """
    z = codec.encode(images_to_unit(images))
    frames = [z]
    for k, n in plan:
        traj = move_latents(bank, frames[-1], k, n, cfg)
        frames.extend(traj[:, i] for i in range(1, n + 1))
    zs = torch.stack(frames, 1)
    x = codec.decode(zs.reshape(-1, zs.shape[-1]))
    return unit_to_images(x).reshape(images.shape[0], len(frames), *images.shape[1:])


def _mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared error in [0, 1] pixel units over the image dims: ``[...]``."""
    return ((a.float() - b.float()) / 255.0).pow(2).flatten(-3).mean(-1)


def equivariance_errors(codec: LatentCodec, bank: PotentialBank, images: Tensor, cfg: FlowFactorConfig,
                        n_max: int | None = None) -> dict[str, dict[str, object]]:
    """Per transformation: pixel MSE of ``f^{-1}(flow_k^n(f(x)))`` against the true ``T_k^n(x)``.

    Also the no-flow baseline (``x`` itself), the latent linear-shift baseline (``z + n * mean
    latent displacement per step`` on these images: an oracle upper bound for a constant field), the
    flow round trip, and per-step curves up to ``n_max`` (default ``extrapolate_factor * steps``):
    steps ``1..T`` are "trained", ``T+1..n_max`` "extrapolated".
    """
    n_max = n_max or cfg.extrapolate_factor * cfg.steps
    T = cfg.steps
    params = cfg.params()
    out: dict[str, dict[str, object]] = {}
    for k, name in enumerate(cfg.transformations):
        truth = torch.stack([transform_images(images, name, float(n), params) for n in range(n_max + 1)], 1)
        pred = apply_flow_images(codec, bank, images, [(k, n_max)], cfg)
        zt = encode_sequences(codec, truth)
        shift = (zt[:, 1:T + 1] - zt[:, :1]).mean(0) / torch.arange(1, T + 1)[:, None]  # per step, trained range
        step = shift.mean(0)
        zlin = zt[:, :1] + torch.arange(n_max + 1)[None, :, None] * step
        lin = unit_to_images(codec.decode(zlin.reshape(-1, zlin.shape[-1]))).reshape(truth.shape)
        e_flow = _mse(pred, truth).mean(0)
        e_none = _mse(images[:, None].expand_as(truth), truth).mean(0)
        e_lin = _mse(lin, truth).mean(0)
        out[name] = {
            "per_step_flow": e_flow.tolist(), "per_step_noflow": e_none.tolist(), "per_step_linear": e_lin.tolist(),
            "flow": float(e_flow[1:T + 1].mean()), "noflow": float(e_none[1:T + 1].mean()),
            "linear": float(e_lin[1:T + 1].mean()),
            "flow_extrap": float(e_flow[T + 1:].mean()) if n_max > T else None,
            "noflow_extrap": float(e_none[T + 1:].mean()) if n_max > T else None,
            "linear_extrap": float(e_lin[T + 1:].mean()) if n_max > T else None,
            "roundtrip": float(e_flow[0]),
        }
    return out


def composition_errors(codec: LatentCodec, bank: PotentialBank, images: Tensor, cfg: FlowFactorConfig,
                       n: int | None = None) -> dict[str, dict[str, float]]:
    """Every ordered pair ``(a, b)``: flow ``a`` for ``n`` steps then ``b`` for ``n`` steps, against the
    true ``T_b^n(T_a^n(x))`` (pixel MSE); baseline: no flow.  ``n`` defaults to ``steps``."""
    n = n or cfg.steps
    params = cfg.params()
    out: dict[str, dict[str, float]] = {}
    names = cfg.transformations
    for a, na in enumerate(names):
        for b, nb in enumerate(names):
            if a == b:
                continue
            truth = transform_images(transform_images(images, na, float(n), params), nb, float(n), params)
            pred = apply_flow_images(codec, bank, images, [(a, n), (b, n)], cfg)[:, -1]
            out[f"{na}+{nb}"] = {"flow": float(_mse(pred, truth).mean()),
                                 "noflow": float(_mse(images, truth).mean())}
    return out


def sequence_likelihood(codec: LatentCodec, bank: PotentialBank, images: Tensor, cfg: FlowFactorConfig
                        ) -> dict[str, dict[str, object]]:
    """Bits/dim of transformed sequences ``x_0..x_T`` under the flow, per transformation and step.

    ``flow``: the flow's own density ``log p_0(f(x_n)) + log|det J_f(x_n)|``.  ``evolved``: the
    model's density of the transformed latent, ``log p_0(z_0) - sum log|det(I + hH)|`` along the
    learned flow from ``z_0 = f(x_0)`` (exact Hessian log-det for ``d <= exact_max_dim``), placed at
    the rollout's end point and mapped to images with the flow's log-det at the true ``x_n``
    (accurate when the rollout matches, i.e. when the equivariance error is small).  Both include the
    8-bit uniform dequantisation term ``-D log 256``.
    """
    params = cfg.params()
    D = images[0].numel()
    method = _logdet_method(cfg, D)
    out: dict[str, dict[str, object]] = {}
    to_bpd = -1.0 / (D * math.log(2))
    for k, name in enumerate(cfg.transformations):
        seq = torch.stack([transform_images(images, name, float(n), params) for n in range(cfg.steps + 1)], 1)
        x = images_to_unit(seq.reshape(-1, *seq.shape[2:]))
        lp_flow = codec.log_prob(x).reshape(seq.shape[:2]) - D * math.log(256.0)
        z = codec.encode(x).reshape(*seq.shape[:2], -1)
        lp_prior = codec.prior_log_prob(z.reshape(-1, z.shape[-1])).reshape(seq.shape[:2])
        log_jac = lp_flow + D * math.log(256.0) - lp_prior  # log|det J_f(x_n)|
        zk = torch.zeros(bank.num, *z[:, 0].shape)
        zk[k] = z[:, 0]
        ro = rollout(bank, zk, cfg.steps, cfg.substeps, cfg.step_size, logdet=method,
                     probes=max(8, cfg.hutchinson_probes), order=cfg.hutchinson_order)
        ld = ro.logdet[k]  # type: ignore[index]
        lp_evolved = lp_prior[:, :1] - ld + log_jac - D * math.log(256.0)
        out[name] = {"bpd_flow": (lp_flow.mean(0) * to_bpd).tolist(),
                     "bpd_evolved": (lp_evolved.mean(0) * to_bpd).tolist(),
                     "logdet_flow_per_dim": (ld.mean(0) / D).tolist()}
    return out


def augment_along_fields(codec: LatentCodec, bank: PotentialBank, images: Tensor, labels: Tensor,
                         cfg: FlowFactorConfig, *, per_image: int = 1, generator: torch.Generator | None = None,
                         max_steps: int | None = None) -> tuple[Tensor, Tensor]:
    """New images by moving training latents along a random learned field for a random number of steps.

    Each copy draws ``k`` uniformly and ``n`` uniformly in ``1..max_steps`` (default ``steps``);
    labels are kept.  Returns uint8 images ``[N * per_image, C, H, W]`` and labels.
    """
    max_steps = max_steps or cfg.steps
    x = images.repeat(per_image, 1, 1, 1)
    y = labels.repeat(per_image)
    k = torch.randint(0, bank.num, (x.shape[0],), generator=generator)
    n = torch.randint(1, max_steps + 1, (x.shape[0],), generator=generator)
    z = codec.encode(images_to_unit(x))
    traj = move_latents(bank, z, k, max_steps, cfg)  # [N, max_steps + 1, d]
    zsel = traj[torch.arange(x.shape[0]), n]
    return unit_to_images(codec.decode(zsel)), y


def pixel_augment(images: Tensor, labels: Tensor, cfg: FlowFactorConfig, *, per_image: int = 1,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The pixel-space counterpart of :func:`augment_along_fields`: the true transformation, same k/n draws."""
    x = images.repeat(per_image, 1, 1, 1)
    y = labels.repeat(per_image)
    k = torch.randint(0, len(cfg.transformations), (x.shape[0],), generator=generator)
    n = torch.randint(1, cfg.steps + 1, (x.shape[0],), generator=generator).float()
    out = x.clone()
    for i, name in enumerate(cfg.transformations):  # K (<= 3) batched calls, not a per-image loop
        m = k == i
        if m.any():
            out[m] = transform_images(x[m], name, n[m], cfg.params())
    return out, y


def random_transform_copies(images: Tensor, labels: Tensor, cfg: FlowFactorConfig, *, copies: int,
                            max_amount: float, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``copies`` transformed copies of every image: each a uniformly drawn transformation of
    ``cfg.transformations`` by a real amount drawn uniformly in ``[0, max_amount]`` steps; labels kept.

    The adaptation set of a transformation-aware flow (``factorize.adapt_flow``): unlike
    :func:`pixel_augment` (integer ``1..T``) the amounts are continuous, so the flow sees the whole
    path between the sequence frames the potentials are trained on.  Returns uint8 ``[N * copies, C, H, W]``.
    """
    x = images.repeat(copies, 1, 1, 1)
    y = labels.repeat(copies)
    k = torch.randint(0, len(cfg.transformations), (x.shape[0],), generator=generator)
    a = torch.rand(x.shape[0], generator=generator) * max_amount
    out = x.clone()
    for i, name in enumerate(cfg.transformations):  # K (<= 3) batched calls, not a per-image loop
        m = k == i
        if m.any():
            out[m] = transform_images(x[m], name, a[m], cfg.params())
    return out, y


def numpy_images(a: np.ndarray) -> Tensor:
    """uint8 numpy ``[N, C, H, W]`` -> tensor, checking the dtype (the prepared-data contract)."""
    if a.dtype != np.uint8 or a.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {a.dtype} {a.shape}; rerun nfpi.stages.prepare")
    return torch.from_numpy(np.array(a, copy=True))  # memmaps are read-only; torch wants writable memory
