"""Property tests for nfpi.flows: every registered layer and flow, in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nfpi.config import ConfigError, from_mapping
from nfpi.flows import FlowConfig, available_flows, available_layers, build_flow, build_layer
from nfpi.flows.layers import (
    DataInitModule,
    MatExpConv1x1,
    MatExpCoupling,
    expm_lowrank_factor,
    expm_series_apply,
    series_degree,
    squeeze2d,
    unsqueeze2d,
)

LAYER_SHAPE = (4, 4, 4)  # C, H, W (the coupling layers see 2+2 channels)
TINY = dict(preset="digits", hidden=8, res_blocks=(1,), steps=2)


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its (often identity) initialisation so the tests can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _layer(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = build_layer(name, *LAYER_SHAPE).double()
    _perturb(layer, seed + 1)
    return layer


def _flow(arch: str, shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = FlowConfig(arch=arch, **{**TINY, **kw})  # type: ignore[arg-type]
    flow = build_flow(cfg, shape).double()
    x = torch.rand(32, *shape, dtype=torch.float64) - 0.5
    flow.data_init(x)
    _perturb(flow, seed + 1, 0.02)
    return flow


def _jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """slogdet of the autograd Jacobian of ``fn`` at each sample of ``x`` (flattened)."""
    out = []
    for xb in x:
        def f(v: torch.Tensor, shape=xb.shape) -> torch.Tensor:
            return fn(v.view(1, *shape)).flatten()

        jac = torch.autograd.functional.jacobian(f, xb.flatten(), vectorize=True)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


# ---------------------------------------------------------------------------------------- layers
@pytest.mark.parametrize("name", available_layers())
def test_layer_inverse_roundtrip(name: str) -> None:
    layer = _layer(name)
    x = torch.randn(3, *LAYER_SHAPE, dtype=torch.float64)
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,)
    assert torch.allclose(layer.inverse(y), x, atol=1e-8, rtol=0)
    assert not torch.allclose(y, x, atol=1e-3)  # the layer is not the identity: the check has teeth


@pytest.mark.parametrize("name", available_layers())
def test_layer_logdet_matches_autograd_jacobian(name: str) -> None:
    layer = _layer(name, seed=3)
    x = torch.randn(2, *LAYER_SHAPE, dtype=torch.float64)
    _, logdet = layer(x)
    expected = _jacobian_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, expected, atol=1e-8, rtol=1e-8), (logdet, expected)


@pytest.mark.parametrize("name", available_layers())
def test_layer_gradients_reach_every_parameter(name: str) -> None:
    layer = _layer(name, seed=5)
    x = torch.randn(3, *LAYER_SHAPE, dtype=torch.float64)
    y, logdet = layer(x)
    (y.square().sum() - logdet.sum()).backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, f"{name}.{pname} receives no gradient"


@pytest.mark.parametrize("name", available_layers())
def test_layer_state_dict_roundtrip(name: str) -> None:
    a, b = _layer(name, seed=7), _layer(name, seed=8)
    x = torch.randn(2, *LAYER_SHAPE, dtype=torch.float64)
    assert not torch.allclose(a(x)[0], b(x)[0])
    b.load_state_dict(a.state_dict())
    ya, la = a(x)
    yb, lb = b(x)
    assert torch.equal(ya, yb) and torch.equal(la, lb)


def test_squeeze_is_an_invertible_permutation() -> None:
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).view(2, 3, 4, 6)
    s = squeeze2d(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze2d(s), x)
    assert torch.equal(s.flatten().sort().values, x.flatten())
    # a squeezed pixel holds the 2x2 neighbourhood of one input channel
    assert torch.equal(s[0, :4, 0, 0], torch.stack([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))


def test_lowrank_factor_matches_dense_exponential() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, 3, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(5, 3, 7, generator=g, dtype=torch.float64) * 0.5
    dense = torch.linalg.matrix_exp(a @ b)
    low = torch.eye(7, dtype=torch.float64) + a @ expm_lowrank_factor(b @ a) @ b
    assert torch.allclose(dense, low, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_series_exponential_is_exact_at_the_bound(dtype: torch.dtype) -> None:
    """The fixed-degree series matches matrix_exp for generators of norm up to the bound."""
    bound = 2.0
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 6, 6, generator=g, dtype=torch.float64)
    w = (w / w.abs().sum(-1, keepdim=True).amax(-2, keepdim=True) * bound).to(dtype)  # ||W||_inf = bound
    v = torch.randn(50, 6, generator=g, dtype=torch.float64).to(dtype)
    out = expm_series_apply(lambda u: (w @ u.unsqueeze(-1)).squeeze(-1), v, series_degree(bound, dtype))
    ref = (torch.linalg.matrix_exp(w.double()) @ v.double().unsqueeze(-1)).squeeze(-1)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    assert torch.allclose(out.double(), ref, atol=tol, rtol=tol)
    # the worst case W = bound * I: a few degrees fewer is visibly inexact (the check has teeth)
    one = torch.ones(1, dtype=dtype)
    k = series_degree(bound, dtype)
    full = expm_series_apply(lambda u: bound * u, one, k)
    short = expm_series_apply(lambda u: bound * u, one, k - 8)
    rel = 1e-14 if dtype == torch.float64 else 1e-6
    assert abs(full.item() - math.exp(bound)) < rel * math.exp(bound)
    if dtype == torch.float64:
        assert abs(short.item() - math.exp(bound)) > 1e-11 * math.exp(bound)


@pytest.mark.parametrize("max_full", [24, 1])
def test_matexp_coupling_series_equals_dense_and_respects_bound(max_full: int) -> None:
    torch.manual_seed(0)
    series = MatExpCoupling(6, 8, 1, max_full=max_full, rank=2).double()
    _perturb(series, 1, 0.3)
    with torch.no_grad():  # saturate the generator: tanh -> +-1 everywhere
        series.scale.fill_(1e3)
        series.rho.fill_(10.0)
    dense = MatExpCoupling(6, 8, 1, max_full=max_full, rank=2, expm="matrix_exp").double()
    dense.load_state_dict(series.state_dict())
    x = torch.randn(3, 6, 4, 4, dtype=torch.float64)
    ys, ls = series(x)
    yd, ld = dense(x)
    assert torch.allclose(ys, yd, atol=1e-10) and torch.allclose(ls, ld, atol=1e-12)
    assert torch.allclose(series.inverse(ys), x, atol=1e-8)
    _, w, bm = series._params(x[:, :3])
    wd = w if bm is None else torch.einsum("bikhw,bkjhw->bijhw", w, bm)
    assert wd.abs().sum(2).max() <= series.bound + 1e-9  # ||W||_inf <= bound


def test_matexp_conv_cache_is_invalidated_by_parameter_updates() -> None:
    conv = MatExpConv1x1(4).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        y1, _ = conv(x)
        assert torch.equal(conv(x)[0], y1)  # cache hit gives the same result
        conv.weight.add_(0.1)  # what an optimiser step does
        y2, _ = conv(x)
    expected = torch.nn.functional.conv2d(x, torch.linalg.matrix_exp(conv.weight.detach()).view(4, 4, 1, 1))
    assert torch.allclose(y2, expected, atol=1e-12)
    assert not torch.allclose(y1, y2)


# ---------------------------------------------------------------------------------------- flows
@pytest.mark.parametrize("arch", available_flows())
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 8)])
def test_flow_inverse_roundtrip(arch: str, shape: tuple[int, int, int]) -> None:
    flow = _flow(arch, shape)
    x = torch.rand(4, *shape, dtype=torch.float64) - 0.5
    z, logdet = flow(x)
    d = math.prod(shape)
    assert z.shape == (4, d) and logdet.shape == (4,) and flow.latent_dim == d and flow.image_shape == shape
    assert torch.allclose(flow.inverse(z), x, atol=1e-8, rtol=0)


@pytest.mark.parametrize("arch", available_flows())
def test_flow_logdet_matches_autograd_jacobian(arch: str) -> None:
    flow = _flow(arch, (1, 8, 8), seed=11)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) - 0.5
    _, logdet = flow(x)
    expected = _jacobian_logdet(lambda v: flow(v)[0], x)
    assert torch.allclose(logdet, expected, atol=1e-7, rtol=1e-9), (logdet, expected)


@pytest.mark.parametrize("arch", available_flows())
def test_flow_gradients_reach_every_parameter(arch: str) -> None:
    flow = _flow(arch, (1, 8, 8), seed=13)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) - 0.5
    z, logdet = flow(x)
    (0.5 * z.square().sum() - logdet.sum()).backward()
    missing = [n for n, p in flow.named_parameters() if p.grad is None or not (p.grad.abs().max() > 0)]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("arch", available_flows())
def test_flow_state_dict_roundtrip_keeps_initialisation(arch: str) -> None:
    a = _flow(arch, seed=17)
    b = build_flow(FlowConfig(arch=arch, **TINY), (1, 8, 8)).double()  # type: ignore[arg-type]
    state = a.state_dict()
    assert bool(state["initialized"])
    b.load_state_dict(state)
    assert bool(b.initialized)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    b.data_init(torch.rand(8, 1, 8, 8, dtype=torch.float64))  # must not redo the init
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64) - 0.5
    za, la = a(x)
    zb, lb = b(x)
    assert torch.equal(za, zb) and torch.equal(la, lb)


@pytest.mark.parametrize("arch", available_flows())
def test_data_init_normalises_first_actnorm(arch: str) -> None:
    torch.manual_seed(0)
    flow = build_flow(FlowConfig(arch=arch, **TINY), (1, 8, 8)).double()  # type: ignore[arg-type]
    assert not bool(flow.initialized)
    x = 0.1 * torch.randn(256, 1, 8, 8, dtype=torch.float64) + 0.2
    flow.data_init(x)
    assert bool(flow.initialized)
    inits = [m for m in flow.modules() if isinstance(m, DataInitModule)]
    assert inits and all(bool(m.initialized) for m in inits)
    actnorm = flow.levels[0][0].layers[0]
    h, _ = actnorm(squeeze2d(x))
    dims = (0,) if actnorm.per_pixel else (0, 2, 3)
    assert torch.allclose(h.mean(dims), torch.zeros((), dtype=h.dtype), atol=1e-8)
    assert torch.allclose(h.std(dims), torch.ones((), dtype=h.dtype), atol=1e-4)


def test_flow_latent_concatenates_all_levels() -> None:
    """z holds every scale: perturbing one input pixel changes latents at several levels."""
    flow = _flow("matexp_glow", (1, 8, 8), seed=19)
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64) - 0.5
    z, _ = flow(x)
    assert z.shape[1] == 64
    x2 = x.clone()
    x2[0, 0, 0, 0] += 0.1
    z2, _ = flow(x2)
    changed = (z2 - z).abs()[0] > 1e-12
    assert changed[:32].any() and changed[32:].any()  # level-1 factored half and the last level


# ---------------------------------------------------------------------------------------- config
def test_build_flow_rejects_indivisible_image_size() -> None:
    with pytest.raises(ConfigError, match=r"28x28.*2\*\*levels = 8.*32x32.*levels <= 2"):
        build_flow(FlowConfig(preset="cifar"), (1, 28, 28))


def test_build_flow_rejects_unknown_arch_and_preset() -> None:
    with pytest.raises(ConfigError, match="flow.arch.*known: glow, matexp_glow"):
        build_flow(FlowConfig(arch="realnvp"), (1, 8, 8))
    with pytest.raises(ConfigError, match="flow.preset"):
        build_flow(FlowConfig(preset="mnist"), (1, 8, 8))
    with pytest.raises(ConfigError, match="flow.res_blocks"):
        build_flow(FlowConfig(res_blocks=(1, 2, 3)), (1, 8, 8))


def test_flow_config_from_mapping() -> None:
    cfg = from_mapping(FlowConfig, {"arch": "glow", "res_blocks": [2, 1], "steps": 3}, where="flow")
    assert cfg.res_blocks == (2, 1) and cfg.steps == 3
    with pytest.raises(ConfigError, match="flow.hiden.*hidden"):
        from_mapping(FlowConfig, {"hiden": 3}, where="flow")


def _count(cfg: FlowConfig, shape: tuple[int, int, int]) -> int:
    with torch.device("meta"):  # no memory, no init cost
        return sum(p.numel() for p in build_flow(cfg, shape).parameters())


def test_preset_parameter_counts() -> None:
    cifar = _count(FlowConfig(preset="cifar"), (3, 32, 32))
    assert abs(cifar - 42.8e6) / 42.8e6 < 0.01, cifar  # the public reference flow: 42.8M
    digits = _count(FlowConfig(preset="digits"), (1, 8, 8))
    assert 50_000 < digits < 150_000, digits
    for preset, shape in [("imagenet32", (3, 32, 32)), ("imagenet64", (3, 64, 64))]:
        assert _count(FlowConfig(preset=preset), shape) > 1e7


def test_vectorised_elu_matches_torch() -> None:
    """The vectorised CPU ELU of the coupling networks (inference) is torch's ELU to float rounding."""
    from nfpi.flows.layers import _elu_vectorised_

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 5, 5, generator=g, dtype=torch.float64) * 3
    x[0, 0, 0, :3] = torch.tensor([0.0, -1e-12, 1e-12], dtype=torch.float64)
    torch.testing.assert_close(_elu_vectorised_(x.clone()), F.elu(x), rtol=0, atol=1e-15)
    x32 = x.float()
    torch.testing.assert_close(_elu_vectorised_(x32.clone()), F.elu(x32), rtol=0, atol=1e-6)


def test_elu_dispatch_by_size_and_autograd() -> None:
    """Large CPU tensors take the vectorised form, with autograd too; small ones keep torch's kernel."""
    from nfpi.flows import layers

    small, large = torch.randn(2, 3, 4, 4), torch.randn(1, 2, 256, 256)  # 2^17 elements
    assert large.numel() >= layers._CPU_ELU_MIN_NUMEL > small.numel()
    torch.testing.assert_close(layers.elu(small.clone()), F.elu(small))
    assert "Elu" in type(layers.elu(small.clone().requires_grad_(True) * 1.0).grad_fn).__name__
    with torch.no_grad():
        torch.testing.assert_close(layers.elu(large.clone()), F.elu(large), rtol=0, atol=1e-6)
    # training: the vectorised autograd function, whose gradient is torch's ELU gradient
    leaf = large.double().requires_grad_(True)
    y = layers.elu(leaf * 1.0)
    assert type(y.grad_fn).__name__ == "_VectorisedELUBackward"
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, leaf, g)
    (ref,) = torch.autograd.grad(F.elu(leaf), leaf, g)
    torch.testing.assert_close(grad, ref, rtol=0, atol=1e-12)
    # it keeps only its output for the backward: the input was overwritten in place
    x = leaf * 1.0
    out = layers.elu(x)
    assert out.data_ptr() == x.data_ptr()
    # The flow gives the same latents with and without autograd (the two ELU paths agree).
    flow = build_flow(from_mapping(FlowConfig, {"preset": "digits", "hidden": 256, "steps": 1}), (1, 8, 8))
    xb = torch.rand(64, 1, 8, 8) - 0.5
    with torch.no_grad():
        z0, _ = flow(xb)
    z1, _ = flow(xb)
    torch.testing.assert_close(z0, z1.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,expm", [("matexp_glow", "series"), ("matexp_glow", "matrix_exp"), ("glow", "series")])
def test_flow_maps_stay_float32_under_bf16_autocast(arch: str, expm: str) -> None:
    """Under bf16 autocast only the coupling networks run in bf16: every flow map returns float32 and
    the inverse still undoes the forward to float32 rounding."""
    from nfpi.flows import layers

    flow = build_flow(from_mapping(FlowConfig, {"preset": "digits", "arch": arch, "coupling_expm": expm}), (1, 8, 8))
    x = torch.rand(16, 1, 8, 8) - 0.5
    flow.data_init(x)
    dtypes: dict[str, set[torch.dtype]] = {}

    def hook(m: torch.nn.Module, _inp: object, out: object) -> None:
        o = out[0] if isinstance(out, tuple) else out
        dtypes.setdefault(type(m).__name__, set()).add(o.dtype)

    for m in flow.modules():
        if isinstance(m, (layers.FlowLayer, layers.CouplingNet)):
            m.register_forward_hook(hook)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z, logdet = flow(x)
        back = flow.inverse(z)
    assert dtypes.pop("CouplingNet") == {torch.bfloat16}  # autocast is really on
    assert all(d == {torch.float32} for d in dtypes.values()), dtypes
    assert z.dtype == logdet.dtype == torch.float32
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
