"""Latent-space optimal transport prior (Liu, Gu & Samaras 2018, "Latent Space Optimal Transport for
Generative Models"; source document 003): a second way to model each class's distribution in the
flow's latent space, next to NFPI's class Gaussians.

Only the paper's abstract is among the sources; the algorithm below is this project's
reconstruction (``docs/latent_ot.md`` lists what is reconstructed and why).  The abstract's recipe:
train a *discriminator* between a simple distribution and the latent data distribution by a
minimisation only (no min-max), then write the optimal transport (OT) map explicitly from it.

Per class ``y`` (all classes trained together as ``K`` independent networks, batched with
``torch.bmm``):

1. Standardise the class's training latents, ``z -> (z - m_y) / s_y`` (class mean and per-dimension
   standard deviation), so that the source ``N(0, I)`` (or the unit-variance uniform) is on the same
   scale as the data.  The map is learned in these coordinates and un-standardised afterwards.
2. Each step, for a batch of source samples ``x_i`` and a batch of class latents ``t_j``, solve the
   *exact* discrete OT problem for the quadratic cost ``c(x, t) = |x - t|^2 / 2`` with POT
   (``ot.emd``, a linear programme): plan ``P``, dual potentials ``(u, v)`` with
   ``u_i + v_j <= c(x_i, t_j)`` (the discriminator's targets, as in the "two-step" WGAN-TS of the
   same authors).
3. Regress a potential network ``phi_y`` onto the (centred) source potentials ``u`` and, as the
   gradient regulariser, its input gradient onto the displacement the batch plan implies:
   ``grad phi(x_i) ~ x_i - tbar_i`` with ``tbar_i = sum_j P_ij t_j / a_i`` the barycentric projection
   (for the quadratic cost an optimal ``u`` satisfies ``grad u(x) = x - T(x)``; Brenier).  Both are
   plain regressions: a minimisation only.
4. The OT map in closed form (Brenier / Gangbo-McCann for the quadratic cost):
   ``T(x) = x - s * grad phi(x)``; ``s = 1`` is the map itself, ``0 < s < 1`` McCann's displacement
   interpolation between source and data.
5. The semi-discrete variant: the OT map from the continuous source onto the *finite* set of training
   latents is ``T_sd(x) = t_{j*}``, ``j* = argmax_j (g_j - c(x, t_j))`` (a power diagram), with the
   target weights ``g`` maximising the concave semi-discrete dual
   ``E_x[min_j (c(x, t_j) - g_j)] + mean_j g_j``; here ``g`` are the target duals of one exact OT
   problem between many source samples and all the class's latents (the dual discretised by Monte
   Carlo).  It reproduces training latents exactly (memorisation), which the evaluation measures.

Evaluation helpers (latent W2 and MMD to held-out latents, mode coverage, nearest-neighbour distance)
are pure functions here; the ``latent_ot`` stage applies them to NFPI's Gaussians and to this prior on
the same latents.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfpi.latent_ot.config import LatentOTConfig
from nfpi.progress import progress

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
]

log = logging.getLogger(__name__)


class TooFewLatentsError(ValueError):
    """A class has too few training latents to fit a transport map."""


# --------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class ClassLatents:
    """Training latents grouped by class as one padded tensor (so every class op is batched).

    Attributes:
        points: ``[K, M, d]`` latents, class ``k`` in rows ``:counts[k]``, zero padding after.
        mask: ``[K, M]`` bool, True on real rows.
        counts: ``[K]`` int64 number of latents per class.
    """

    points: Tensor
    mask: Tensor
    counts: Tensor


def group_by_class(latents: Tensor, labels: Tensor, num_classes: int, *, min_class_size: int = 2,
                   where: str = "latents") -> ClassLatents:
    """Group ``[N, d]`` latents by label into a padded ``[K, M, d]`` tensor (one scatter, no class loop).

    Raises :class:`TooFewLatentsError` naming the classes below ``min_class_size`` (``where`` names
    the source file in the message).
    """
    if latents.ndim != 2 or labels.ndim != 1 or latents.shape[0] != labels.shape[0]:
        raise ValueError(f"{where}: expected latents [N, d] and labels [N], got {tuple(latents.shape)} and "
                         f"{tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{where}: labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    counts = torch.bincount(labels, minlength=num_classes)
    small = (counts < min_class_size).nonzero().flatten().tolist()
    if small:
        detail = ", ".join(f"class {c}: {int(counts[c])}" for c in small)
        raise TooFewLatentsError(
            f"{where}: too few latents to fit a transport map ({detail}; need at least {min_class_size} per class). "
            f"Use a larger training split, or lower 'latent_ot.min_class_size' if you accept a map fitted to so few points."
        )
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(labels.numel()) - starts[sorted_labels]  # position of each latent within its class
    m = int(counts.max())
    points = latents.new_zeros(num_classes, m, latents.shape[1])
    points[sorted_labels, rank] = latents[order]
    mask = torch.arange(m)[None, :] < counts[:, None]
    return ClassLatents(points=points, mask=mask, counts=counts)


def source_sample(kind: str, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Tensor:
    """Samples of the simple source distribution, unit variance per coordinate."""
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)
    if kind == "uniform":
        return ((torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * math.sqrt(3.0)).to(device)
    raise ValueError(f"config key 'latent_ot.source': unknown source {kind!r}; use 'gaussian' or 'uniform'")


# --------------------------------------------------------------------------------------------- batch OT
@dataclass(frozen=True)
class BatchOT:
    """Exact OT between two equally weighted point clouds for ``c(x, t) = |x - t|^2 / 2``.

    Attributes:
        plan: ``[n, m]`` optimal coupling (rows sum to ``1/n``, columns to ``1/m``).
        u: ``[n]`` source dual potentials, centred to mean zero.
        v: ``[m]`` target dual potentials (shifted by the same constant: ``u_i + v_j <= c_ij``).
        barycentre: ``[n, d]`` barycentric projection ``tbar_i = n * sum_j P_ij t_j``.
        cost: the optimal transport cost ``sum_ij P_ij c_ij`` (= W2^2 / 2).
    """

    plan: Tensor
    u: Tensor
    v: Tensor
    barycentre: Tensor
    cost: float


def batch_ot(x: Tensor, t: Tensor) -> BatchOT:
    """Solve the exact discrete OT problem between ``x [n, d]`` and ``t [m, d]`` with POT (``ot.emd``).

    Solved in float64 (the network simplex is exact; float32 costs make its duals noisy).
    """
    import ot

    xd = x.detach().double().cpu().numpy()
    td = t.detach().double().cpu().numpy()
    n, m = xd.shape[0], td.shape[0]
    cost = 0.5 * ot.dist(xd, td, metric="sqeuclidean")
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    plan, info = ot.emd(a, b, cost, log=True, numItermax=1_000_000)
    if info.get("warning"):
        log.warning("batch OT: %s", info["warning"])
    u, v = info["u"], info["v"]
    shift = u.mean()
    bary = (plan @ td) * n
    return BatchOT(
        plan=torch.from_numpy(plan).to(x.dtype),
        u=torch.from_numpy(u - shift).to(x.dtype),
        v=torch.from_numpy(v + shift).to(x.dtype),
        barycentre=torch.from_numpy(bary).to(x.dtype),
        cost=float(info["cost"]),
    )


# --------------------------------------------------------------------------------------------- networks
class PotentialNetworks(torch.nn.Module):
    """``K`` independent MLP potentials ``phi_k: R^d -> R``, evaluated together with batched matmuls.

    ``forward(x)`` takes ``x [K, n, d]`` (row ``k`` goes through network ``k``) and returns ``[K, n]``.
    SiLU activations keep ``phi`` smooth, so that its gradient (the map) is continuous.
    """

    def __init__(self, num_classes: int, dim: int, hidden: int, depth: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * depth + [1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            # explicit generator: the initialisation (and so the map) is a function of the seed only
            w = torch.randn(num_classes, fan_in, fan_out, generator=generator, dtype=dtype) / math.sqrt(fan_in)
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(torch.zeros(num_classes, 1, fan_out, dtype=dtype)))
        self.weights[-1].data.mul_(0.1)  # start near phi = 0, i.e. the identity map

    def forward(self, x: Tensor) -> Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.nn.functional.silu(h)
        return h.squeeze(-1)

    def value_and_grad(self, x: Tensor, *, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """``phi(x) [K, n]`` and ``grad_x phi(x) [K, n, d]`` (each potential depends on its own rows only)."""
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            phi = self(xg)
            (grad,) = torch.autograd.grad(phi.sum(), xg, create_graph=create_graph)
        return phi, grad


def ot_map(potential: PotentialNetworks, x: Tensor, scale: float = 1.0) -> Tensor:
    """The closed-form OT map for the quadratic cost: ``T(x) = x - scale * grad phi(x)``, ``x [K, n, d]``.

    With ``c = |x - t|^2 / 2`` and ``u`` the source Kantorovich potential, ``|x|^2/2 - u`` is convex and
    its gradient ``x - grad u(x)`` is the optimal map (Brenier); ``scale`` in (0, 1) gives McCann's
    displacement interpolation (the "discriminator" ``D = -u`` makes it ``x + grad D``).
    """
    _, grad = potential.value_and_grad(x)
    return (x - scale * grad).detach()


def semi_discrete_assign(x: Tensor, targets: Tensor, mask: Tensor, weights: Tensor) -> Tensor:
    """Indices ``j* = argmax_j (g_j - |x - t_j|^2 / 2)`` (the power diagram cell of each source point).

    ``x [K, n, d]``, ``targets [K, M, d]``, ``mask [K, M]``, ``weights g [K, M]`` -> ``[K, n]`` int64.
    The ``|x|^2`` term is common to all ``j`` and dropped; the rest is one batched matmul.
    """
    score = torch.bmm(x, targets.transpose(1, 2)) - 0.5 * (targets * targets).sum(-1)[:, None, :] + weights[:, None, :]
    score = score.masked_fill(~mask[:, None, :], float("-inf"))
    return score.argmax(-1)


# --------------------------------------------------------------------------------------------- the prior
@dataclass
class FitReport:
    """Training diagnostics of :func:`fit_latent_ot`.

    Attributes:
        loss: final total loss (mean of the last 10 steps).
        value_loss: final potential-regression loss.
        grad_loss: final gradient-regulariser loss (per dimension).
        batch_w2: final mean per-class batch W2 between source and class batches (standardised units).
        semi_discrete_residual: max over classes of the total variation between the source mass each
            training latent's power cell receives and its share ``1/m`` (Monte Carlo, 8192 source
            samples per class, so it includes sampling noise of order ``sqrt(m / 8192) / 2``).
        seconds: wall-clock fitting time.
    """

    loss: float
    value_loss: float
    grad_loss: float
    batch_w2: float
    semi_discrete_residual: float
    seconds: float


class LatentOTPrior(torch.nn.Module):
    """Per-class transport priors in latent space: the OT map and the semi-discrete map.

    Built by :func:`fit_latent_ot`; ``sample`` / ``sample_semi_discrete`` draw class-conditional latents.
    Saved with :meth:`state` (plain tensors + config, loadable with ``weights_only=True``).
    """

    def __init__(self, cfg: LatentOTConfig, num_classes: int, dim: int, generator: torch.Generator,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.dim = dim
        self.potential = PotentialNetworks(num_classes, dim, cfg.hidden, cfg.depth, generator, dtype)
        self.register_buffer("mean", torch.zeros(num_classes, dim, dtype=dtype))
        self.register_buffer("scale", torch.ones(num_classes, dim, dtype=dtype))
        self.register_buffer("targets", torch.zeros(num_classes, 1, dim, dtype=dtype))  # standardised
        self.register_buffer("target_mask", torch.ones(num_classes, 1, dtype=torch.bool))
        self.register_buffer("sd_weights", torch.zeros(num_classes, 1, dtype=dtype))

    # -- coordinates
    def standardise(self, z: Tensor) -> Tensor:
        """``[K, n, d]`` raw latents -> class-standardised coordinates."""
        return (z - self.mean[:, None, :]) / self.scale[:, None, :]

    def unstandardise(self, x: Tensor) -> Tensor:
        """``[K, n, d]`` standardised coordinates -> raw latents."""
        return x * self.scale[:, None, :] + self.mean[:, None, :]

    # -- maps
    def transport(self, x: Tensor, scale: float | None = None) -> Tensor:
        """OT map of source samples ``x [K, n, d]`` (standardised) to raw latents ``[K, n, d]``."""
        return self.unstandardise(ot_map(self.potential, x, self.cfg.map_scale if scale is None else scale))

    def transport_semi_discrete(self, x: Tensor) -> Tensor:
        """Semi-discrete map: each source sample to the training latent owning its power cell."""
        idx = semi_discrete_assign(x, self.targets, self.target_mask, self.sd_weights)
        picked = torch.gather(self.targets, 1, idx[..., None].expand(-1, -1, self.dim))
        return self.unstandardise(picked)

    def _source(self, n: int, generator: torch.Generator) -> Tensor:
        return source_sample(self.cfg.source, (self.num_classes, n, self.dim), generator,
                             self.mean.dtype, self.mean.device)

    def sample(self, n_per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n_per_class`` OT-map latents per class: ``(z [K*n, d], labels [K*n])``, classes in blocks."""
        z = self.transport(self._source(n_per_class, generator))
        return z.reshape(-1, self.dim), self._labels(n_per_class)

    def sample_semi_discrete(self, n_per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Like :meth:`sample` with the semi-discrete (argmax onto training latents) map."""
        z = self.transport_semi_discrete(self._source(n_per_class, generator))
        return z.reshape(-1, self.dim), self._labels(n_per_class)

    def _labels(self, n: int) -> Tensor:
        return torch.arange(self.num_classes, device=self.mean.device).repeat_interleave(n)

    # -- persistence
    def state(self) -> dict[str, Any]:
        """A ``weights_only``-loadable dict: format tag, config, shapes and tensors."""
        return {
            "format": "nfpi-latent-ot",
            "version": 1,
            "config": dataclasses.asdict(self.cfg),
            "num_classes": self.num_classes,
            "dim": self.dim,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], where: str = "latent OT state") -> LatentOTPrior:
        """Rebuild a prior saved with :meth:`state`."""
        if state.get("format") != "nfpi-latent-ot":
            raise ValueError(f"{where}: not a latent OT prior (format {state.get('format')!r}); rerun the latent_ot stage")
        cfg = LatentOTConfig(**state["config"])
        sd = state["state_dict"]
        dtype = sd["mean"].dtype
        prior = cls(cfg, int(state["num_classes"]), int(state["dim"]), torch.Generator().manual_seed(0), dtype)
        prior.targets = torch.zeros_like(sd["targets"])
        prior.target_mask = torch.zeros_like(sd["target_mask"])
        prior.sd_weights = torch.zeros_like(sd["sd_weights"])
        prior.load_state_dict(sd)
        return prior

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save atomically as an :mod:`nfpi.checkpoint` of kind ``"latent_ot_prior"`` (loader: :meth:`load`)."""
        from nfpi.checkpoint import save_checkpoint

        state = self.state()
        save_checkpoint(path, kind="latent_ot_prior", model=state["state_dict"], config=state["config"],
                        extra={"num_classes": state["num_classes"], "dim": state["dim"]})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatentOTPrior:
        """The one loader of kind ``"latent_ot_prior"`` (``latent_ot/prior.pt``), ``weights_only``."""
        from nfpi.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, expected_kind="latent_ot_prior")
        return cls.from_state({"format": "nfpi-latent-ot", "version": 1, "config": ckpt["config"],
                               "num_classes": ckpt["extra"]["num_classes"], "dim": ckpt["extra"]["dim"],
                               "state_dict": ckpt["model"]}, where=str(path))


def _class_batches(cls: ClassLatents, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Per class, ``b`` indices drawn without replacement (``b <= min count``); returns ``[K, b]`` idx."""
    keys = torch.rand(cls.mask.shape, generator=generator, dtype=torch.float64)
    keys = keys.masked_fill(~cls.mask, 2.0)  # padding sorts last
    idx = torch.argsort(keys, dim=1)[:, :b]
    return idx, torch.gather(cls.points, 1, idx[..., None].expand(-1, -1, cls.points.shape[-1]))


# Long (92 lines): the fit loop of all K classes' networks at once (batch OT, regression, checkpoints of the
# loss) with its input checks; the OT and network steps are already their own functions.
def fit_latent_ot(latents: Tensor, labels: Tensor, num_classes: int, cfg: LatentOTConfig, *,
                  where: str = "latents") -> tuple[LatentOTPrior, FitReport]:
    """Fit the per-class OT prior of ``latents [N, d]`` with ``labels [N]`` (module docstring, steps 1-5).

    Deterministic given ``cfg.seed`` (own generators for initialisation, batches and sampling; the
    OT solver is exact).  The dtype of ``latents`` is kept (float64 in the tests).
    """
    t0 = time.perf_counter()
    from nfpi.runtime import select_device

    device = select_device(cfg.device)
    dtype = latents.dtype if latents.is_floating_point() else torch.float32
    latents = latents.to(dtype).cpu()
    grouped = group_by_class(latents, labels.cpu(), num_classes, min_class_size=cfg.min_class_size, where=where)
    gen = torch.Generator().manual_seed(cfg.seed)
    dim = latents.shape[1]
    prior = LatentOTPrior(cfg, num_classes, dim, gen, dtype)

    # 1. class standardisation (masked moments; one pass, all classes)
    maskf = grouped.mask[..., None].to(dtype)
    n = grouped.counts.to(dtype)[:, None]
    mean = (grouped.points * maskf).sum(1) / n
    var = (((grouped.points - mean[:, None]) ** 2) * maskf).sum(1) / n
    if cfg.standardize:
        scale = var.clamp_min(1e-12).sqrt().clamp_min(1e-6 * float(var.mean().sqrt().clamp_min(1e-12)))
    else:
        mean, scale = torch.zeros_like(mean), torch.ones_like(mean)
    prior.mean.copy_(mean)
    prior.scale.copy_(scale)
    targets = ((grouped.points - mean[:, None]) / scale[:, None]) * maskf
    prior.targets = targets.clone()
    prior.target_mask = grouped.mask.clone()
    prior.sd_weights = torch.zeros(num_classes, targets.shape[1], dtype=dtype)
    prior.to(device)
    grouped_std = ClassLatents(points=targets, mask=grouped.mask, counts=grouped.counts)

    # 2-3. potential networks against exact per-batch OT
    b_src = cfg.batch_size
    b_tgt = int(min(cfg.batch_size, int(grouped.counts.min())))
    opt = torch.optim.Adam(prior.potential.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1), eta_min=cfg.lr * 0.05)
    hist: list[tuple[float, float, float, float]] = []
    bar = progress(range(cfg.steps), desc="latent OT potentials", unit="step", logger=log)
    for step in bar:
        x = source_sample(cfg.source, (num_classes, b_src, dim), gen, dtype)
        _, t = _class_batches(grouped_std, b_tgt, gen)
        # POT has no batched exact solver: one small LP per class (each ~1 ms; the network step is batched)
        sols = [batch_ot(x[k], t[k]) for k in range(num_classes)]
        u = torch.stack([s.u for s in sols]).to(device)
        bary = torch.stack([s.barycentre for s in sols]).to(device)
        xd = x.to(device).requires_grad_(True)
        phi, grad = prior.potential.value_and_grad(xd, create_graph=True)
        value_loss = ((phi - phi.mean(1, keepdim=True) - u) ** 2).mean() / dim
        grad_loss = ((grad - (xd - bary)) ** 2).sum(-1).mean() / dim
        loss = cfg.value_weight * value_loss + cfg.grad_weight * grad_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        w2 = float(np.mean([math.sqrt(2 * s.cost) for s in sols]))
        hist.append((float(loss.detach()), float(value_loss.detach()), float(grad_loss.detach()), w2))
        bar.set(loss=hist[-1][0], batch_w2=w2)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.info("latent OT step %d/%d: loss %.4g (value %.4g, grad %.4g), batch W2 %.4g",
                     step + 1, cfg.steps, *hist[-1])
    prior.potential.requires_grad_(False)

    # 5. semi-discrete weights g: the target duals of one exact OT problem between many source samples
    #    and all of the class's training latents (the discretised semi-discrete dual, solved exactly by
    #    the same LP; stochastic ascent on the dual converges far slower, see docs/latent_ot.md)
    residual = float("nan")
    if cfg.semi_discrete_samples > 0:
        g = torch.zeros(num_classes, targets.shape[1], dtype=dtype)
        x = source_sample(cfg.source, (num_classes, cfg.semi_discrete_samples, dim), gen, dtype)
        for k in progress(range(num_classes), desc="latent OT semi-discrete weights", unit="class", logger=log,
                          leave=False):  # one LP per class (POT has no batched exact solver)
            m_k = int(grouped.counts[k])
            g[k, :m_k] = batch_ot(x[k], targets[k, :m_k]).v
        prior.sd_weights = g.to(device)
        counts = grouped.counts.to(device=device, dtype=dtype)
        maskd = grouped.mask.to(device)
        share = maskd.to(dtype) / counts[:, None]
        x = source_sample(cfg.source, (num_classes, 8192, dim), gen, dtype, device)
        idx = semi_discrete_assign(x, targets.to(device), maskd, prior.sd_weights)
        hit = torch.zeros_like(share).scatter_add_(1, idx, torch.ones_like(idx, dtype=dtype)) / idx.shape[1]
        residual = float(0.5 * (hit - share).abs().sum(1).max())
    last = np.array(hist[-10:]) if hist else np.full((1, 4), float("nan"))
    report = FitReport(loss=float(last[:, 0].mean()), value_loss=float(last[:, 1].mean()),
                       grad_loss=float(last[:, 2].mean()), batch_w2=float(last[:, 3].mean()),
                       semi_discrete_residual=residual, seconds=time.perf_counter() - t0)
    log.info("latent OT fitted in %.1fs: %s", report.seconds, report)
    return prior, report


# --------------------------------------------------------------------------------------------- metrics
def wasserstein2(a: Tensor, b: Tensor) -> float:
    """Exact W2 between two equally weighted point clouds ``[n, d]``, ``[m, d]`` (``ot.emd2``, float64)."""
    import ot

    ad, bd = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    cost = ot.dist(ad, bd, metric="sqeuclidean")
    w2sq = ot.emd2(np.full(len(ad), 1 / len(ad)), np.full(len(bd), 1 / len(bd)), cost, numItermax=1_000_000)
    return math.sqrt(max(float(w2sq), 0.0))


def median_bandwidth(x: Tensor) -> float:
    """Median pairwise distance of ``x [n, d]`` (the usual MMD kernel bandwidth)."""
    d = torch.cdist(x.double(), x.double())
    off = d[~torch.eye(len(x), dtype=torch.bool)]
    return float(off.median().clamp_min(1e-12))


def mmd2(a: Tensor, b: Tensor, bandwidth: float) -> float:
    """Unbiased MMD^2 between samples ``a [n, d]`` and ``b [m, d]``, Gaussian kernel of width ``bandwidth``."""
    a, b = a.double(), b.double()

    def k(p: Tensor, q: Tensor) -> Tensor:
        return torch.exp(-torch.cdist(p, q) ** 2 / (2 * bandwidth**2))

    n, m = len(a), len(b)
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    return float((kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1)) + (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
                 - 2 * kab.mean())


def mode_coverage(samples: Tensor, centres: Tensor, reference_share: Tensor, min_share: float) -> tuple[Tensor, Tensor]:
    """Assign ``samples [n, d]`` to the nearest of ``centres [C, d]``; a mode is covered when its share of
    the samples is at least ``min_share * reference_share``.  Returns ``(covered [C] bool, share [C])``."""
    idx = torch.cdist(samples.double(), centres.double()).argmin(1)
    share = torch.bincount(idx, minlength=len(centres)).double() / len(samples)
    return share >= min_share * reference_share.double(), share


def nearest_neighbour_distance(a: Tensor, b: Tensor, chunk: int = 1024) -> Tensor:
    """For each row of ``a [n, d]`` the Euclidean distance to its nearest row of ``b [m, d]`` (chunked)."""
    # exact differences (not the |a|^2 + |b|^2 - 2ab expansion): a copy must come out at distance 0
    out = [torch.cdist(a[i:i + chunk].double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist").min(1).values
           for i in range(0, len(a), chunk)]
    return torch.cat(out) if out else a.new_zeros(0, dtype=torch.float64)


def eight_gaussians(n: int, generator: torch.Generator, radius: float = 2.0, std: float = 0.1,
                    dtype: torch.dtype = torch.float64, balanced: bool = False) -> tuple[Tensor, Tensor]:
    """The paper's eight-Gaussian toy: equal mixture of ``N(c_k, std^2 I)``, ``c_k`` on a circle.

    Returns ``(points [n, 2], mode [n])``; ``eight_gaussians_centres`` gives the ``c_k``.
    ``balanced`` draws exactly ``n/8`` points per mode (a held-out set whose W2 is not dominated by
    random mode counts: with 1000 random draws, moving the count imbalance alone costs W2 ~ 0.35).
    """
    if balanced:
        mode = torch.arange(n) % 8
    else:
        mode = torch.randint(0, 8, (n,), generator=generator)
    centres = eight_gaussians_centres(radius, dtype)
    return centres[mode] + std * torch.randn(n, 2, generator=generator, dtype=dtype), mode


def eight_gaussians_centres(radius: float = 2.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """The eight mode centres ``radius * (cos, sin)(2 pi k / 8)``."""
    ang = torch.arange(8, dtype=dtype) * (2 * math.pi / 8)
    return radius * torch.stack([ang.cos(), ang.sin()], 1)

