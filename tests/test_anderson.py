"""Tests for the Anderson-accelerated FPI (``solve_fpi_from_stats(..., anderson=m)``, nfpi.fpi.step_control).

float64 throughout.  Properties: the accelerated solve stops on the plain map's residual, so its result is a
stationary point of Eq. 4 and the plain iteration's fixed point to the solver tolerance; it takes fewer
map evaluations where the plain iteration converges slowly; on a linear map with enough memory it finds
the fixed point exactly (Anderson mixing is GMRES there); the plain iteration (``anderson=0``, the
default) is unchanged and records nothing new; it reaches the plain iteration's verdict (converged or
diverged) on the same problems.
"""

from __future__ import annotations

import math

import pytest
import torch

from nfpi.fpi import ClassStats, FPIConfig, objective, pairwise_kl, pi_normaliser, solve_fpi_from_stats
from nfpi.fpi.step_control import _Anderson, _Eval

F64 = torch.float64


def make_stats(k: int, d: int, seed: int, sep: float = 1.0, n: int = 40) -> ClassStats:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=F64) * sep
    scales = 0.3 + 2 * torch.rand(k, d, generator=g, dtype=F64)
    y = torch.arange(k).repeat_interleave(n)
    z = centers[y] + torch.randn(k * n, d, generator=g, dtype=F64) * scales[y]
    return ClassStats.from_latents(z, y, k)


def grad_norm(stats: ClassStats, mu: torch.Tensor, v: torch.Tensor, cfg: FPIConfig) -> float:
    """Norm of the gradient of Eq. 4 (pi held at the point) in the learned parameters."""
    mu = mu.clone().requires_grad_(True)
    v = v.clone().requires_grad_(True)
    pv = pi_normaliser(pairwise_kl(mu.detach(), v.detach()), cfg.pi)
    loss = objective(mu, v, stats, lam=float(cfg.lam), alpha=cfg.alpha, pi=cfg.pi, pi_value=pv)
    gm, gv = torch.autograd.grad(loss, [mu, v])
    parts = ([gm.flatten()] if cfg.learn != "var" else []) + ([gv.flatten()] if cfg.learn != "mean" else [])
    return float(torch.cat(parts).norm())


def whitened_distance(a: torch.Tensor, va: torch.Tensor, b: torch.Tensor, vb: torch.Tensor) -> float:
    dm = ((a - b).abs() / torch.sqrt(torch.minimum(va, vb))).max()
    return float(torch.maximum(dm, (va.log() - vb.log()).abs().max()))


def evaluations(history: list[dict[str, float]]) -> int:
    return len(history) + int(sum(h["backtracks"] for h in history[1:]))


# (K, d, lambda, learn, init, seed): identity init with means only (the default config's FPI) up to a
# large lambda where the plain iteration's rate nears 1; learned variances at moderate lambda
CASES = [
    (10, 8, 10.0, "mean", "identity", 0),
    (10, 8, 3000.0, "mean", "identity", 1),
    (6, 5, 20.0, "both", "data", 2),
    (6, 5, 5.0, "var", "data", 3),
    (25, 16, 500.0, "mean", "identity", 4),
]


@pytest.mark.parametrize(("k", "d", "lam", "learn", "init", "seed"), CASES)
@pytest.mark.parametrize("memory", [1, 5])
def test_accelerated_fixed_point_is_the_plain_one_and_stationary(k: int, d: int, lam: float, learn: str, init: str,
                                                                 seed: int, memory: int) -> None:
    st = make_stats(k, d, seed)
    cfg = FPIConfig(lam=lam, learn=learn, init=init, tol=1e-12, max_iter=5000)  # type: ignore[arg-type]
    plain = solve_fpi_from_stats(st, cfg)
    fast = solve_fpi_from_stats(st, cfg, anderson=memory)
    assert plain.status == fast.status == "converged", (plain.message, fast.message)
    # certified as the plain solve is: the plain map's whitened residual at the result is below tol
    assert fast.history[-1]["residual"] <= cfg.tol
    v0 = st.var if init == "data" else torch.ones_like(st.var)
    g0 = grad_norm(st, st.mean, v0, cfg)
    assert grad_norm(st, fast.means, fast.variances, cfg) / g0 < 1e-8
    # the same fixed point to the tolerance: both residuals are below 1e-12, the iteration contracts, so the
    # two iterates are within tol / (1 - rate) of the fixed point; 1e-7 allows a rate of 0.99999
    assert whitened_distance(plain.means, plain.variances, fast.means, fast.variances) < 1e-7
    assert math.isclose(plain.history[-1]["objective"], fast.history[-1]["objective"], rel_tol=1e-10)
    # what moves is what the learn mode says
    if learn == "mean":
        torch.testing.assert_close(fast.variances, v0, rtol=0, atol=0)
    if learn == "var":
        torch.testing.assert_close(fast.means, st.mean, rtol=0, atol=0)
    assert fast.settings["anderson"] == memory
    assert all(h["anderson"] in (0.0, 1.0) for h in fast.history[1:])


def test_acceleration_needs_fewer_map_evaluations_where_the_plain_iteration_is_slow() -> None:
    st = make_stats(10, 8, seed=1)
    cfg = FPIConfig(lam=3000.0, learn="mean", init="identity", tol=1e-10)
    plain = solve_fpi_from_stats(st, cfg)
    fast = solve_fpi_from_stats(st, cfg, anderson=5)
    assert plain.iterations > 50  # slow: the rate of the plain iteration is close to 1 at this lambda
    assert evaluations(fast.history) < 0.5 * evaluations(plain.history)


def test_plain_iteration_is_unchanged_by_default() -> None:
    # anderson=0 is the plain loop: the same iterates as anderson left out, and no new key in the record
    st = make_stats(8, 6, seed=5)
    cfg = FPIConfig(lam=10.0, learn="both", init="data", tol=1e-11)
    a = solve_fpi_from_stats(st, cfg)
    b = solve_fpi_from_stats(st, cfg, anderson=0)
    assert "anderson" not in a.settings and all("anderson" not in h for h in a.history)
    assert a.converged and a.history == b.history and a.iterations == b.iterations
    torch.testing.assert_close(a.means, b.means, rtol=0, atol=0)
    with pytest.raises(ValueError, match="anderson"):
        solve_fpi_from_stats(st, cfg, anderson=-1)


@pytest.mark.parametrize("n", [3, 6])
def test_anderson_on_a_linear_map_finds_its_fixed_point(n: int) -> None:
    # x = A x + b with spectral radius 0.99 (the plain iteration needs thousands of steps): with memory >= n
    # the proposal after n + 1 iterates is the exact fixed point (Anderson mixing = GMRES on linear maps)
    g = torch.Generator().manual_seed(n)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(-0.5, 0.99, n, dtype=F64)) @ q.T
    b = torch.randn(n, generator=g, dtype=F64)
    fixed = torch.linalg.solve(torch.eye(n, dtype=F64) - a, b)

    def ev(x: torch.Tensor) -> _Eval:
        return _Eval(a @ x + b, x, 0.0, None, None, 0.0, 1.0)

    acc = _Anderson(n, coords=lambda x, e: (e.means.numpy().copy(), (e.means - x).numpy()),
                    point=lambda u, last: u.clone())
    x = torch.zeros(n, dtype=F64)
    assert acc.propose() is None  # nothing to mix before the first iterate
    for _ in range(n + 1):
        acc.push(x, ev(x))
        x = ev(x).means  # plain steps: the proposals are only read at the end
    prop = acc.propose()
    assert prop is not None
    assert float((prop - fixed).norm()) < 1e-8 * float(fixed.norm())
    # the plain iterate after as many steps is far from it
    assert float((x - fixed).norm()) > 1e-2 * float(fixed.norm())
    acc.reset()
    assert acc.propose() is None  # reset forgets the differences


@pytest.mark.parametrize(("lam", "learn", "pi", "seed"), [
    (3000.0, "both", "pair", 0),  # above K alpha e^(1/alpha) / 2: the lagged objective is unbounded
    (50.0, "both", "mean", 0),  # a variance runs to the upper bound (an earlier acceptance test cycled here)
    (100.0, "both", "mean", 1),
    (20.0, "both", "mean", 2),  # converges
])
def test_acceleration_keeps_the_plain_iterations_verdict(lam: float, learn: str, pi: str, seed: int) -> None:
    # the path stops at the first diverging lambda: acceleration must not turn a divergence into max_iter
    # (or the reverse), and never returns bad variances
    st = make_stats(10, 8, seed)
    cfg = FPIConfig(lam=lam, pi=pi, learn=learn, on_divergence="flag", max_iter=3000, tol=1e-11)  # type: ignore[arg-type]
    plain = solve_fpi_from_stats(st, cfg)
    fast = solve_fpi_from_stats(st, cfg, anderson=5)
    assert fast.status == plain.status, (plain.message, fast.message)
    assert bool(torch.isfinite(fast.variances).all() and (fast.variances > 0).all())
    if plain.status == "diverged":
        assert fast.iterations < 3 * plain.iterations + 50  # found about as soon, not after max_iter


def test_rejected_proposals_fall_back_to_the_relaxed_step() -> None:
    # a proposal that does not lower the residual (or raises the objective) is a backtrack: the loop then takes
    # the relaxed step as without acceleration and still reaches the plain fixed point
    st = make_stats(10, 8, seed=1, sep=0.3)
    cfg = FPIConfig(lam=1000.0, learn="mean", init="identity", tol=1e-11, max_iter=5000)
    fast = solve_fpi_from_stats(st, cfg, anderson=5)
    plain = solve_fpi_from_stats(st, cfg)
    assert fast.converged and plain.converged
    steps = fast.history[1:]
    rejected = [h for h in steps if h["anderson"] == 0.0 and h["backtracks"] >= 1]
    accepted = [h for h in steps if h["anderson"] == 1.0]
    assert rejected and accepted
    assert all(h["backtracks"] == 0 for h in accepted)  # an accepted proposal cost one evaluation
    assert whitened_distance(plain.means, plain.variances, fast.means, fast.variances) < 1e-7
    assert evaluations(fast.history) < evaluations(plain.history)
