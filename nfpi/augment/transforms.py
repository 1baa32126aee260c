"""Image augmentation: NF augmentation in a flow's latent space, and the standard image augmentations.

NF augmentation (paper Sec. 5.4, Tables 5-6, Fig. 2; spec "What the rest of the pipeline computes"):
for two training images of the same class ``y`` with latents ``z_a = f(x_a)``, ``z_b = f(x_b)`` and
``U_y`` the top principal axes of class ``y``'s training latents,

    z' = z_a + U_y U_y^T (beta (z_b - z_a)),      beta ~ U(0, beta_max),

and the new image is ``f^{-1}(z')`` with label ``y``.  The mixup is linear in the latent space (and
therefore non-linear in pixel space) and only moves ``z_a`` inside the span of the class's principal
axes, the "modes with the highest variances", which the paper found gives more realistic images than
isotropic latent noise.

The principal axes are found without forming any ``d x d`` covariance: the right singular vectors of
the centred class latents (exact batched SVD) or a randomized range finder (Halko et al. 2011,
``torch.svd_lowrank``) when only a few axes of a large class are needed.  Classes are processed in
batches of a padded ``[k, n_max, d]`` tensor (zero rows do not change the right singular vectors of
the centred data), so memory is bounded by ``max_elements`` and there is no per-class Python loop
beyond the chunking.

Standard augmentations (the CNN's crop + flip, and the transformer set of the paper: random crop,
flip, auto-augment, rand-augment, random erasing per sample; mixup / cutmix per batch) are built
here too so that ``nfpi.classifiers`` only trains.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from nfpi.augment.config import StandardAugConfig
from nfpi.progress import progress

# The public names are listed once, in nfpi.augment.__all__ (the package loads this module on first use of one).

log = logging.getLogger(__name__)


class InvertibleFlow(Protocol):
    """The part of the flow interface NF augmentation needs (``nfpi.flows``)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]: ...  # (z [B, D], logdet [B])

    def inverse(self, z: Tensor) -> Tensor: ...  # x [B, C, H, W] in [-0.5, 0.5)


# --------------------------------------------------------------------------------------------------
# Latent-space maths (pure tensor functions)
# --------------------------------------------------------------------------------------------------


def _fix_signs(v: Tensor) -> Tensor:
    """Flip each column of ``v [k, d, r]`` so its largest-magnitude entry is positive.

    Singular vectors are defined up to sign; fixing it makes the axes reproducible across SVD
    back-ends (CPU / CUDA, exact / randomized) without changing any projector ``U U^T``.
    """
    idx = v.abs().argmax(dim=1, keepdim=True)  # [k, 1, r]
    sign = torch.sign(torch.gather(v, 1, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return v * sign


# Long (86 lines): exact batched SVD and the randomized range finder share the padding / chunking logic
# that bounds memory (module docstring); kept together so both paths chunk the same way.
def class_principal_axes(
    z: Tensor,
    y: Tensor,
    num_classes: int,
    num_axes: int,
    *,
    method: Literal["auto", "exact", "randomized"] = "auto",
    max_elements: int = 2**27,
    oversample: int = 10,
    niter: int = 4,
    seed: int = 0,
) -> Tensor:
    """Top ``num_axes`` principal axes ``U_y`` of each class's latents (the ``U_y`` of the NF augmentation).

    Args:
        z: latents ``[N, d]`` (``f(x)`` of the training images; any float dtype, kept for the result).
        y: labels ``[N]`` in ``0..num_classes-1``.
        num_classes: ``K``.
        num_axes: ``r``, the number of axes per class (``1 <= r <= d``).
        method: ``"exact"`` batched SVD of the centred class latents; ``"randomized"``
            ``torch.svd_lowrank`` with ``oversample`` extra columns and ``niter`` power iterations
            (for ``r`` much smaller than ``min(n_y, d)``); ``"auto"`` picks randomized when
            ``r + oversample <= min(n_max, d) / 4`` and the class block is large.
        max_elements: upper bound on the elements of one padded ``[k, n_max, d]`` class block (memory).
        seed: seeds the randomized range finder (results are reproducible).

    Returns:
        ``[K, d, r]`` with orthonormal columns per class, ordered by decreasing variance, each column's
        largest-magnitude entry positive.  No ``K x d x d`` tensor is formed.

    Raises:
        ValueError: shapes disagree, a label is out of range, a class has no sample, or ``r`` is
            larger than ``d`` or than the largest class.
    """
    if z.ndim != 2:
        raise ValueError(f"z must be [N, d] latents, got shape {tuple(z.shape)}; flatten the latents first")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"y must be [N] labels matching z [N, d]; got y {tuple(y.shape)} and z {tuple(z.shape)}")
    n, d = z.shape
    if not 1 <= num_axes <= d:
        raise ValueError(f"num_axes={num_axes} must be in 1..d={d}; lower num_axes (config key augment.num_axes)")
    y = y.to(device=z.device, dtype=torch.long)
    if n == 0 or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1} (num_classes={num_classes}); got labels in "
                         f"{int(y.min()) if n else None}..{int(y.max()) if n else None}")
    counts = torch.bincount(y, minlength=num_classes)
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"classes {empty[:10]} have no latents; principal axes are undefined (check the labels "
                         f"passed with the training latents)")
    n_max = int(counts.max())
    if num_axes > n_max:
        raise ValueError(f"num_axes={num_axes} exceeds the largest class size {n_max}; lower num_axes")

    # Class means as one scatter-add (a one-hot matrix product), then centred rows.
    means = torch.zeros(num_classes, d, dtype=z.dtype, device=z.device).index_add_(0, y, z)
    means /= counts.to(z.dtype)[:, None]
    order = torch.argsort(y, stable=True)
    y_sorted = y[order]
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(n, device=z.device) - starts[y_sorted]  # rank of each row inside its class

    k_chunk = max(1, max_elements // max(1, n_max * d))
    q = min(num_axes + oversample, min(n_max, d))
    use_randomized = method == "randomized" or (
        method == "auto" and num_axes + oversample <= min(n_max, d) // 4 and n_max * d >= 2**20
    )
    # svd_lowrank draws its test matrix from the global generator: seed it inside a fork so the
    # caller's random stream is untouched and the axes are reproducible.
    fork_devices = [z.device] if z.device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        out = torch.empty(num_classes, d, num_axes, dtype=z.dtype, device=z.device)
        for c0 in range(0, num_classes, k_chunk):
            c1 = min(num_classes, c0 + k_chunk)
            rows = (y_sorted >= c0) & (y_sorted < c1)
            idx = order[rows]
            block = torch.zeros(c1 - c0, n_max, d, dtype=z.dtype, device=z.device)
            block[y_sorted[rows] - c0, pos[rows]] = z[idx] - means[y_sorted[rows]]
            if use_randomized:
                _, _, v = torch.svd_lowrank(block, q=q, niter=niter)  # v [k, d, q], descending
                out[c0:c1] = v[..., :num_axes]
            else:
                _, _, vh = torch.linalg.svd(block, full_matrices=False)  # vh [k, min(n_max, d), d]
                out[c0:c1] = vh[:, :num_axes, :].transpose(1, 2)
    return _fix_signs(out)


def pca_mixup(z_a: Tensor, z_b: Tensor, axes: Tensor, beta: Tensor) -> Tensor:
    """NF-augmentation latent mixup ``z' = z_a + U U^T (beta (z_b - z_a))`` (spec; paper Sec. 5.4).

    Args:
        z_a, z_b: latents ``[B, d]`` of two images of the same class.
        axes: ``[B, d, r]`` the class's principal axes per pair (``class_axes[labels]``), orthonormal columns.
        beta: ``[B]`` mixing coefficients (``U(0, beta_max)``).

    Returns:
        ``[B, d]``; ``z' - z_a`` lies in the span of ``axes`` (the projection of the scaled difference).
    """
    if z_a.shape != z_b.shape or z_a.ndim != 2:
        raise ValueError(f"z_a and z_b must both be [B, d]; got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
    b, d = z_a.shape
    if axes.ndim != 3 or axes.shape[:2] != (b, d):
        raise ValueError(f"axes must be [B, d, r] = [{b}, {d}, r]; got {tuple(axes.shape)} (index the class "
                         f"axes by the labels: axes[labels])")
    if beta.shape != (b,):
        raise ValueError(f"beta must be [B] = [{b}]; got {tuple(beta.shape)}")
    delta = beta.to(z_a.dtype)[:, None] * (z_b - z_a)
    coeff = torch.einsum("bdr,bd->br", axes, delta)  # U^T delta
    return z_a + torch.einsum("bdr,br->bd", axes, coeff)


def same_class_partners(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each sample, the index of a random *other* sample of the same class (itself if it is alone).

    Vectorised: the samples are sorted by class, each draws a rank in ``0..n_y-2`` and skips its own.
    """
    labels = labels.to(torch.long).cpu()
    n = labels.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.long)
    k = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=k)
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    inv = torch.empty_like(order)
    inv[order] = torch.arange(n)
    own_rank = inv - starts[labels]
    cnt = counts[labels]
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    rank = torch.floor(u * (cnt - 1).clamp(min=1).to(torch.float64)).to(torch.long)
    rank = rank + (rank >= own_rank).to(torch.long)  # skip self
    rank = torch.where(cnt > 1, rank, own_rank)
    return order[starts[labels] + rank]


def draw_pairs(
    labels: Tensor,
    *,
    copies: int = 1,
    beta_max: float = 0.5,
    generator: torch.Generator | None = None,
    indices: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The random part of :func:`nf_augment`: ``(a_idx, b_idx, beta)``, each ``[copies * M]``, copy-major.

    ``a_idx`` repeats ``indices`` (default all ``N``) ``copies`` times, ``b_idx`` is a same-class
    partner of each (:func:`same_class_partners`, drawn afresh per copy) and ``beta ~ U(0, beta_max)``
    (float64).  Drawn on the CPU from ``generator`` so the pairs do not depend on the device.
    """
    labels = labels.to(torch.long).cpu()
    src = torch.arange(labels.shape[0]) if indices is None else torch.as_tensor(indices, dtype=torch.long).cpu()
    a_idx = src.repeat(copies)
    b_idx = torch.cat([same_class_partners(labels, generator)[src] for _ in range(copies)])
    beta = torch.rand(a_idx.shape[0], generator=generator, dtype=torch.float64) * beta_max
    return a_idx, b_idx, beta


def _as_tensor(a: np.ndarray | Tensor, name: str, dtype: torch.dtype | None = None) -> Tensor:
    t = torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}")
    return t.to(dtype) if dtype is not None else t


# Long (98 lines): the batched NF augmentation loop (pairs, latents, mixup, inverse) with its argument checks
# and the flow's train/eval state restored in one place.
@torch.no_grad()
def nf_augment(
    flow: InvertibleFlow,
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    axes: Tensor,
    *,
    copies: int = 1,
    beta_max: float = 0.5,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    device: str | torch.device = "auto",
    latents: Tensor | None = None,
    indices: Tensor | None = None,
    n_bits: int = 8,
) -> tuple[Tensor, Tensor]:
    """Generate ``copies`` NF-augmented images per training image (paper Sec. 5.4; spec).

    For every image ``x_a`` (label ``y``) and copy, a partner ``x_b`` of the same class is drawn,
    ``beta ~ U(0, beta_max)``, and the image ``f^{-1}(z_a + U_y U_y^T (beta (z_b - z_a)))`` is decoded.

    Args:
        flow: a trained flow with ``forward(x) -> (z [B, D], logdet)`` and ``inverse(z) -> x`` on
            ``nfpi.density.preprocess`` scale (``[-0.5, 0.5)``); put in eval mode here.
        images: uint8 ``[N, C, H, W]``.
        labels: ``[N]`` int in ``0..K-1``.
        axes: ``[K, D, r]`` from :func:`class_principal_axes` on the training latents of ``flow``.
        copies: augmented images per training image.
        beta_max: upper end of the mixing coefficient's uniform distribution.
        batch_size: pairs per flow call (each call runs the flow forward on ``2 * batch_size`` images).
        generator: CPU generator for partners and ``beta`` (reproducible on any device).
        device: where the flow runs (``"auto"``: CUDA if visible).
        latents: optional precomputed ``f(images)`` ``[N, D]`` (e.g. from the extract stage); skips
            the forward passes.
        indices: augment only these images (``[M]`` indices, e.g. the originals of Fig. 2); their
            partners are still drawn from the whole set.  ``None``: all ``N`` images.
        n_bits: bits per channel the flow was trained on (its pixel <-> ``[-0.5, 0.5)`` mapping).

    Returns:
        ``(images uint8 [copies * M, C, H, W], labels int64 [copies * M])`` on the CPU, copy-major
        (copy ``c`` of the ``i``-th augmented image is row ``c * M + i``); the originals are not
        included.  ``M = N`` without ``indices``.
    """
    from nfpi.density import postprocess, preprocess  # the flow's pixel <-> [-0.5, 0.5) mapping
    from nfpi.runtime import select_device

    imgs = _as_tensor(images, "images")
    labs = _as_tensor(labels, "labels", torch.long).cpu()
    if imgs.dtype != torch.uint8 or imgs.ndim != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W]; got {imgs.dtype} {tuple(imgs.shape)}")
    n = imgs.shape[0]
    if labs.shape != (n,):
        raise ValueError(f"labels must be [N] = [{n}]; got {tuple(labs.shape)}")
    d = int(np.prod(imgs.shape[1:]))
    if axes.ndim != 3 or axes.shape[1] != d:
        raise ValueError(f"axes must be [K, D={d}, r]; got {tuple(axes.shape)} (compute them on this flow's latents)")
    if n and int(labs.max()) >= axes.shape[0]:
        raise ValueError(f"label {int(labs.max())} has no principal axes (axes has K={axes.shape[0]} classes)")
    if copies < 1 or not beta_max >= 0:
        raise ValueError(f"copies must be >= 1 and beta_max >= 0; got copies={copies}, beta_max={beta_max}")
    if latents is not None and tuple(latents.shape) != (n, d):
        raise ValueError(f"latents must be [N, D] = [{n}, {d}]; got {tuple(latents.shape)}")

    if indices is None:
        src = torch.arange(n)
    else:
        src = torch.as_tensor(indices, dtype=torch.long).cpu().flatten()
        if src.numel() and (int(src.min()) < 0 or int(src.max()) >= n):
            raise ValueError(f"indices must be in 0..{n - 1}; got {int(src.min())}..{int(src.max())}")
    m_total = copies * src.shape[0]
    dev = select_device(device) if isinstance(device, str) else device
    params = list(flow.parameters()) if hasattr(flow, "parameters") else []
    flow_dtype = params[0].dtype if params else torch.float32
    was_training = getattr(flow, "training", False)
    if hasattr(flow, "eval"):
        flow.eval()  # no data-dependent init / batch statistics while augmenting
    try:
        a_idx, b_idx, beta = draw_pairs(labs, copies=copies, beta_max=beta_max, generator=generator, indices=src)
        out = torch.empty(m_total, *imgs.shape[1:], dtype=torch.uint8)
        axes_dev: Tensor | None = None  # moved once, in the flow's dtype (float64 axes would double memory)
        for s in progress(range(0, m_total, batch_size), desc="NF augmentation", unit="batch", logger=log):
            ia, ib = a_idx[s : s + batch_size], b_idx[s : s + batch_size]
            m = ia.shape[0]
            if latents is not None:
                z = torch.cat([latents[ia], latents[ib]]).to(dev)
            else:
                x = preprocess(torch.cat([imgs[ia], imgs[ib]]).to(dev), n_bits=n_bits, dequantize=False)
                z, _ = flow.forward(x)
            z = z.reshape(2 * m, d).to(flow_dtype)
            if axes_dev is None or axes_dev.dtype != z.dtype:
                axes_dev = axes.to(device=dev, dtype=z.dtype)
            u = axes_dev[labs[ia].to(dev)]
            z_new = pca_mixup(z[:m], z[m:], u, beta[s : s + m].to(dev))
            x_new = flow.inverse(z_new)
            out[s : s + m] = postprocess(x_new.reshape(m, *imgs.shape[1:]), n_bits=n_bits).cpu()
    finally:
        if was_training and hasattr(flow, "train"):
            flow.train()
    return out, labs[a_idx]


# --------------------------------------------------------------------------------------------------
# Standard augmentations
# --------------------------------------------------------------------------------------------------


def random_crop_flip(
    x: Tensor, *, padding: int, hflip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Per-sample random crop (zero padding ``padding``) and horizontal flip, batched on ``x``'s device.

    ``x`` is ``[B, C, H, W]`` (any dtype).  One gather for the whole batch instead of a Python loop over
    samples, so the CNN's augmentations (paper Sec. 5.1: cropping and horizontal flip) cost nothing on GPU.
    """
    b, c, h, w = x.shape
    if padding > 0:
        xp = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator).to(x.device)
        rows = off[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = off[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(-1), x)
    return x


def build_sample_transform(cfg: StandardAugConfig, image_shape: tuple[int, int, int]) -> Any:
    """Per-sample torchvision v2 pipeline on uint8 ``[C, H, W]`` tensors (crop, flip, AA, RA, erasing)."""
    from torchvision.transforms import v2

    _, h, w = image_shape
    padding = max(1, h // 8) if cfg.padding is None else cfg.padding
    ops: list[Any] = [v2.RandomCrop((h, w), padding=padding)] if padding > 0 else []
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    if cfg.auto_augment:
        ops.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    if cfg.rand_augment:
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    if cfg.random_erasing > 0:
        ops.append(v2.RandomErasing(p=cfg.random_erasing, value=0))
    return v2.Compose(ops)


def build_batch_mixer(cfg: StandardAugConfig, num_classes: int) -> Any | None:
    """timm ``Mixup`` (mixup / cutmix alternating, label smoothing) or ``None`` when both are off.

    It turns a float batch and int labels into a mixed batch and soft targets ``[B, K]``; it needs an
    even batch size (the training loop skips it on an odd last batch).
    """
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )
