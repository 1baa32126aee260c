"""The solver options: :class:`FPIConfig` (the ``fpi`` config slice) and the NF^GD learning-rate policies.

No torch here: the config schema, the validation and the workflow's DAG import it.  The objective's keys
(``lam``, ``alpha``, ``pi``) are those of Eq. 4 and Eqs. 9-10 (spec "Objective"); the step-control keys are
the safeguards of the spec's "Fixed-point iteration"; the policies are those of "Baseline 2".

    >>> from nfpi.fpi import FPIConfig
    >>> FPIConfig(lam=10.0, pi="pair").max_iter
    500
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = ["FPIConfig", "LambdaPathConfig", "LR_POLICIES", "PolicyName", "PiKind", "LearnKind", "InitKind"]

PiKind = Literal["mean", "pair"]
LearnKind = Literal["both", "mean", "var"]
InitKind = Literal["data", "identity"]
#: The five NF^GD learning-rate policies (spec, Baseline 2): the one place their names are written.
PolicyName = Literal["sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2"]
#: Exponents ``p`` of the policies ``lr(t) = lr0 * (1 - t/T)^p``, in the order of :data:`PolicyName`.
LR_POLICIES: dict[str, float] = dict(zip(get_args(PolicyName), (0.5, 0.25, 1.0, 2.0, 4.0), strict=True))


@dataclass(frozen=True)
class LambdaPathConfig:
    """The lambda path of ``fpi.lam: auto`` (nfpi.lampath): a geometric grid solved by continuation."""

    lam_min: float = 1.0  #: first lambda of the geometric grid
    lam_max: float = 1.0e6  #: last lambda of the grid (the path stops earlier where the FPI diverges or the rule's choice is final)
    points: int = 19  #: grid points from lam_min to lam_max, equally spaced in log lambda (19: three per decade)
    rule: Literal["separation", "largest", "accuracy"] = "separation"  #: how the path chooses lambda (nfpi.lampath)
    separation: float = 2.0  #: rule separation's target for the closest pair: distance / sum of the two class radii
    guard: bool = False  #: rule separation: also stop where the validation NF-Acc of the pretrained latents falls out of tie_tol (it does not predict the fine-tuned NF-Acc)
    tie_tol: float | Literal["se"] = "se"  #: NF-Acc within this of the best is a tie; se: one binomial standard error
    stop_early: bool = True  #: stop where the rule's choice is final (false: solve the whole grid; same choice)
    same_point_tol: float = 1e-4  #: whitened distance under which the warm and the cold fixed point are the same
    predictor: bool = True  #: start each solve from the secant extrapolation of the last two fixed points (else the last one)


@dataclass(frozen=True)
class FPIConfig:
    """The pipeline's ``fpi`` config slice: every solver knob with its default.

    The one source of the solver options: the stage passes it to :func:`nfpi.fpi.solve`, and the public
    solvers (:func:`nfpi.fpi.solve_fpi_from_stats`, ...) take it as ``config`` with keyword overrides
    (``dataclasses.replace``: a misspelt keyword is a ``TypeError`` naming it).
    """

    method: Literal["fpi", "fpi_full", "gd"] = "fpi"  #: diagonal FPI, full-covariance FPI, or NF^GD (Baseline 2)
    lam: float | Literal["auto"] = 100.0  #: lambda of Eq. 4 (0 = Baseline 1); "auto": chosen on validation by the lambda path (fpi.path)
    alpha: float = 1.0  #: alpha of Eq. 3 (temperature of the KLD kernel), roughly 0.1..10
    pi: Literal["mean", "pair"] = "mean"  #: normaliser: Eq. 10 ("mean") or Eq. 9 ("pair")
    learn: Literal["both", "mean", "var"] = "both"  #: Table 3 ablation: which parameters move
    init: Literal["data", "identity"] = "data"  #: data: class mean/variance; identity: class mean, unit variance
    max_iter: int = 500  #: maximum accepted fixed-point iterations
    tol: float = 1e-10  #: stop when the RMS whitened fixed-point residual is below this
    step_control: Literal["backtrack", "none"] = "backtrack"  #: residual backtracking, or the plain iteration
    step_init: float = 1.0  #: first relaxation step (1 = the plain update of Prop. 1)
    step_min: float = 1e-6  #: backtracking below this step means no progress: reported as divergence
    step_shrink: float = 0.5  #: factor applied to the step when the residual does not decrease
    step_grow: float = 2.0  #: factor applied (up to 1) after an accepted step
    max_backtracks: int = 30  #: map evaluations per iteration before giving up
    divergence_factor: float = 1e6  #: residual above this times its best value = divergence
    bound_patience: int = 10  #: variances pinned at a bound this many iterations in a row = divergence
    split: Literal["positive", "paper"] = "positive"  #: how Eq. 6's A and B are split (docs/method.md)
    var_min: float = 1e-10  #: lower variance bound (safeguard); an active bound blocks convergence
    var_max: float = 1e10  #: upper variance bound (safeguard; pi="pair" can push variances up without limit)
    pi_floor: float = 1e-12  #: floor on the normaliser pi (identical classes have KL = 0)
    on_divergence: Literal["raise", "flag"] = "raise"  #: raise FPIDivergenceError, or return status "diverged"
    # --- NF^GD (method = "gd") ---
    policy: PolicyName = "linear"  #: the learning-rate policy of :data:`LR_POLICIES`
    optimizer: Literal["adam", "sgd"] = "adam"  #: GD optimiser
    steps: int = 2000  #: GD steps T
    lr: float = 1e-2  #: GD base learning rate lr0
    gd_vmin: float | None = None  #: sigmoid lower bound; None = 1e-2 x the smallest initial variance
    gd_vmax: float | None = None  #: sigmoid upper bound; None = 1e2 x the largest initial variance
    path: LambdaPathConfig = field(default_factory=LambdaPathConfig)  #: the grid and choice rule of lam: auto
