"""The relaxed fixed-point loop every FPI variant shares: step control, divergence detection (spec
"Fixed-point iteration": the plain iteration of Proposition 1 diverges for large ``c``, so the solver
detects it and offers safeguards).

A variant (:mod:`nfpi.fpi.diagonal`, :mod:`nfpi.fpi.full`) supplies four callables (the map ``T`` at an
iterate, the relaxed step, the whitened residual, the bound test) and :func:`_drive` runs them under the
step-control keys of :class:`~nfpi.fpi.FPIConfig`.  Private: the public entry points are the solvers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nfpi.fpi.config import FPIConfig
from nfpi.fpi.objectives import pair_lambda_limit
from nfpi.fpi.result import FPIDivergenceError
from nfpi.progress import progress

__all__: list[str] = []

# one logger for the whole solver package: its progress and warnings read "nfpi.fpi" as before the split
log = logging.getLogger("nfpi.fpi")


@dataclass(frozen=True)
class _Eval:
    """The fixed-point map at one iterate, plus what step control needs."""

    means: torch.Tensor  #: T(mu)
    variances: torch.Tensor  #: T(v) (NaN where A <= 0 with split="paper")
    nll: float  #: data term of Eq. 4 at the iterate
    kl: torch.Tensor | None  #: [K, K] pairwise KL at the iterate (None when lam = 0)
    pi_value: torch.Tensor | None  #: the normaliser evaluated at the iterate
    c: float  #: lam / (K(K-1))
    alpha: float

    def objective(self, pi_value: torch.Tensor | None = None) -> float:
        """Eq. 4 at the iterate, with ``pi`` held at ``pi_value`` (default: its own value)."""
        if self.kl is None:
            return self.nll
        pv = self.pi_value if pi_value is None else pi_value
        e = torch.exp(-self.kl / (pv * self.alpha)).fill_diagonal_(0.0)
        return self.nll + self.c * float(e.sum())


@dataclass
class _Anderson:
    """Anderson acceleration (type II; Walker & Ni 2011, SIAM J. Numer. Anal. 49(4)) of a fixed-point map ``T``.

    The iterate is written as a vector ``u``; ``coords`` gives, at an iterate ``x``, the coordinates ``g`` of
    ``T(x)`` and the residual ``f = (g - u) w`` weighted as the solver's whitened residual.  From the last
    ``memory + 1`` iterates it proposes ``u' = g_k - dG gamma`` with ``gamma = argmin |f_k - dF gamma|``
    (``f = (g - u) w``; ``dF``, ``dG`` the differences of consecutive ``f``, ``g``): the combination of the
    recent map values whose linearised residual is smallest.  On a linearly converging iteration (rate
    close to 1, as Prop. 1's at large lambda) this needs a fraction of the plain iteration's steps.  It only
    *proposes*: :func:`_drive` evaluates ``T`` at the proposal and keeps it under the same acceptance test as
    a relaxed step, so the fixed point and its certificate (residual <= tol) are the plain iteration's.
    """

    memory: int  #: number of differences kept (m); 0 would be the plain iteration
    coords: Callable[[Any, _Eval], tuple[np.ndarray, np.ndarray]]  #: (g, f) of an iterate, flat float64
    point: Callable[[torch.Tensor, Any], Any]  #: the iterate of coordinates u (the second argument: the last iterate)
    _g: list[np.ndarray] = field(default_factory=list)  #: map values g of the recorded iterates
    _f: list[np.ndarray] = field(default_factory=list)  #: their weighted residuals f
    _dg: list[np.ndarray] = field(default_factory=list)  #: differences of consecutive g (at most memory)
    _df: list[np.ndarray] = field(default_factory=list)  #: differences of consecutive f
    _x: Any = None

    def push(self, x: Any, ev: _Eval) -> None:
        """Record an accepted iterate and its map value (differences beyond ``memory`` are dropped)."""
        g, f = self.coords(x, ev)
        if self._f:
            self._dg.append(g - self._g[-1])
            self._df.append(f - self._f[-1])
            del self._dg[:-self.memory], self._df[:-self.memory]
        self._g[:], self._f[:], self._x = [g], [f], x

    def reset(self) -> None:
        """Forget the differences (after a rejected proposal: the history misled the model); keep the last iterate."""
        self._dg.clear()
        self._df.clear()

    def propose(self) -> Any | None:
        """The accelerated next iterate, or None while no difference is recorded.

        The least-squares problem is m x m (normal equations of the differences scaled to unit norm, a
        ridge of 1e-14 against near-parallel ones); numpy, because at this size torch's per-call overhead would cost
        more than the solve.
        """
        if not self._df:
            return None
        df = np.array(self._df)  # [m, n]
        scale = np.sqrt(np.einsum("ij,ij->i", df, df)) + 1e-300  # unit rows: the Gram matrix's condition improves
        df /= scale[:, None]
        gram = df @ df.T
        gram.flat[:: len(gram) + 1] += 1e-14
        try:
            gamma = np.linalg.solve(gram, df @ self._f[-1]) / scale
        except np.linalg.LinAlgError:
            return None
        u = self._g[-1] - gamma @ np.array(self._dg)
        return self.point(torch.from_numpy(u), self._x) if bool(np.isfinite(u).all()) else None


def _check_common(cfg: FPIConfig) -> None:
    """The objective's keys, checked before any work (each error names its config key)."""
    lam, alpha, pi, learn = cfg.lam, cfg.alpha, cfg.pi, cfg.learn
    if lam == "auto":
        raise ValueError("fpi.lam: auto chooses lambda on validation latents: call nfpi.lampath.solve_path "
                         "(the solve stage does, given --val-latents)")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be finite and >= 0, got {lam} (config key fpi.lam)")
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be > 0, got {alpha} (config key fpi.alpha)")
    if pi not in ("mean", "pair"):
        raise ValueError(f"pi must be 'mean' or 'pair', got {pi!r} (config key fpi.pi)")
    if learn not in ("both", "mean", "var"):
        raise ValueError(f"learn must be 'both', 'mean' or 'var', got {learn!r} (config key fpi.learn)")


def _suggestion(lam: float, pi: str, step_control: str, num_classes: int = 0, alpha: float = 1.0) -> str:
    tips = [f"lower lam (e.g. lam={lam / 10:g})"]
    if step_control == "none":
        tips.append("use step_control='backtrack'")
    if pi == "pair":
        limit = pair_lambda_limit(num_classes, alpha) if num_classes else float("nan")
        tips.append(
            f"with pi='pair' keep lam below about K*alpha*exp(1/alpha)/2 = {limit:.3g} (variances grow without "
            "bound above it), or use pi='mean'"
        )
    else:
        tips.append("raise alpha")
    tips.append("or learn='mean'")
    return "; ".join(tips)


def _divergence(
    *,
    reason: str,
    lam: float,
    pi: str,
    step_control: str,
    iteration: int,
    history: list[dict[str, float]],
    on_divergence: str,
    num_classes: int = 0,
    alpha: float = 1.0,
) -> str:
    trend = [h["residual"] for h in history[-6:]]
    msg = (
        f"FPI diverged at iteration {iteration} (lam={lam:g}, pi={pi!r}): {reason}; residual trend "
        f"{['%.3g' % r for r in trend]}. Suggestion: {_suggestion(lam, pi, step_control, num_classes, alpha)}."
    )
    if on_divergence == "raise":
        raise FPIDivergenceError(msg, lam=lam, iteration=iteration, residuals=trend)
    if on_divergence != "flag":
        raise ValueError(f"on_divergence must be 'raise' or 'flag', got {on_divergence!r} (config key fpi.on_divergence)")
    log.warning(msg)
    return msg


# Long (107 lines) because it is the one driver every FPI variant shares: step control, backtracking, bound
# patience and the divergence guard act on the same loop state; split, they would pass that state around.
def _drive(
    x0: tuple[torch.Tensor, torch.Tensor],
    evaluate: Any,
    relax: Any,
    residual: Any,
    at_bound: Any,
    o: FPIConfig,
    accel: _Anderson | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], int, str, str, list[dict[str, float]]]:
    """Relaxed fixed-point loop with step control and divergence detection (both solvers).

    A relaxed step ``x + s (T(x) - x)`` is accepted when it lowers the fixed-point residual or
    the objective with ``pi`` held at the current iterate (the update direction is a descent
    direction of that objective, docs/method.md, so a small enough ``s`` always qualifies away
    from a stationary point).  ``step_control="none"`` accepts every finite step (``s = 1``).

    With ``accel`` (:class:`_Anderson`) each iteration first tries the accelerated proposal under the same
    test; a rejected proposal counts as one backtrack (one map evaluation), clears the acceleration's
    history and the relaxed step is tried as without it.  The history then marks accelerated steps
    (``"anderson": 1``).  Without ``accel`` the loop is unchanged (same iterates, same history).
    """
    lam, pi, alpha = float(o.lam), o.pi, o.alpha  # lam "auto" never gets here: _check_common refuses it
    if o.step_control not in ("backtrack", "none"):
        raise ValueError(f"step_control must be 'backtrack' or 'none', got {o.step_control!r} (config key fpi.step_control)")
    if o.on_divergence not in ("raise", "flag"):
        raise ValueError(f"on_divergence must be 'raise' or 'flag', got {o.on_divergence!r} (config key fpi.on_divergence)")
    x = x0
    ev = evaluate(x)
    res = residual(x, ev)
    obj = ev.objective()
    history: list[dict[str, float]] = [{"objective": obj, "residual": res, "step": 0.0, "backtracks": 0.0}]

    def fail(reason: str, it: int) -> str:
        return _divergence(reason=reason, lam=lam, pi=pi, step_control=o.step_control, iteration=it,
                           history=history, on_divergence=o.on_divergence, num_classes=int(x0[0].shape[0]),
                           alpha=alpha)  # fmt: skip

    if not math.isfinite(res):
        return x, 0, "diverged", fail("the first update is not finite (A <= 0 in Eq. 6?)", 0), history
    best, step, bound_run = res, float(o.step_init), 0
    if accel is not None:
        accel.push(x, ev)
    # a bar on a terminal, rate-bounded log lines otherwise (nfpi.progress); every return closes it
    with progress(total=o.max_iter, desc=f"FPI lam={lam:g} pi={pi}", unit="it", logger=log) as bar:
        for it in range(1, o.max_iter + 1):
            if res <= o.tol:
                return x, it - 1, "converged", f"residual {res:.3g} <= tol {o.tol:g}", history
            backtracks, jumped = 0, False
            # no acceleration at a variance bound: the plain steps there are what the bound-patience test reads
            cand = accel.propose() if accel is not None and bound_run == 0 else None
            if cand is not None:  # the accelerated proposal, under the relaxed step's acceptance test
                ev_new = evaluate(cand)
                res_new = residual(cand, ev_new)
                # stricter than a relaxed step: the residual must fall *and* the objective (pi held) must not
                # rise beyond rounding, so acceleration cannot trade one against the other and cycle
                jumped = (math.isfinite(res_new) and res_new < res
                          and ev_new.objective(ev.pi_value) <= obj + 1e-12 * abs(obj))
                if jumped:
                    x_new, accepted = cand, True
                else:
                    backtracks = 1
                    accel.reset()
            while not jumped:
                x_new = relax(x, ev, step)
                ev_new = evaluate(x_new)
                res_new = residual(x_new, ev_new)
                if o.step_control == "none":
                    accepted = math.isfinite(res_new)
                    break
                if math.isfinite(res_new) and (res_new < res or ev_new.objective(ev.pi_value) <= obj):
                    accepted = True
                    break
                backtracks += 1
                step *= o.step_shrink
                if backtracks > o.max_backtracks or step < o.step_min:
                    accepted = False
                    break
            if not accepted:
                history.append({"objective": float("nan"), "residual": res_new, "step": step, "backtracks": float(backtracks)})
                reason = (
                    "the update is not finite"
                    if o.step_control == "none"
                    else f"no relaxation step >= {o.step_min:g} lowers the residual or the objective"
                )
                return x, it - 1, "diverged", fail(reason, it), history
            x, ev, res, obj = x_new, ev_new, res_new, ev_new.objective()
            history.append({"objective": obj, "residual": res, "step": step, "backtracks": float(backtracks)})
            if accel is not None:
                accel.push(x, ev)
                history[-1]["anderson"] = float(jumped)
            bar.update()
            bar.set(residual=res, step=step)
            best = min(best, res)
            if res > o.divergence_factor * best:
                return x, it, "diverged", fail(f"residual grew to {res:.3g}, {o.divergence_factor:g}x its best {best:.3g}", it), history
            bound_run = bound_run + 1 if at_bound(x) else 0
            if bound_run >= o.bound_patience:
                return x, it, "diverged", fail(
                    f"variances pinned at the bounds for {bound_run} iterations (objective unbounded?)", it
                ), history  # fmt: skip
            if o.step_control == "backtrack":
                step = min(1.0, step * o.step_grow)
    if res <= o.tol:
        return x, o.max_iter, "converged", f"residual {res:.3g} <= tol {o.tol:g}", history
    msg = f"reached max_iter={o.max_iter} with residual {res:.3g} > tol {o.tol:g}"
    log.warning("FPI (lam=%g, pi=%s): %s", lam, pi, msg)
    return x, o.max_iter, "max_iter", msg, history
