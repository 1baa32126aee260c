"""Tests for nfpi.density: dequantisation, bits/dim against analytic cases, class Gaussians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from nfpi.density import ClassGaussianPrior, bits_per_dim, flow_nll, postprocess, preprocess
from nfpi.flows import FlowConfig, build_flow


def _prior(k: int = 5, d: int = 7, seed: int = 0, dtype: torch.dtype = torch.float64) -> ClassGaussianPrior:
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=g, dtype=dtype)
    variances = torch.rand(k, d, generator=g, dtype=dtype) * 2 + 0.1
    return ClassGaussianPrior(means, variances)


class _Identity(nn.Module):
    """An identity 'flow' (log-det 0): the density of x is then the prior's."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])


# ------------------------------------------------------------------------------ (de)quantisation
def test_preprocess_range_and_postprocess_roundtrip() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).repeat(8, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    xp = preprocess(x, generator=g)
    assert xp.dtype == torch.float32 and xp.shape == x.shape
    assert xp.min() >= -0.5 and xp.max() < 0.5
    assert torch.equal(postprocess(xp), x)
    # noise is uniform inside each bin: the offset (xp + 0.5) * 256 - k spans [0, 1) with mean 1/2
    frac = (xp.double() + 0.5) * 256 - x.double()
    assert frac.min() >= 0 and frac.max() < 1 and abs(frac.mean().item() - 0.5) < 0.02
    centre = preprocess(x, dequantize=False)
    assert torch.allclose((centre.double() + 0.5) * 256 - x.double(), torch.full((), 0.5, dtype=torch.float64))
    assert torch.equal(postprocess(centre), x)


def test_preprocess_reduced_bits_and_errors() -> None:
    x = torch.tensor([[[[0, 31, 32, 255]]]], dtype=torch.uint8)
    xp = preprocess(x, n_bits=3, dequantize=False)
    assert torch.allclose(xp, (torch.tensor([0.0, 0.0, 1.0, 7.0]) + 0.5) / 8 - 0.5)
    assert torch.equal(postprocess(xp, n_bits=3), torch.tensor([[[[0, 0, 32, 224]]]], dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        preprocess(x.float())
    assert postprocess(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped


def test_bits_per_dim_of_uniform_density_is_n_bits() -> None:
    """p(x) = 1 on the cube [-0.5, 0.5)^D (log p = 0) is the uniform distribution over 2**n bins."""
    for n_bits in (8, 5):
        assert torch.allclose(bits_per_dim(torch.zeros(3), 3072, n_bits), torch.full((3,), float(n_bits)))


def test_bits_per_dim_gaussian_on_uniform_data_matches_analytic() -> None:
    """Identity flow + N(0, s^2 I) prior on uniformly random 8-bit data (dequantised x ~ U[-0.5, 0.5)).

    E[-log p(x)] per dim = 0.5 log(2 pi s^2) + E[x^2] / (2 s^2) with E[x^2] = 1/12, so the
    expected bits/dim = that / log 2 + 8.
    """
    s2 = 0.3
    d = 3 * 8 * 8
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4000, 3, 8, 8), dtype=torch.uint8, generator=g)
    xp = preprocess(x, generator=g).double()
    prior = ClassGaussianPrior(torch.zeros(1, d, dtype=torch.float64), torch.full((1, d), s2, dtype=torch.float64))
    nll, z = flow_nll(_Identity(), prior, xp, torch.zeros(4000, dtype=torch.long))
    bpd = bits_per_dim(-nll, d).mean().item()
    expected = (0.5 * math.log(2 * math.pi * s2) + (1 / 12) / (2 * s2)) / math.log(2) + 8
    assert abs(bpd - expected) < 2e-3, (bpd, expected)
    assert torch.equal(z, xp.flatten(1))


# ------------------------------------------------------------------------------ class Gaussians
def test_log_prob_all_matches_torch_distributions() -> None:
    prior = _prior()
    z = torch.randn(11, 7, dtype=torch.float64) * 2
    expected = torch.distributions.Normal(prior.means[None], prior.variances[None].sqrt()).log_prob(z[:, None]).sum(-1)
    assert torch.allclose(prior.log_prob_all(z), expected, atol=1e-10)
    y = torch.randint(0, 5, (11,))
    assert torch.allclose(prior.log_prob(z, y), expected[torch.arange(11), y], atol=1e-10)
    marg = torch.log(torch.exp(expected).mean(1))
    assert torch.allclose(prior.marginal_log_prob(z), marg, atol=1e-10)
    assert torch.equal(prior.classify(z), expected.argmax(1))


def test_classify_recovers_well_separated_classes() -> None:
    means = torch.eye(4, 16, dtype=torch.float64) * 20
    prior = ClassGaussianPrior(means, torch.ones(4, 16, dtype=torch.float64))
    y = torch.arange(4).repeat(25)
    z = prior.sample(y, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.classify(z), y)


def test_sample_moments_follow_temperature() -> None:
    prior = _prior(k=3, d=4, seed=1)
    y = torch.full((20000,), 2, dtype=torch.long)
    z = prior.sample(y, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z.mean(0), prior.means[2], atol=0.03)
    assert torch.allclose(z.var(0), 0.25 * prior.variances[2], rtol=0.05)


def test_standard_prior_state_dict_and_to() -> None:
    std = ClassGaussianPrior.standard(10, 64)
    assert std.means.dtype == torch.float32 and std.num_classes == 10 and std.dim == 64
    z = torch.randn(5, 64)
    lp = std.log_prob_all(z)
    assert torch.allclose(lp, (-0.5 * (z**2).sum(1) - 32 * math.log(2 * math.pi))[:, None].expand(5, 10), atol=1e-4)
    prior = _prior()
    back = ClassGaussianPrior.from_state_dict(prior.state_dict())
    assert torch.equal(back.means, prior.means) and torch.equal(back.variances, prior.variances)
    p32 = prior.to("cpu", torch.float32)
    assert p32.means.dtype == torch.float32 and prior.means.dtype == torch.float64
    with pytest.raises(KeyError, match="variances"):
        ClassGaussianPrior.from_state_dict({"means": prior.means})


def test_prior_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="variances"):
        ClassGaussianPrior(torch.zeros(2, 3), -torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"\[K, D\]"):
        ClassGaussianPrior(torch.zeros(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="expects"):
        _prior().log_prob_all(torch.zeros(2, 8, dtype=torch.float64))


def test_flow_nll_conditional_and_marginal() -> None:
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(preset="digits", hidden=8, steps=1), (1, 8, 8)).double()
    prior = _prior(k=3, d=64)
    x = preprocess(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)).double()
    flow.data_init(x)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    nll, z = flow_nll(flow, prior, x, y)
    z_ref, logdet = flow(x)
    assert torch.allclose(z, z_ref)
    assert torch.allclose(nll, -(prior.log_prob(z, y) + logdet))
    nll_m, _ = flow_nll(flow, prior, x, None)
    assert torch.allclose(nll_m, -(prior.marginal_log_prob(z) + logdet))
    # the marginal mixes the classes: log p(x) >= log p(x|y) + log(1/K)
    assert (-nll_m >= -nll - math.log(3) - 1e-9).all()
