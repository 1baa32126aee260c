"""Baseline 2 as the paper runs it (nfpi.joint_gd): the Gaussians trained by GD with the flow.

Properties: the joint objective is Eq. 4 / K (nfpi.fpi.objective) plus Gaussian-independent terms on
equal-size classes (float64); joint descent lowers it under every learning-rate policy, with the
flow moving too; the variances stay strictly inside the sigmoid's bounds; through the real training
loop the joint parameters are part of the resume state (a crashed and resumed run is bit-identical)
and of the fingerprint (another policy starts fresh); the solve and finetune stages run a
``gd_joint`` setting end to end; the setting family is behind ``experiments.gd_joint``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpi.stages import finetune, solve
from nfpi.checkpoint import load_checkpoint
from nfpi.config import ConfigError, from_mapping
from nfpi.density import ClassGaussianPrior, load_gaussians
from nfpi.experiments import settings_from_config, table_settings
from nfpi.flows import FlowConfig, build_flow
from nfpi.fpi import LR_POLICIES, ClassStats, objective, pairwise_kl, pi_normaliser
from nfpi.joint_gd import JointGaussianPrior, JointGDConfig, initial_gaussians, joint_objective, separation
from nfpi.training import TrainConfig, load_trained_flow, resume_path, train_flow
from test_training import CrashingDataset, make_data
from tinyflow import tiny_pretrained, train_latents

torch.set_num_threads(1)

POLICIES = sorted(LR_POLICIES)
K, SHAPE = 3, (1, 8, 8)
FLOW = from_mapping(FlowConfig, {"preset": "digits", "hidden": 8, "steps": 1})


def _balanced(n_per: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(K).repeat_interleave(n_per)
    z = torch.randn(K * n_per, d, generator=g, dtype=torch.float64) + 2.0 * y[:, None].double()
    return z, y


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), lam=st.floats(0.0, 500.0), alpha=st.floats(0.2, 5.0), pi=st.sampled_from(["mean", "pair"]))
def test_joint_objective_is_eq4_over_k_on_equal_classes(seed: int, lam: float, alpha: float, pi: str) -> None:
    z, y = _balanced(7, 5, seed)
    g = torch.Generator().manual_seed(seed + 1)
    means = torch.randn(K, 5, generator=g, dtype=torch.float64)
    variances = torch.rand(K, 5, generator=g, dtype=torch.float64) + 0.3
    logdet = torch.randn(len(y), generator=g, dtype=torch.float64)
    j = joint_objective(z, logdet, y, means, variances, lam=lam, alpha=alpha, pi=pi)
    eq4 = objective(means, variances, ClassStats.from_latents(z, y, K), lam=lam, alpha=alpha, pi=pi)
    expected = eq4 / K + 0.5 * 5 * math.log(2 * math.pi) - logdet.mean()
    torch.testing.assert_close(j.total, expected, rtol=1e-12, atol=1e-10)
    assert float(separation(means, variances, lam=0.0, alpha=alpha, pi=pi)) == 0.0


def _tiny_flow() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_flow(FLOW, SHAPE).double()


def _images(n_per: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(K).repeat_interleave(n_per)
    x = (torch.rand(len(y), *SHAPE, generator=g, dtype=torch.float64) * 0.4 + 0.25 * y.view(-1, 1, 1, 1).double()) - 0.5
    return x, y


def _pi(prior: JointGaussianPrior, pi: str = "mean") -> torch.Tensor:
    """The normaliser at the prior's current point (what the next step holds fixed: the lagged pi)."""
    with torch.no_grad():
        return pi_normaliser(pairwise_kl(prior.means, prior.variances), pi)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("learn", ["both", "mean"])
def test_joint_descent_lowers_eq4_under_every_policy(policy: str, learn: str) -> None:
    """Full-batch steps of the flow (Adam) and the Gaussians (Adam under the policy) lower
    J = Eq. 4 / K + flow terms at every step, with pi held at the step's start (the lagged pi the
    gradient is taken with, as in the FPI), and lower it from start to end."""
    x, y = _images()
    flow = _tiny_flow()
    with torch.no_grad():
        flow.data_init(x)
        z0, _ = flow(x)
    stats = ClassStats.from_latents(z0.detach(), y, K)
    cfg = JointGDConfig(lam=50.0, learn=learn, init="data", policy=policy, lr=0.02)
    start = initial_gaussians(stats, {**vars(cfg)})
    prior = JointGaussianPrior(start.means, start.variances, cfg, total_steps=25)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def value(pi_value: torch.Tensor | None = None) -> float:
        with torch.no_grad():
            z, ld = flow(x)
            return float(joint_objective(z, ld, y, prior.means, prior.variances, lam=50.0, alpha=1.0, pi="mean",
                                         pi_value=pi_value).total)

    before, v0 = value(), prior.variances.detach().clone()
    for t in range(25):
        pv = _pi(prior)
        j0 = value(pv)
        z, ld = flow(x)
        loss = -(prior.log_prob(z, y) + ld).mean()
        opt.zero_grad()
        prior.zero_grad()
        (loss + prior.penalty()).backward()
        opt.step()
        prior.step(t)
        assert value(pv) < j0, (policy, t)
    assert value() < before, policy
    v = prior.variances.detach()
    assert bool(torch.isfinite(v).all()) and bool((v > prior.vmin).all()) and bool((v < prior.vmax).all())
    if learn == "mean":
        torch.testing.assert_close(v, v0, rtol=0, atol=0)  # learn: mean keeps the variances
    else:
        assert not torch.equal(v, v0)
    assert prior.lr(0) == pytest.approx(0.02) and prior.lr(25) == 0.0


@pytest.mark.parametrize("pi", ["mean", "pair"])
def test_fixed_flow_gaussian_steps_lower_eq4(pi: str) -> None:
    """With the flow fixed the joint descent is GD on Eq. 4 itself: every step of every policy lowers
    nfpi.fpi.objective with pi held at the step's start.  (With pi re-evaluated, Eq. 4 can rise: the
    repulsion is scale-invariant in the KLs under pi = mean, so pushing the means apart does not lower
    it while the NLL grows; docs/method.md.)"""
    z, y = _balanced(10, 4, 3)
    stats = ClassStats.from_latents(z, y, K)
    for policy in POLICIES:
        cfg = JointGDConfig(lam=200.0, pi=pi, policy=policy, lr=0.05)
        start = initial_gaussians(stats, vars(cfg))
        prior = JointGaussianPrior(start.means, start.variances, cfg, total_steps=40)
        for t in range(40):
            pv = _pi(prior, pi)
            with torch.no_grad():
                e0 = float(objective(prior.means, prior.variances, stats, lam=200.0, pi=pi, pi_value=pv))
            prior.zero_grad()
            (-(prior.log_prob(z, y)).mean() + prior.penalty()).backward()
            prior.step(t)
            with torch.no_grad():
                e1 = float(objective(prior.means, prior.variances, stats, lam=200.0, pi=pi, pi_value=pv))
            assert e1 < e0, (policy, t)


def test_variance_bounds_hold_under_a_huge_step() -> None:
    z, y = _balanced(5, 3, 0)
    stats = ClassStats.from_latents(z, y, K)
    cfg = JointGDConfig(lam=1e4, lr=50.0, optimizer="sgd", policy="sublinear_v2")
    start = initial_gaussians(stats, vars(cfg))
    prior = JointGaussianPrior(start.means, start.variances, cfg, total_steps=5)
    for t in range(5):
        prior.zero_grad()
        (-(prior.log_prob(z * 100, y)).mean() + prior.penalty()).backward()
        prior.step(t)
    v = prior.variances.detach()
    assert bool(torch.isfinite(v).all()) and float(v.min()) >= prior.vmin and float(v.max()) <= prior.vmax
    assert float(v.min()) > 0
    ClassGaussianPrior.from_state_dict(prior.state_dict())  # a valid prior for every later stage


def test_bad_options_are_named() -> None:
    with pytest.raises(ConfigError, match="gd.lr"):
        JointGDConfig(lr=0.0)
    with pytest.raises(ConfigError, match="gd.gd_vmin"):
        JointGaussianPrior(torch.zeros(2, 3), torch.ones(2, 3), JointGDConfig(gd_vmin=2.0), total_steps=3)
    with pytest.raises(ConfigError, match="finetune.steps"):
        JointGaussianPrior(torch.zeros(2, 3), torch.ones(2, 3), JointGDConfig(), total_steps=0)


# ------------------------------------------------------------------------------------------------
# through the real training loop (float32 flow): resume and fingerprint


def _joint(policy: str = "linear", steps: int = 7) -> JointGaussianPrior:
    g = torch.Generator().manual_seed(5)
    return JointGaussianPrior(torch.randn(K, 64, generator=g), torch.rand(K, 64, generator=g) + 0.5,
                              JointGDConfig(lam=100.0, policy=policy, lr=0.05), total_steps=steps)


def _train(out: Path, prior: JointGaussianPrior, data=None, steps: int = 7):
    torch.manual_seed(1)
    flow = build_flow(FLOW, SHAPE)
    c = TrainConfig(steps=steps, batch_size=8, warmup_steps=3, log_every=2, checkpoint_every=3, device="cpu",
                    init_size=32)
    res = train_flow(flow, data if data is not None else make_data(), prior, c, out_path=out,
                     config_record={"flow": {"preset": "digits", "hidden": 8, "steps": 1}, "image_shape": list(SHAPE)})
    return flow, res


def test_resumed_joint_run_is_bit_identical(tmp_path: Path) -> None:
    full_prior = _joint()
    full, _ = _train(tmp_path / "full" / "flow.pt", full_prior)
    with pytest.raises(KeyboardInterrupt):  # fetch 0: fingerprint sample, 1: data init; dies at step 5's batch
        _train(tmp_path / "crash" / "flow.pt", _joint(), data=CrashingDataset(make_data(), crash_at=1 + 5))
    state = load_checkpoint(resume_path(tmp_path / "crash" / "flow.pt"))
    assert state["step"] == 3 and "joint_mu" in state["gaussians"] and state["gaussians"]["joint_optimizer"]["state"]
    resumed_prior = _joint()
    resumed, res = _train(tmp_path / "crash" / "flow.pt", resumed_prior)
    assert res.resumed_from == 3
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert torch.equal(full_prior.mu, resumed_prior.mu) and torch.equal(full_prior.theta, resumed_prior.theta)
    a, b = load_checkpoint(tmp_path / "full" / "flow.pt"), load_checkpoint(tmp_path / "crash" / "flow.pt")
    assert a["gaussians"].keys() == {"means", "variances"}  # the final checkpoint holds a plain prior
    for k in ("means", "variances"):
        assert torch.equal(a["gaussians"][k], b["gaussians"][k])
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    # the Gaussians moved with the flow
    assert not torch.equal(a["gaussians"]["means"], _joint().state_dict()["means"])


def test_another_policy_or_length_does_not_resume(tmp_path: Path) -> None:
    out = tmp_path / "flow.pt"
    _train(out, _joint("linear", steps=4), steps=4)
    _, res = _train(out, _joint("superlinear_v2", steps=4), steps=4)
    assert res.resumed_from == 0
    _, res = _train(out, _joint("superlinear_v2", steps=6), steps=6)  # T of the policy changed
    assert res.resumed_from == 0


# ------------------------------------------------------------------------------------------------
# the stages and the experiments switch


def test_solve_and_finetune_stages_run_a_joint_setting(tmp_path: Path) -> None:
    data, pre = tiny_pretrained(tmp_path)
    lat = train_latents(data, pre, tmp_path / "train.parquet")
    spec = {"method": "gd_joint", "lam": 20.0, "learn": "mean", "init": "identity", "policy": "superlinear_v1",
            "lr": 0.05, "optimizer": "adam"}
    g = tmp_path / "g.pt"
    solve.main(["--config", json.dumps({"setting": spec}), "--latents", str(lat), "--data-dir", str(data),
                "--out", str(g), "--out-json", str(tmp_path / "g.json")])
    rec = json.loads((tmp_path / "g.json").read_text())
    assert rec["status"] == "joint" and rec["lam"] == 20.0
    out = tmp_path / "ft.pt"
    train = {"steps": 6, "batch_size": 16, "warmup_steps": 1, "checkpoint_every": 3, "log_every": 2, "rounds": 2}
    finetune.main(["--config", json.dumps({"train": train, "setting": spec}), "--data-dir", str(data), "--init", str(pre),
                   "--gaussians", str(g), "--out", str(out), "--metrics", str(tmp_path / "ft.json")])
    m = json.loads((tmp_path / "ft.json").read_text())
    assert [r["steps"] for r in m["rounds"]] == [6]  # one round: the Gaussians train at every step
    start, _ = load_gaussians(g)
    final = load_trained_flow(out).prior
    assert not torch.allclose(final.means, start.means)
    assert torch.equal(final.variances, start.variances)  # learn: mean, identity covariance


def _config(**exp) -> dict:
    import yaml

    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())
    cfg["experiments"].update(exp)
    return cfg


def test_experiments_switch_adds_the_joint_rows_to_table1() -> None:
    assert not any(s.startswith("gdjoint_") for s in settings_from_config(_config()))  # default: off
    cfg = _config(gd_joint=True, gd_policies=["linear", "sublinear_v2"])
    rows = table_settings(cfg)["table1"]
    assert rows == ["baseline1", "gd_linear", "gd_sublinear_v2", "gdjoint_linear", "gdjoint_sublinear_v2", "nfpi"]
    s = settings_from_config(cfg)
    assert s["gdjoint_linear"].spec["method"] == "gd_joint" and "steps" not in s["gdjoint_linear"].spec
    assert "converged" in s["gd_linear"].label and "joint" in s["gdjoint_linear"].label
    assert s["gdjoint_linear"].spec["lam"] == s["nfpi"].spec["lam"]  # the same Eq. 4 as NFPI


def test_gd_joint_needs_table1(tmp_path: Path) -> None:
    from nfpi.validation import check_config

    cfg = _config(gd_joint=True, table1=False)
    with pytest.raises(ConfigError, match="experiments.gd_joint"):
        check_config(cfg)


def test_lam_auto_takes_the_lambda_of_the_solve_record() -> None:
    """Under fpi.lam: auto the joint descent minimises Eq. 4 at the lambda the NFPI setting's path chose."""
    from nfpi.joint_gd import joint_prior

    start = ClassGaussianPrior(torch.zeros(K, 4), torch.ones(K, 4))
    prior = joint_prior(start, {"method": "gd_joint", "lam": "auto", "policy": "linear", "steps": 2000},
                        {"lam": 7.0}, total_steps=10)
    assert prior.cfg.lam == 7.0 and prior.spec()["total_steps"] == 10
    with pytest.raises(ConfigError, match="lam: auto"):
        JointGaussianPrior(start.means, start.variances, JointGDConfig(lam="auto"), total_steps=3)
