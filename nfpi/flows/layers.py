"""Invertible flow layers (Section 3 of the paper; Glow, Kingma & Dhariwal 2018; matrix-exponential
flows, Xiao & Liu, ICML 2020).

Every layer maps ``x [B, C, H, W]`` to ``(y, logdet [B])`` in :meth:`forward` and reconstructs
``x`` from ``y`` in :meth:`inverse`; ``logdet`` is ``log|det J|`` of the forward map (the term of
Eq. 1 that the flow adds to the prior log-density).

Data-dependent initialisation (actnorm, and the normalised convolutions of the coupling networks)
is an explicit, separate pass (:meth:`nfpi.flows.Flow.data_init`): the hot ``forward`` never reads
a buffer on the host, so it has no host-device synchronisation and is safe under DDP once rank 0
has initialised and broadcast the weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FlowLayer",
    "DataInitModule",
    "ActNorm",
    "MatExpConv1x1",
    "LUConv1x1",
    "NormConv2d",
    "CouplingNet",
    "elu",
    "MatExpCoupling",
    "AffineCoupling",
    "squeeze2d",
    "unsqueeze2d",
    "expm_lowrank_factor",
    "expm_series_apply",
    "series_degree",
    "LAYER_FACTORIES",
    "available_layers",
    "build_layer",
]

_EPS = 1e-6


# --------------------------------------------------------------------------------------------
# Shape operations (volume preserving: log-det 0)
# --------------------------------------------------------------------------------------------
def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth by 2: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (Glow's squeeze; a permutation)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze2d`: ``[B, 4C, H, W] -> [B, C, 2H, 2W]``."""
    b, c4, h, w = x.shape
    c = c4 // 4
    x = x.reshape(b, c, 2, 2, h, w)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(b, c, h * 2, w * 2)


# --------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------
class FlowLayer(nn.Module):
    """An invertible layer: ``forward(x) -> (y, logdet[B])``, ``inverse(y) -> x``."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class DataInitModule(nn.Module):
    """A module with a data-dependent initialisation.

    ``initialized`` is a buffer (saved in ``state_dict``, so a loaded checkpoint is not
    re-initialised); ``_init_pending`` is a plain Python flag set by ``Flow.data_init`` for one
    forward pass, so ordinary forwards never read the buffer (no ``.item()`` sync).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._init_pending = False

    def _finish_init(self) -> None:
        self.initialized.fill_(True)
        self._init_pending = False


# --------------------------------------------------------------------------------------------
# Actnorm
# --------------------------------------------------------------------------------------------
class ActNorm(DataInitModule, FlowLayer):
    """Actnorm (Glow): ``y = x * exp(logs) + b``, data-initialised to zero mean, unit variance.

    ``per_pixel=True`` (the matrix-exponential reference code) learns one scale/shift per
    element ``(C, H, W)``; ``False`` (Glow) one per channel.  log|det| = sum(logs) (times H*W
    when per channel).
    """

    def __init__(self, channels: int, height: int, width: int, *, per_pixel: bool = False) -> None:
        super().__init__()
        shape = (1, channels, height, width) if per_pixel else (1, channels, 1, 1)
        self.per_pixel = per_pixel
        self.logs = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

    @torch.no_grad()
    def _data_init(self, x: Tensor) -> None:
        dims = (0,) if self.per_pixel else (0, 2, 3)
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True)
        logs = -torch.log(std + _EPS)
        self.logs.copy_(logs)
        self.bias.copy_(-mean * logs.exp())
        self._finish_init()

    def _pixels(self, x: Tensor) -> int:
        return 1 if self.per_pixel else x.shape[2] * x.shape[3]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._init_pending:
            self._data_init(x)
        y = torch.addcmul(self.bias, x, self.logs.exp())
        logdet = (self.logs.sum() * self._pixels(x)).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return (y - self.bias) * torch.exp(-self.logs)


# --------------------------------------------------------------------------------------------
# Invertible 1x1 convolutions
# --------------------------------------------------------------------------------------------
class _CachedWeight(nn.Module):
    """Caches a weight derived from parameters when no gradient is needed (extraction, sampling).

    The cache key is the parameters' in-place version counters, so an optimiser step or
    ``load_state_dict`` invalidates it; under autograd the weight is always recomputed (once per
    forward: each layer builds it exactly once per call).
    """

    def __init__(self) -> None:
        super().__init__()
        self._cache: dict[str, tuple[tuple[int, ...], Tensor]] = {}

    def _cached(self, key: str, params: tuple[Tensor, ...], fn: Callable[[], Tensor]) -> Tensor:
        # the weight of a flow map is built in the parameters' precision, also under autocast
        # (a bf16 product of the LU factors would no longer be the inverse of the inverse weight)
        def build() -> Tensor:
            with torch.autocast(params[0].device.type, enabled=False):
                return fn()

        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return build()
        version = tuple(p._version for p in params) + tuple(p.data_ptr() for p in params)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version and hit[1].dtype == params[0].dtype:
            return hit[1]
        w = build()
        self._cache[key] = (version, w)
        return w


def _conv1x1(x: Tensor, weight: Tensor) -> Tensor:
    """``weight @ x`` per pixel in ``x``'s precision, also under autocast.

    The invertible 1x1 convolutions are flow maps, not coupling networks: under bf16 autocast they
    would round the latent itself to 8 bits of mantissa (and the inverse would no longer undo the
    forward), so autocast is switched off for them.
    """
    c = weight.shape[0]
    with torch.autocast(x.device.type, enabled=False):
        return F.conv2d(x, weight.to(x.dtype).view(c, c, 1, 1))


class MatExpConv1x1(_CachedWeight, FlowLayer):
    """Matrix-exponential invertible 1x1 convolution (Xiao & Liu 2020): ``y = exp(W) x`` per pixel.

    log|det exp(W)| = trace(W), so the log-det never builds or factorises the exponential
    (per image: H*W*trace(W)).  The inverse is ``exp(-W)``.  Initialised as a random rotation
    (``W`` skew-symmetric, so ``exp(W)`` is orthogonal and the log-det starts at 0).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.randn(channels, channels) / math.sqrt(channels)
        self.weight = nn.Parameter(a - a.T)

    def _w(self, sign: float) -> Tensor:
        key = "fwd" if sign > 0 else "inv"
        return self._cached(key, (self.weight,), lambda: torch.linalg.matrix_exp(sign * self.weight))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = _conv1x1(x, self._w(1.0))
        logdet = (torch.diagonal(self.weight).sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return _conv1x1(y, self._w(-1.0))


class LUConv1x1(_CachedWeight, FlowLayer):
    """Glow's LU-decomposed invertible 1x1 convolution: ``W = P L (U + diag(sign_s * exp(log_s)))``.

    log|det W| = sum(log_s) per pixel.  ``P`` and ``sign_s`` are fixed buffers from the LU
    factorisation of a random rotation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(s.abs()).float())

    def _weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _w(self, inverse: bool) -> Tensor:
        params = (self.lower, self.upper, self.log_s)
        if inverse:
            return self._cached("inv", params, lambda: torch.linalg.inv(self._weight()))
        return self._cached("fwd", params, self._weight)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = _conv1x1(x, self._w(False))
        logdet = (self.log_s.sum() * (x.shape[2] * x.shape[3])).expand(x.shape[0])
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return _conv1x1(y, self._w(True))


# --------------------------------------------------------------------------------------------
# Coupling networks: residual CNNs as in the matrix-exponential reference code
# --------------------------------------------------------------------------------------------
class NormConv2d(DataInitModule):
    """Convolution followed by a data-initialised per-channel affine normalisation.

    The normalisation is folded into the convolution (``conv(x, W * s) + b``): one kernel, no
    extra pass over the activations.  Data init sets ``s = init_scale / std``, ``b = -mean * s``
    of the raw convolution output; ``init_scale = 0`` makes a residual branch start as zero.
    """

    def __init__(self, cin: int, cout: int, kernel: int, *, init_scale: float = 1.0) -> None:
        super().__init__()
        self.padding = kernel // 2
        self.init_scale = init_scale
        w = torch.empty(cout, cin, kernel, kernel)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.weight = nn.Parameter(w)
        self.scale = nn.Parameter(torch.full((cout,), 1.0 if init_scale != 0 else 0.0))
        self.shift = nn.Parameter(torch.zeros(cout))

    @torch.no_grad()
    def _data_init(self, x: Tensor) -> None:
        out = F.conv2d(x, self.weight, padding=self.padding)
        mean = out.mean(dim=(0, 2, 3))
        std = out.std(dim=(0, 2, 3))
        s = self.init_scale / (std + _EPS)
        self.scale.copy_(s)
        self.shift.copy_(-mean * s)
        self._finish_init()

    def forward(self, x: Tensor) -> Tensor:
        if self._init_pending:
            self._data_init(x)
        return F.conv2d(x, self.weight * self.scale.view(-1, 1, 1, 1), self.shift, padding=self.padding)


def _elu_vectorised_(x: Tensor) -> Tensor:
    """ELU (alpha = 1) in place as ``max(x, exp(min(x, 0)) - 1)``: the same function, vectorised.

    For ``x > 0`` the second term is 0 < x; for ``x <= 0`` it is ``e^x - 1 >= x``.  torch's CPU ELU
    kernel calls an unvectorised ``expm1`` per element: 14 ms for a [64, 128, 16, 16] tensor against
    1.5 ms here (2 threads, AVX-512), and it was 54% of a CIFAR-preset forward pass and 19% of a
    training step (docs/bench/flows.md).  Values agree to float rounding (|difference| <= 6e-8 in
    float32; the ``exp - 1`` form loses relative, not absolute, precision near 0).
    """
    neg = torch.clamp(x, max=0.0).exp_().sub_(1.0)
    return torch.maximum(x, neg, out=x)


class _VectorisedELU(torch.autograd.Function):
    """In-place vectorised ELU whose backward, like torch's, needs only the output.

    ``d elu / dx = 1`` where the output is positive and ``output + 1`` elsewhere, which is
    ``aten.elu_backward`` in its from-the-result form: no copy of the input is kept.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = _elu_vectorised_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.elu_backward(grad, 1.0, 1.0, 1.0, True, out)


def elu(x: Tensor) -> Tensor:
    """ELU of a fresh intermediate ``x`` (a conv output, overwritten in place).

    Large CPU tensors take the vectorised form (with autograd through :class:`_VectorisedELU`);
    small ones and CUDA tensors take torch's single in-place kernel.
    """
    if x.device.type == "cpu" and x.numel() >= _CPU_ELU_MIN_NUMEL:
        if torch.is_grad_enabled() and x.requires_grad:
            return _VectorisedELU.apply(x)
        return _elu_vectorised_(x)
    return F.elu(x, inplace=True)


# Below this size torch's single kernel beats the vectorised form's four passes (the digits
# preset's largest ELU input is 64 x 24 x 4 x 4 = 24,576 elements).
_CPU_ELU_MIN_NUMEL = 1 << 17


class _ResBlock(nn.Module):
    """3x3 -> 1x1 -> 3x3 residual block with ELU (reference code's ``Block``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = NormConv2d(channels, channels, 3)
        self.conv2 = NormConv2d(channels, channels, 1)
        self.conv3 = NormConv2d(channels, channels, 3, init_scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        # ELUs of fresh conv outputs: autograd keeps only the ELU results (see `elu`)
        out = elu(self.conv1(x))
        out = elu(self.conv2(out))
        return elu(self.conv3(out) + x)


class CouplingNet(nn.Module):
    """Residual CNN ``x1 -> params``: 3x3 stem, ``blocks`` residual blocks, zero-initialised 3x3 head.

    The zero head makes every coupling start as the identity map (Glow's initialisation).
    """

    def __init__(self, cin: int, hidden: int, cout: int, blocks: int) -> None:
        super().__init__()
        self.stem = NormConv2d(cin, hidden, 3)
        self.blocks = nn.Sequential(*[_ResBlock(hidden) for _ in range(blocks)])
        self.head = nn.Conv2d(hidden, cout, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # channels-last kernels too: with NCHW kernels every convolution and its backward copied
        # the kernel into the activations' layout (5% of a CIFAR training step)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last (NHWC) activations: oneDNN's NCHW kernels reorder every input and output,
        # and measured 2x slower for the 3x3 convolutions and 7x for the 1x1 (docs/bench/flows.md)
        x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.blocks(elu(self.stem(x)))).contiguous()


# --------------------------------------------------------------------------------------------
# Coupling layers
# --------------------------------------------------------------------------------------------
def expm_lowrank_factor(m: Tensor) -> Tensor:
    """``phi(M) = sum_k M^k / (k+1)!`` for a batch of square matrices, without a series loop.

    Uses ``exp([[M, I], [0, 0]]) = [[exp(M), phi(M)], [0, I]]`` (one ``matrix_exp`` of size 2k),
    so that ``exp(A B) = I + A phi(B A) B`` for ``A [n, k]``, ``B [k, n]`` (Xiao & Liu 2020, low-rank
    coupling) costs O(n k^2) per pixel instead of O(n^3).
    """
    k = m.shape[-1]
    big = m.new_zeros(*m.shape[:-2], 2 * k, 2 * k)
    big[..., :k, :k] = m
    big[..., :k, k:] = torch.eye(k, dtype=m.dtype, device=m.device)
    return torch.linalg.matrix_exp(big)[..., :k, k:]


class _BoundedGenerator(nn.Module):
    """``g(r) = rescale * tanh(scale * r + shift) + reshift``: the affine coupling's log-scale.

    Keeps the scales well conditioned (as the reference code); the four scalars are learnt.
    """

    def __init__(self, rescale: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), 1.0 / 8))
        self.shift = nn.Parameter(torch.zeros(1))
        self.rescale = nn.Parameter(torch.full((1,), rescale))
        self.reshift = nn.Parameter(torch.zeros(1))

    def forward(self, r: Tensor) -> Tensor:
        return self.rescale * torch.tanh(self.scale * r + self.shift) + self.reshift


@functools.lru_cache(maxsize=64)
def series_degree(bound: float, dtype: torch.dtype) -> int:
    """Taylor degree ``K`` with ``bound^(K+1) / (K+1)! * exp(bound)`` below the dtype's resolution.

    The truncation error of ``sum_{k<=K} W^k / k!`` is at most that for ``||W|| <= bound``; the
    degree is a host-side function of a config constant, so applying it needs no device sync.
    Below float64 the tolerance is float32's unit roundoff 2^-24 (degree 15 at bound 2): each of
    the ``K`` Horner steps rounds at that level anyway, so more terms change nothing measurable.
    """
    tol = 1e-17 if dtype == torch.float64 else 2.0**-24
    k, term = 0, 1.0
    while term * math.exp(bound) > tol:
        k += 1
        term *= bound / (k + 1)
    return max(k, 1)


def expm_series_apply(matvec: Callable[[Tensor], Tensor], v: Tensor, degree: int) -> Tensor:
    """``exp(W) v = sum_{k<=degree} W^k v / k!`` by Horner's rule, using only ``W``-vector products.

    A fixed number of matrix-vector products (no convergence test, no ``.item()``); each costs
    O(c^2) per pixel instead of the O(c^3) matrix products of a dense exponential.
    """
    u = v
    for k in range(degree, 0, -1):
        u = v + matvec(u) * (1.0 / k)
    return u


class MatExpCoupling(FlowLayer):
    """Matrix-exponential coupling (Xiao & Liu 2020): ``y2 = exp(W(x1)) x2 + t(x1)``, ``y1 = x1``.

    ``W(x1)`` is a per-pixel ``c2 x c2`` generator from the coupling network, bounded by
    construction: ``W = (bound / c2) * tanh(rho) * tanh(scale * r + shift)`` entrywise, so
    ``||W||_inf <= bound`` (initialised as the reference code, ``|W_ij| <= 1/c2``).  log|det| = sum
    over pixels of trace(W), from the generator, never from the exponential.  When
    ``c2 > max_full`` the generator is low rank, ``W = A B`` with ``A [c2, r]``, ``B [r, c2]``
    (entries bounded so that ``||A B||_inf <= bound``), and trace(W) = trace(B A).

    ``expm="series"`` applies ``exp(W)`` to ``x2`` by a fixed-degree Taylor series of
    matrix-vector products (degree from ``bound`` and the dtype: exact to rounding);
    ``expm="matrix_exp"`` forms the exponential with ``torch.linalg.matrix_exp`` (reference path).
    """

    def __init__(
        self,
        channels: int,
        hidden: int,
        blocks: int,
        *,
        max_full: int = 24,
        rank: int = 3,
        bound: float = 2.0,
        expm: str = "series",
    ) -> None:
        super().__init__()
        if bound <= 1.0:
            raise ValueError(f"coupling generator bound must be > 1 (the initial norm is 1), got {bound}")
        if expm not in ("series", "matrix_exp"):
            raise ValueError(f"coupling expm must be 'series' or 'matrix_exp', got {expm!r}")
        self.c2 = channels // 2
        self.c1 = channels - self.c2
        self.full = self.c2 <= max_full
        self.rank = rank
        self.bound = float(bound)
        self.expm = expm
        n_gen = self.c2 * self.c2 if self.full else 2 * self.c2 * rank
        self.net = CouplingNet(self.c1, hidden, self.c2 + n_gen, blocks)
        # entry bound so that ||W||_inf <= bound (full: c2 terms per row; low rank: c2 * r terms)
        self.entry = bound / self.c2 if self.full else math.sqrt(bound / (self.c2 * rank))
        self.scale = nn.Parameter(torch.full((1,), 1.0 / 8))
        self.shift = nn.Parameter(torch.zeros(1))
        # tanh(rho) * bound / c2 = 1 / c2 at init, the reference code's rescale
        self.rho = nn.Parameter(torch.full((1,), math.atanh(1.0 / bound)))

    def _params(self, x1: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Shift ``[B, c2, H, W]`` and the generator: ``W [B, c2, c2, H, W]`` or ``A [B, c2, r, H, W]``, ``B [B, r, c2, H, W]``."""
        h = self.net(x1).to(x1.dtype)  # under bf16 autocast only the CNN runs in bf16; the flow maps stay fp32
        b, _, hh, ww = h.shape
        shift = h[:, : self.c2]
        g = torch.tanh(self.scale * h[:, self.c2 :] + self.shift)
        if self.full:
            w = (self.entry * torch.tanh(self.rho)) * g.reshape(b, self.c2, self.c2, hh, ww)
            return shift, w, None
        nr = self.c2 * self.rank
        a = (self.entry * torch.tanh(self.rho)) * g[:, :nr].reshape(b, self.c2, self.rank, hh, ww)
        bm = self.entry * g[:, nr:].reshape(b, self.rank, self.c2, hh, ww)
        return shift, a, bm

    def _transform(self, v: Tensor, w: Tensor, bm: Tensor | None, sign: float) -> tuple[Tensor, Tensor]:
        """``exp(sign * W) v`` per pixel and trace(W) per image, in ``v``'s precision (not autocast's)."""
        with torch.autocast(v.device.type, enabled=False):
            return self._transform_exact(v, w, bm, sign)

    def _transform_exact(self, v: Tensor, w: Tensor, bm: Tensor | None, sign: float) -> tuple[Tensor, Tensor]:
        if bm is None:
            trace = torch.diagonal(w, dim1=1, dim2=2).sum(dim=(1, 2, 3))
        else:
            trace = (w * bm.transpose(1, 2)).sum(dim=(1, 2, 3, 4))
        if self.expm == "series":
            ws = w if sign > 0 else -w
            if bm is None:
                def matvec(u: Tensor) -> Tensor:
                    return (ws * u.unsqueeze(1)).sum(2)
            else:
                def matvec(u: Tensor) -> Tensor:
                    return (ws * (bm * u.unsqueeze(1)).sum(2).unsqueeze(1)).sum(2)
            return expm_series_apply(matvec, v, series_degree(self.bound, v.dtype)), trace
        # dense reference path: pixel-major batches of matrices
        vp = v.permute(0, 2, 3, 1).unsqueeze(-1)  # [B,H,W,c2,1]
        wp = w.permute(0, 3, 4, 1, 2).contiguous()
        if bm is None:
            out = torch.linalg.matrix_exp(sign * wp) @ vp
        else:
            bp = bm.permute(0, 3, 4, 1, 2).contiguous()
            phi = expm_lowrank_factor(sign * (bp @ wp))
            out = vp + sign * (wp @ (phi @ (bp @ vp)))
        return out.squeeze(-1).permute(0, 3, 1, 2), trace

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        shift, w, bm = self._params(x1)
        y2, trace = self._transform(x2, w, bm, 1.0)
        return torch.cat([x1, y2 + shift], dim=1), trace

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[:, : self.c1], y[:, self.c1 :]
        shift, w, bm = self._params(y1)
        x2, _ = self._transform(y2 - shift, w, bm, -1.0)
        return torch.cat([y1, x2], dim=1)


class AffineCoupling(FlowLayer):
    """Glow's affine coupling: ``y2 = exp(s(x1)) * x2 + t(x1)`` with a bounded log-scale.

    log|det| = sum of the log-scales (the entrywise special case of :class:`MatExpCoupling`).
    """

    def __init__(self, channels: int, hidden: int, blocks: int, **_: int) -> None:
        super().__init__()
        self.c2 = channels // 2
        self.c1 = channels - self.c2
        self.net = CouplingNet(self.c1, hidden, 2 * self.c2, blocks)
        self.gen = _BoundedGenerator(1.0)

    def _params(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x1).to(x1.dtype)
        return h[:, : self.c2], self.gen(h[:, self.c2 :])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        shift, logs = self._params(x1)
        y2 = torch.addcmul(shift, x2, logs.exp())
        return torch.cat([x1, y2], dim=1), logs.sum(dim=(1, 2, 3))

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[:, : self.c1], y[:, self.c1 :]
        shift, logs = self._params(y1)
        return torch.cat([y1, (y2 - shift) * torch.exp(-logs)], dim=1)


# --------------------------------------------------------------------------------------------
# Layer registry (what the property tests iterate over)
# --------------------------------------------------------------------------------------------
LayerFactory = Callable[[int, int, int], FlowLayer]

LAYER_FACTORIES: dict[str, LayerFactory] = {
    "actnorm_channel": lambda c, h, w: ActNorm(c, h, w, per_pixel=False),
    "actnorm_pixel": lambda c, h, w: ActNorm(c, h, w, per_pixel=True),
    "matexp_conv1x1": lambda c, h, w: MatExpConv1x1(c),
    "lu_conv1x1": lambda c, h, w: LUConv1x1(c),
    "matexp_coupling": lambda c, h, w: MatExpCoupling(c, 8, 1),
    "matexp_coupling_lowrank": lambda c, h, w: MatExpCoupling(c, 8, 1, max_full=1, rank=2),
    "matexp_coupling_dense": lambda c, h, w: MatExpCoupling(c, 8, 1, expm="matrix_exp"),
    "matexp_coupling_lowrank_dense": lambda c, h, w: MatExpCoupling(c, 8, 1, max_full=1, rank=2, expm="matrix_exp"),
    "affine_coupling": lambda c, h, w: AffineCoupling(c, 8, 1),
}


def available_layers() -> list[str]:
    """Names of the registered layer kinds (each is covered by the property tests)."""
    return sorted(LAYER_FACTORIES)


def build_layer(name: str, channels: int, height: int, width: int) -> FlowLayer:
    """Build a registered layer for a ``[channels, height, width]`` input."""
    if name not in LAYER_FACTORIES:
        raise KeyError(f"unknown flow layer '{name}'; known: {', '.join(available_layers())}")
    return LAYER_FACTORIES[name](channels, height, width)
