"""Baseline 2 as the paper runs it (NF^GD, joint): the class Gaussians trained by gradient descent while the flow trains.

Eq. 4 is a loss of the flow parameters Theta and the Gaussians Psi = (mu, v) together.  The paper's
Baseline 2 ("we use gradient descent when optimizing Eq. 4", Section 5.2) updates the Gaussians by
gradient steps at the same time as the flow, on the flow's current latents (the public reference
code steps them with Adam during NF training).  This module is that setting family
(``gdjoint_<policy>``): during fine-tuning the means ``mu`` and the variance logits ``theta``
(``v = vmin + (vmax - vmin) sigmoid(theta)``, the sigmoid reparametrisation, spec "Baseline 2") are
parameters beside the flow's, optimised on every minibatch under

    J(Theta, Psi) = mean_i [ -log N(f(x_i); mu_{y_i}, v_{y_i}) - log|det J_f(x_i)| ]
                    + (lam / K) * 1/(K(K-1)) * sum_{y != y'} exp(-KL_yy' / (pi_yy' alpha)),

with the learning rate of ``(mu, theta)`` following one of the five policies
``lr(t) = lr0 (1 - t/T)^p`` (:data:`nfpi.fpi.LR_POLICIES`) over the ``T`` fine-tuning steps, while the
flow keeps its own optimiser and schedule (the same flow steps as NFPI's fine-tuning).

Why this scaling: for a fixed flow and classes of equal size the first term is ``(1/K) sum_y NLL_y``
plus constants, so ``J = Eq. 4 / K`` up to terms that do not depend on the Gaussians
(:func:`joint_objective` and the tests check it against :func:`nfpi.fpi.objective`).  Dividing by
``K`` keeps the flow's loss the per-image NLL of every other setting, so the flow's learning rate
means the same thing in all rows of Table 1.  With classes of unequal size each class's NLL is
weighted by its share of the training images (the minibatch estimate of the flow's loss).

The converged reading (``gd_<policy>``: Eq. 4 minimised to convergence on the pretrained flow's fixed
latents, :func:`nfpi.fpi.solve_gd`) stays a separate setting; ``docs/method.md`` compares the two.

:class:`JointGaussianPrior` is the trainable prior :func:`nfpi.training.train_flow` accepts in place
of a fixed :class:`nfpi.density.ClassGaussianPrior`: its raw parameters and optimiser state are part
of the resume checkpoint, so an interrupted and resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from nfpi import distributed as ddp
from nfpi.config import ConfigError, from_mapping
from nfpi.fpi import LR_POLICIES, ClassStats, FPIResult, PolicyName, lr_at, pairwise_kl, pi_normaliser

__all__ = ["JointGDConfig", "JointLoss", "JointGaussianPrior", "joint_objective", "separation", "initial_gaussians",
           "joint_prior"]

DTYPE = torch.float64
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class JointGDConfig:
    """A ``gdjoint_<policy>`` setting's spec (what the solve and finetune stages receive).

    The objective's keys come from the ``fpi`` section (the same Eq. 4 as NFPI), the optimiser keys
    from the ``gd`` section; ``gd.steps`` is not used: ``T`` is the fine-tuning's step count.
    """

    method: Literal["gd_joint"] = "gd_joint"
    lam: float | Literal["auto"] = 100.0  #: lambda of Eq. 4; "auto": the lambda the NFPI setting's path chose
    alpha: float = 1.0  #: alpha of Eq. 3
    pi: Literal["mean", "pair"] = "mean"  #: normaliser of the KLD kernel (Eq. 9 / 10), lagged (detached)
    learn: Literal["both", "mean", "var"] = "both"  #: which Gaussian parameters are trained
    init: Literal["data", "identity"] = "data"  #: start: class data mean and variance, or unit variance
    policy: PolicyName = "linear"  #: the learning-rate policy (nfpi.fpi.LR_POLICIES)
    optimizer: Literal["adam", "sgd"] = "adam"  #: the Gaussians' optimiser (the reference code: Adam)
    lr: float = 1e-2  #: lr0 of the policy
    gd_vmin: float | None = None  #: sigmoid lower bound; None = 1e-2 x the smallest initial variance
    gd_vmax: float | None = None  #: sigmoid upper bound; None = 1e2 x the largest initial variance

    def __post_init__(self) -> None:
        checks = [
            (self.lam == "auto" or (isinstance(self.lam, (int, float)) and math.isfinite(self.lam) and self.lam >= 0),
             f"lam must be >= 0 or 'auto', got {self.lam!r} (config key fpi.lam)"),
            (math.isfinite(self.alpha) and self.alpha > 0, f"alpha must be > 0, got {self.alpha} (config key fpi.alpha)"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr} (config key gd.lr)"),
            (self.policy in LR_POLICIES, f"policy must be one of {sorted(LR_POLICIES)}, got {self.policy!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"setting gd_joint: {msg}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> JointGDConfig:
        """The config from a setting spec; keys this method does not use (``gd.steps``) are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return from_mapping(cls, {k: v for k, v in spec.items() if k in names}, where="setting")


@dataclass(frozen=True)
class JointLoss:
    """The two terms of :func:`joint_objective` (scalars; differentiable)."""

    nll: Tensor  #: mean over images of -log N(z; mu_y, v_y) - log|det J| (nats per image)
    separation: Tensor  #: (lam / K) / (K(K-1)) * sum_{y != y'} exp(-KL_yy' / (pi alpha))

    @property
    def total(self) -> Tensor:
        return self.nll + self.separation


def separation(means: Tensor, variances: Tensor, *, lam: float, alpha: float, pi: str,
               pi_value: Tensor | None = None) -> Tensor:
    """Eq. 4's KLD term divided by ``K``: ``lam / (K^2 (K-1)) sum_{y != y'} exp(-KL_yy' / (pi_yy' alpha))``.

    ``pi`` is evaluated at the given point and held constant (detached), the spec's lagged convention;
    ``pi_value`` holds it at another point's value instead (as :func:`nfpi.fpi.objective`).  The KL of
    all pairs is the matrix-product form of :func:`nfpi.fpi.pairwise_kl`.
    """
    k = means.shape[0]
    if lam == 0 or k < 2:
        return means.new_zeros(())
    kl = pairwise_kl(means, variances)
    pv = pi_normaliser(kl, pi) if pi_value is None else pi_value  # type: ignore[arg-type]
    off = 1.0 - torch.eye(k, dtype=kl.dtype, device=kl.device)
    return lam / (k * k * (k - 1)) * (torch.exp(-kl / (pv * alpha)) * off).sum()


def _gaussian_log_prob(z: Tensor, y: Tensor, means: Tensor, variances: Tensor) -> Tensor:
    """``log N(z_b; mu_{y_b}, v_{y_b})`` ``[B]`` (each image's own class, direct form), differentiable in all."""
    dt = torch.promote_types(z.dtype, means.dtype)
    d = z.to(dt) - means.to(dt)[y]
    v = variances.to(dt)[y]
    return -0.5 * ((d * d / v).sum(1) + torch.log(v).sum(1) + z.shape[1] * _LOG_2PI)


def joint_objective(z: Tensor, logdet: Tensor, y: Tensor, means: Tensor, variances: Tensor, *, lam: float,
                    alpha: float, pi: str, pi_value: Tensor | None = None) -> JointLoss:
    """``J(Theta, Psi)`` of the module docstring on latents ``z [B, d]``, ``log|det J| [B]``, labels ``y [B]``.

    On the whole training set it is Eq. 4 / K plus Gaussian-independent terms when the classes are
    of equal size; on a minibatch it is the unbiased estimate of the whole-set value.
    """
    nll = -(_gaussian_log_prob(z, y, means, variances) + logdet.to(torch.promote_types(logdet.dtype, means.dtype)))
    return JointLoss(nll.mean(), separation(means, variances, lam=lam, alpha=alpha, pi=pi, pi_value=pi_value))


def _bounds(v0: Tensor, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """The sigmoid's range, as :func:`nfpi.fpi.solve_gd` sets it: 1e-2 x the smallest, 1e2 x the largest start."""
    lo = float(v0.min()) * 1e-2 if vmin is None else float(vmin)
    hi = float(v0.max()) * 1e2 if vmax is None else float(vmax)
    if not (0 < lo < float(v0.min()) and float(v0.max()) < hi):
        raise ConfigError(f"gd_joint: need 0 < vmin < initial variances < vmax; got vmin={lo:g}, vmax={hi:g}, initial "
                          f"variances in [{float(v0.min()):g}, {float(v0.max()):g}] (config keys gd.gd_vmin / gd.gd_vmax)")
    return lo, hi


class JointGaussianPrior:
    """Class Gaussians trained with the flow: the trainable prior of :func:`nfpi.training.train_flow`.

    ``mu [K, d]`` and ``theta [K, d]`` are float64 leaves (``learn`` says which take gradients);
    ``v = vmin + (vmax - vmin) sigmoid(theta)`` stays inside ``(vmin, vmax)`` whatever the steps, so
    the variances are always valid.  :meth:`step` applies the policy's learning rate for step ``t``
    of ``total_steps``.  :meth:`state_dict` is a :class:`nfpi.density.ClassGaussianPrior` state (what
    the final flow checkpoint stores and every later stage reads); :meth:`resume_state` adds the raw
    parameters and the optimiser state for an exact resume.
    """

    trainable = True  # what train_flow looks for: it then optimises this prior beside the flow

    def __init__(self, means: Tensor, variances: Tensor, cfg: JointGDConfig, total_steps: int) -> None:
        if cfg.lam == "auto":
            raise ConfigError("gd_joint: lam: auto must be resolved to the NFPI setting's chosen lambda first "
                              "(nfpi.joint_gd.joint_prior reads it from the solve record)")
        if total_steps < 1:
            raise ConfigError(f"gd_joint: the fine-tuning needs >= 1 step to train the Gaussians, got {total_steps}"
                              " (config key finetune.steps)")
        v0 = variances.detach().to(DTYPE)
        self.cfg, self.total_steps = cfg, int(total_steps)
        self.vmin, self.vmax = _bounds(v0, cfg.gd_vmin, cfg.gd_vmax)
        p0 = (v0 - self.vmin) / (self.vmax - self.vmin)
        self.mu = means.detach().to(DTYPE).clone().requires_grad_(cfg.learn != "var")
        self.theta = torch.log(p0 / (1 - p0)).requires_grad_(cfg.learn != "mean")
        self._opt = self._optimizer()

    # -- the parameters ------------------------------------------------------------------------
    @property
    def params(self) -> list[Tensor]:
        return [t for t in (self.mu, self.theta) if t.requires_grad]

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=self.cfg.lr)
        return torch.optim.SGD(self.params, lr=self.cfg.lr)

    @property
    def means(self) -> Tensor:
        return self.mu

    @property
    def variances(self) -> Tensor:
        """``vmin + (vmax - vmin) sigmoid(theta)``: differentiable, strictly inside the bounds."""
        return self.vmin + (self.vmax - self.vmin) * torch.sigmoid(self.theta)

    @property
    def num_classes(self) -> int:
        return int(self.mu.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mu.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> JointGaussianPrior:
        """Moves the parameters (before the first step: the optimiser is rebuilt on them); float64 stays."""
        dev = torch.device(device) if device is not None else self.mu.device
        if dev == self.mu.device:
            return self
        if self._opt.state:
            raise RuntimeError("JointGaussianPrior.to: move the prior before training starts")
        self.mu = self.mu.detach().to(dev).requires_grad_(self.mu.requires_grad)
        self.theta = self.theta.detach().to(dev).requires_grad_(self.theta.requires_grad)
        self._opt = self._optimizer()
        return self

    # -- what the training loop calls --------------------------------------------------------------
    def log_prob(self, z: Tensor, y: Tensor) -> Tensor:
        """``log N(z_b; mu_{y_b}, v_{y_b})`` ``[B]``, differentiable in the flow's latents and in ``(mu, theta)``."""
        return _gaussian_log_prob(z, y, self.mu, self.variances)

    def penalty(self) -> Tensor:
        """Eq. 4's separation term divided by ``K`` (:func:`separation`), added to the flow's NLL."""
        return separation(self.mu, self.variances, lam=float(self.cfg.lam), alpha=self.cfg.alpha, pi=self.cfg.pi)

    def zero_grad(self) -> None:
        self._opt.zero_grad(set_to_none=True)

    def sync_grads(self) -> None:
        """Average the Gaussians' gradients over the ranks (DDP averages the flow's; these live outside it)."""
        if ddp.is_distributed():
            for p in self.params:
                if p.grad is not None:
                    p.grad.copy_(ddp.all_reduce_mean(p.grad))

    def grad_norm(self) -> Tensor:
        """Norm of the Gaussians' gradient (non-finite when any component is: the step is then skipped)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros((), dtype=DTYPE, device=self.mu.device)
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))

    def lr(self, step: int) -> float:
        """The policy's learning rate at optimiser step ``step`` (0-based) of ``total_steps``."""
        return lr_at(min(step, self.total_steps), self.total_steps, self.cfg.lr, self.cfg.policy)

    def step(self, step: int) -> None:
        """One gradient step on ``(mu, theta)`` at the policy's learning rate for ``step``."""
        for group in self._opt.param_groups:
            group["lr"] = self.lr(step)
        self._opt.step()

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        """``{"means", "variances"}`` in float32: a :class:`nfpi.density.ClassGaussianPrior` state, as
        :meth:`nfpi.density.ClassGaussianPrior.from_solution` would store it (the flow runs in float32)."""
        with torch.no_grad():
            return {"means": self.mu.detach().to(torch.float32).clone(),
                    "variances": self.variances.detach().to(torch.float32).clone()}

    def resume_state(self) -> dict[str, Any]:
        """:meth:`state_dict` plus the raw float64 parameters and the optimiser state (exact resume)."""
        return {**self.state_dict(), "joint_mu": self.mu.detach().clone(), "joint_theta": self.theta.detach().clone(),
                "joint_optimizer": self._opt.state_dict()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`resume_state` saved (resume and rollback)."""
        missing = [k for k in ("joint_mu", "joint_theta", "joint_optimizer") if k not in state]
        if missing:
            raise KeyError(f"the resume state has no joint Gaussians ({missing}): it was not written by a gd_joint run")
        with torch.no_grad():
            self.mu.copy_(state["joint_mu"].to(self.mu.device))
            self.theta.copy_(state["joint_theta"].to(self.theta.device))
        self._opt.load_state_dict(state["joint_optimizer"])

    def spec(self) -> dict[str, Any]:
        """What changes the trajectory besides the start Gaussians: the resume fingerprint holds it."""
        return {**dataclasses.asdict(self.cfg), "lam": float(self.cfg.lam), "total_steps": self.total_steps,
                "vmin": self.vmin, "vmax": self.vmax}

    def __repr__(self) -> str:
        return (f"JointGaussianPrior(K={self.num_classes}, D={self.dim}, policy={self.cfg.policy}, "
                f"lr0={self.cfg.lr:g}, T={self.total_steps})")


def initial_gaussians(stats: ClassStats, spec: dict[str, Any]) -> FPIResult:
    """The ``solve`` stage for a ``gdjoint_*`` setting: the Gaussians the joint descent starts from.

    The class data means, and the data variances (``init: data``) or unit variances (``init:
    identity``), of the pretrained flow's training latents: the same start as NFPI and the converged
    GD (the paper initialises every method there).  Nothing is optimised here; fine-tuning does it.
    """
    cfg = JointGDConfig.from_spec(spec)
    if cfg.lam == "auto":
        raise ConfigError("gd_joint: lam: auto: pass the lambda the NFPI setting's path chose (the solve stage's "
                          "--lam-from does)")
    means = stats.mean.clone()
    # a class whose latents are constant in a coordinate has variance 0 there: floored, as the FPI's start is
    variances = torch.ones_like(means) if cfg.init == "identity" else stats.var.clamp_min(1e-12)
    settings = {"solver": "gd_joint", **dataclasses.asdict(cfg), "lam": float(cfg.lam)}
    return FPIResult(means, variances, 0, True, "joint", [], settings,
                     f"start of the joint descent ({cfg.policy}): the Gaussians are trained with the flow in finetune")


def joint_prior(start: Any, spec: dict[str, Any], record: dict[str, Any], total_steps: int) -> JointGaussianPrior:
    """The trainable prior of a ``gdjoint_*`` fine-tuning, from the start Gaussians the solve stage wrote.

    ``lam: auto`` takes the lambda of the solve record (the NFPI setting's choice, via ``--lam-from``).
    """
    if spec.get("lam") == "auto":
        spec = {**spec, "lam": float(record["lam"])}
    return JointGaussianPrior(start.means, start.variances, JointGDConfig.from_spec(spec), total_steps)
