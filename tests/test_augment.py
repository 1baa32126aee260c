"""NF augmentation (spec "What the rest of the pipeline computes"; paper Sec. 5.4) and the standard augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nfpi.augment import (
    StandardAugConfig,
    build_batch_mixer,
    build_sample_transform,
    class_principal_axes,
    draw_pairs,
    nf_augment,
    pca_mixup,
    random_crop_flip,
    same_class_partners,
)


def _class_data(k: int = 4, n_per: int = 60, d: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class latents with a clear spectral gap: per-class random rotations of decreasing scales."""
    g = torch.Generator().manual_seed(seed)
    zs, ys = [], []
    scales = torch.tensor([8.0, 5.0, 3.0, 2.0] + [0.3] * (d - 4), dtype=torch.float64)
    for c in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        e = torch.randn(n_per + c, d, generator=g, dtype=torch.float64) * scales  # unequal class sizes
        zs.append(e @ q.T + 10 * torch.randn(d, generator=g, dtype=torch.float64))
        ys.append(torch.full((n_per + c,), c))
    perm = torch.randperm(sum(len(y) for y in ys), generator=g)
    return torch.cat(zs)[perm], torch.cat(ys)[perm]


def _reference_axes(z: torch.Tensor, y: torch.Tensor, k: int, r: int) -> list[torch.Tensor]:
    """Top-r eigenvectors of each class covariance (the textbook d x d route, fine at test size)."""
    out = []
    for c in range(k):
        zc = z[y == c] - z[y == c].mean(0)
        _, vecs = torch.linalg.eigh(zc.T @ zc)
        out.append(vecs[:, -r:])
    return out


def _projector(u: torch.Tensor) -> torch.Tensor:
    return u @ u.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# class_principal_axes
# ---------------------------------------------------------------------------------------------


def test_axes_are_orthonormal_and_span_the_top_class_eigenvectors() -> None:
    z, y = _class_data()
    axes = class_principal_axes(z, y, 4, 3, method="exact")
    assert axes.shape == (4, 12, 3) and axes.dtype == torch.float64
    eye = torch.eye(3, dtype=torch.float64).expand(4, 3, 3)
    torch.testing.assert_close(axes.transpose(1, 2) @ axes, eye, atol=1e-10, rtol=0)
    for c, ref in enumerate(_reference_axes(z, y, 4, 3)):
        torch.testing.assert_close(_projector(axes[c]), _projector(ref), atol=1e-8, rtol=0)


def test_axes_do_not_depend_on_other_classes_or_the_class_mean() -> None:
    z, y = _class_data()
    shifted = z + 100.0 * y[:, None].double()  # move every class: centring must remove it
    a = class_principal_axes(z, y, 4, 3, method="exact")
    b = class_principal_axes(shifted, y, 4, 3, method="exact")
    torch.testing.assert_close(a, b, atol=1e-8, rtol=0)  # signs are fixed, so even the columns agree


def test_randomized_and_chunked_axes_match_exact() -> None:
    z, y = _class_data(k=3, n_per=200, d=40)
    exact = class_principal_axes(z, y, 3, 2, method="exact")
    rand = class_principal_axes(z, y, 3, 2, method="randomized", seed=1)
    chunked = class_principal_axes(z, y, 3, 2, method="exact", max_elements=1)  # one class per block
    torch.testing.assert_close(_projector(rand), _projector(exact), atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, exact, atol=1e-10, rtol=0)


def test_axes_bad_input_raises_clear_errors() -> None:
    z, y = _class_data()
    with pytest.raises(ValueError, match="no latents"):
        class_principal_axes(z, y, 5, 2)  # class 4 is empty
    with pytest.raises(ValueError, match="num_axes"):
        class_principal_axes(z, y, 4, 13)
    with pytest.raises(ValueError, match="labels must be in"):
        class_principal_axes(z, y + 1, 4, 2)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        class_principal_axes(z[:, :, None], y, 4, 2)


# ---------------------------------------------------------------------------------------------
# pca_mixup
# ---------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), r=st.integers(1, 6), beta_max=st.floats(0.0, 1.0))
def test_pca_mixup_moves_only_inside_the_class_span(seed: int, r: int, beta_max: float) -> None:
    g = torch.Generator().manual_seed(seed)
    b, d = 7, 9
    u, _ = torch.linalg.qr(torch.randn(b, d, r, generator=g, dtype=torch.float64))
    z_a = torch.randn(b, d, generator=g, dtype=torch.float64)
    z_b = torch.randn(b, d, generator=g, dtype=torch.float64)
    beta = torch.rand(b, generator=g, dtype=torch.float64) * beta_max
    out = pca_mixup(z_a, z_b, u, beta)
    step = out - z_a
    # z' - z_a lies in span(U): its component orthogonal to U vanishes ...
    perp = step - torch.einsum("bij,bj->bi", _projector(u), step)
    assert perp.abs().max() < 1e-12
    # ... and equals the projection of the scaled difference (the spec's formula, written with U U^T).
    want = torch.einsum("bij,bj->bi", _projector(u), beta[:, None] * (z_b - z_a))
    torch.testing.assert_close(step, want, atol=1e-12, rtol=0)


def test_pca_mixup_limits() -> None:
    g = torch.Generator().manual_seed(0)
    z_a, z_b = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    full, _ = torch.linalg.qr(torch.randn(5, 6, 6, generator=g, dtype=torch.float64))
    torch.testing.assert_close(pca_mixup(z_a, z_b, full, torch.ones(5, dtype=torch.float64)), z_b)  # r = d, beta 1
    torch.testing.assert_close(pca_mixup(z_a, z_b, full[..., :2], torch.zeros(5, dtype=torch.float64)), z_a)
    with pytest.raises(ValueError, match="axes must be"):
        pca_mixup(z_a, z_b, full[:1], torch.ones(5))


# ---------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------


def test_partners_share_the_class_and_are_never_self_unless_alone() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 1, 3])  # class 2 and 3 are singletons
    for seed in range(20):
        p = same_class_partners(labels, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[p], labels)
        alone = torch.isin(labels, torch.tensor([2, 3]))
        assert torch.equal(p[alone], torch.nonzero(alone).flatten())
        assert (p[~alone] != torch.arange(8)[~alone]).all()
    # every other member of a class is reachable
    seen = {int(same_class_partners(labels, torch.Generator().manual_seed(s))[0]) for s in range(60)}
    assert seen == {2, 5}


def test_draw_pairs_is_copy_major_and_reproducible() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])
    a, b, beta = draw_pairs(labels, copies=3, beta_max=0.4, generator=torch.Generator().manual_seed(3))
    a2, b2, beta2 = draw_pairs(labels, copies=3, beta_max=0.4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, torch.arange(5).repeat(3)) and torch.equal(b, b2) and torch.equal(beta, beta2)
    assert torch.equal(labels[a], labels[b]) and (beta >= 0).all() and (beta < 0.4).all()


# ---------------------------------------------------------------------------------------------
# nf_augment with the real digits flow
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_flow() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    from nfpi.density import preprocess
    from nfpi.flows import FlowConfig, build_flow

    torch.manual_seed(0)
    d = load_digits()
    x = torch.from_numpy(np.clip(d.images * 16, 0, 255).astype(np.uint8))[:240, None]
    y = torch.from_numpy(d.target[:240]).long()
    flow = build_flow(FlowConfig(preset="digits"), (1, 8, 8)).eval()
    with torch.no_grad():
        z, _ = flow.forward(preprocess(x, dequantize=False))
    return flow, x, y, z


def _perp_to_par(dz: torch.Tensor, u: torch.Tensor) -> float:
    par = torch.einsum("bdr,br->bd", u, torch.einsum("bdr,bd->br", u, dz))
    return float((dz - par).norm(dim=1).mean() / par.norm(dim=1).mean())


def test_nf_augment_keeps_labels_and_moves_along_the_class_axes(digits_flow) -> None:
    from nfpi.density import postprocess, preprocess

    flow, x, y, z = digits_flow
    r = 4
    axes = class_principal_axes(z.double(), y, 10, r)
    out, lab = nf_augment(flow, x, y, axes, copies=2, beta_max=1.0, batch_size=1000,
                          generator=torch.Generator().manual_seed(0), device="cpu")
    assert out.dtype == torch.uint8 and out.shape == (480, 1, 8, 8)
    assert torch.equal(lab, y.repeat(2))
    assert (out != x.repeat(2, 1, 1, 1)).float().mean() > 0.1  # images did change

    # Exactly the spec's image: f^{-1}(z_a + U_y U_y^T (beta (z_b - z_a))) for the drawn pairs.
    a, b, beta = draw_pairs(y, copies=2, beta_max=1.0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = postprocess(flow.inverse(pca_mixup(z[a], z[b], axes[y[a]].float(), beta.float())))
    assert (want != out).float().mean() < 1e-3

    # Re-encoding the uint8 images: the latent move stays in span(U_y) up to the 8-bit rounding;
    # an isotropic move would put sqrt((d - r) / r) ~ 3.9 times more outside than inside.
    with torch.no_grad():
        z_out, _ = flow.forward(preprocess(out, dequantize=False))
    assert _perp_to_par((z_out - z[a]).double(), axes[y[a]]) < 0.3
    iso = torch.randn(480, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert _perp_to_par(iso, axes[y[a]]) > 2.0  # the check above can fail


def test_nf_augment_beta_zero_returns_the_originals_and_indices_select(digits_flow) -> None:
    flow, x, y, z = digits_flow
    axes = class_principal_axes(z.double(), y, 10, 3)
    out, lab = nf_augment(flow, x, y, axes, beta_max=0.0, device="cpu", batch_size=64)
    assert (out.int() - x.int()).abs().max() <= 1 and (out != x).float().mean() < 1e-3  # f^{-1}(f(x)) = x
    pick = torch.tensor([5, 17, 3])
    out2, lab2 = nf_augment(flow, x, y, axes, copies=2, beta_max=0.5, device="cpu", indices=pick,
                            latents=z, generator=torch.Generator().manual_seed(0))
    assert out2.shape == (6, 1, 8, 8) and torch.equal(lab2, y[pick].repeat(2))
    with pytest.raises(ValueError, match="axes must be"):
        nf_augment(flow, x, y, axes[:, :10], device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        nf_augment(flow, x.float(), y, axes, device="cpu")


# ---------------------------------------------------------------------------------------------
# standard augmentations
# ---------------------------------------------------------------------------------------------


def test_random_crop_flip_is_a_shifted_or_mirrored_crop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)  # no zeros: padding is visible
    out = random_crop_flip(x, padding=2, hflip=True, generator=g)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flipped = 0
    for i in range(64):
        crops = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        if any(torch.equal(out[i], cr) for cr in crops):
            continue
        assert any(torch.equal(out[i], cr.flip(-1)) for cr in crops), f"sample {i} is no crop of its input"
        flipped += 1
    assert 10 < flipped < 54  # roughly half the samples mirrored
    same = random_crop_flip(x, padding=0, hflip=False, generator=g)
    assert torch.equal(same, x)


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_sample_transform_and_mixer_run_on_uint8(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    cfg = StandardAugConfig()
    tf = build_sample_transform(cfg, shape)
    img = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = tf(img)
    assert out.shape == shape and out.dtype == torch.uint8
    mixer = build_batch_mixer(cfg, 10)
    xb, tb = mixer(torch.rand(8, *shape), torch.arange(8))
    assert xb.shape == (8, *shape) and tb.shape == (8, 10)
    torch.testing.assert_close(tb.sum(1), torch.ones(8))
    assert build_batch_mixer(StandardAugConfig(mixup_alpha=0.0, cutmix_alpha=0.0), 10) is None
