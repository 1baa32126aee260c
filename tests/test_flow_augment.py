"""nfpi.flow_augment and its use in nfpi.training: the flow-training augmentations (Sec. 5.2).

Properties: identity at strength 0 (and training unchanged bit for bit when all are off), exact
translations with the edge extended, rotations by multiples of 90 degrees are exact, shape / dtype /
range preserved, the jitter's limiting cases, parameter ranges, determinism per (seed, step), and
the same global batch for 1 and 2 processes (shards are slices of one draw).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from nfpi.config import ConfigError
from nfpi.density import ClassGaussianPrior
from nfpi.flow_augment import AugmentDraw, FlowAugment, apply_augment, color_jitter, rotate_translate
from nfpi.training import (
    TrainConfig,
    batch_augment,
    batch_noise,
    dequantize_batch,
    global_batch_indices,
    load_batch,
    train_flow,
    training_inputs,
)

torch.set_num_threads(1)

ON = dict(crop_pad=2, rotate_deg=12.0, brightness=0.1, contrast=0.1, saturation=0.05)  # the CIFAR configs' values


def images(n: int = 6, c: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def draw(aug: FlowAugment, n: int, seed: int = 0) -> AugmentDraw:
    return aug.draw(n, torch.Generator().manual_seed(seed))


def test_strength_zero_is_identity() -> None:
    x = images()
    off = FlowAugment()
    assert not off.active and apply_augment(x, draw(off, len(x))) is x
    assert batch_augment(TrainConfig(), 3, 8) is None  # off: nothing drawn, the loop is unchanged
    # Each part at its neutral parameters is the identity, bit for bit, for uint8 and float images.
    ident = AugmentDraw(FlowAugment(**ON), torch.zeros(len(x)), torch.zeros(len(x), 2, dtype=torch.long),
                        torch.ones(len(x), 3))
    assert torch.equal(apply_augment(x, ident), x)
    xf = x.float() / 256 - 0.5
    assert torch.allclose(apply_augment(xf, ident), xf, atol=1e-7)
    assert torch.equal(rotate_translate(xf, ident.angles, ident.shifts), xf)


def test_off_training_inputs_are_the_previous_pipeline() -> None:
    x = images(8, c=1)
    noise, flips = batch_noise(0, 0, 8, (1, 8, 8))
    before = dequantize_batch(x, noise)
    before = torch.where(flips.view(-1, 1, 1, 1), before.flip(-1), before)
    cfg = TrainConfig(hflip=True)
    out = training_inputs(x, noise, flips, n_bits=8, hflip=True, augment=batch_augment(cfg, 0, 8))
    assert torch.equal(out, before)


def test_translation_is_an_exact_shift_with_the_edge_extended() -> None:
    x = images(1)
    out = rotate_translate(x, torch.zeros(1), torch.tensor([[1, -2]]))  # source = output + (1, -2)
    assert torch.equal(out[0, :, :7, 2:], x[0, :, 1:, :6])
    assert torch.equal(out[0, :, 7, 2:], x[0, :, 7, :6])  # bottom row: the last source row again
    assert torch.equal(out[0, :, :7, 0], x[0, :, 1:, 0]) and torch.equal(out[0, :, :7, 1], x[0, :, 1:, 0])
    # Shifting back recovers the interior (the part that did not leave the image).
    back = rotate_translate(out, torch.zeros(1), torch.tensor([[-1, 2]]))
    assert torch.equal(back[0, :, 1:, :6], x[0, :, 1:, :6])


def test_right_angles_are_exact_and_hflip_is_an_involution() -> None:
    x = images(2, h=8, w=8)
    none = torch.zeros(2, 2, dtype=torch.long)
    assert torch.equal(rotate_translate(x, torch.full((2,), 90.0), none), torch.rot90(x, -1, (2, 3)))
    assert torch.equal(rotate_translate(x, torch.full((2,), 180.0), none), x.flip(-1).flip(-2))
    assert torch.equal(rotate_translate(x, torch.full((2,), -90.0), none), torch.rot90(x, 1, (2, 3)))
    noise, _ = batch_noise(0, 0, 2, (3, 8, 8))
    flips = torch.tensor([True, False])
    once = training_inputs(x, noise, flips, n_bits=8, hflip=True)
    plain = dequantize_batch(x, noise)
    assert torch.equal(once[0].flip(-1), plain[0]) and torch.equal(once[1], plain[1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_and_range_preserved(dtype: torch.dtype) -> None:
    x = images(16, h=8, w=12)
    x = x if dtype == torch.uint8 else x.float() / 256 - 0.5
    strong = FlowAugment(crop_pad=3, rotate_deg=45.0, brightness=0.9, contrast=0.9, saturation=0.9)
    out = apply_augment(x, draw(strong, 16))
    assert out.shape == x.shape and out.dtype == x.dtype
    if dtype == torch.float32:
        assert out.min() >= -0.5 and out.max() <= 0.5
    # Geometry alone only moves pixels: every output value is a value of the same input image.
    geo = rotate_translate(x, draw(strong, 16).angles, draw(strong, 16).shifts)
    for i in range(16):
        assert set(geo[i].flatten().tolist()) <= set(x[i].flatten().tolist())


def test_jitter_limits() -> None:
    x = images(4)
    ones = torch.ones(4, 3)
    assert torch.equal(color_jitter(x, ones), x)
    xf = x.float() / 256 - 0.5
    before = xf.clone()
    color_jitter(xf, torch.full((4, 3), 1.5))
    assert torch.equal(xf, before)  # the input is never modified in place
    grey = color_jitter(x, torch.tensor([[1.0, 1.0, 0.0]]).expand(4, 3))  # saturation 0: grey
    assert (grey.int().amax(1) - grey.int().amin(1)).max() <= 1  # equal channels up to rounding
    flat = color_jitter(x, torch.tensor([[1.0, 0.0, 1.0]]).expand(4, 3))  # contrast 0: the mean luma
    assert (flat.int().amax((1, 2, 3)) - flat.int().amin((1, 2, 3))).max() <= 1
    dark = color_jitter(x, torch.tensor([[0.0, 1.0, 1.0]]).expand(4, 3))  # brightness 0: black
    assert int(dark.max()) == 0
    bright = color_jitter(x, torch.tensor([[2.0, 1.0, 1.0]]).expand(4, 3))
    assert torch.equal(bright, (x.float() * 2).round().clamp(max=255).to(torch.uint8))  # clipped at white
    g1 = images(2, c=1)
    assert torch.equal(color_jitter(g1, torch.tensor([[1.0, 1.0, 0.0]]).expand(2, 3)), g1)  # grey: no saturation


def test_parameter_ranges() -> None:
    aug = FlowAugment(**ON)
    d = draw(aug, 4000)
    assert set(d.shifts.flatten().tolist()) == {-2, -1, 0, 1, 2}
    assert d.angles.abs().max() <= 12.0 and d.angles.min() < -11 and d.angles.max() > 11
    lo, hi = d.factors.min(0).values, d.factors.max(0).values
    assert torch.all(lo >= torch.tensor([0.9, 0.9, 0.95], dtype=lo.dtype))
    assert torch.all(hi <= torch.tensor([1.1, 1.1, 1.05], dtype=hi.dtype))
    assert FlowAugment(brightness=3.0).draw(500, torch.Generator().manual_seed(0)).factors[:, 0].min() >= 0.0
    for bad in ({"crop_pad": -1}, {"rotate_deg": 200.0}, {"contrast": -0.1}):
        with pytest.raises(ConfigError, match="train"):
            TrainConfig(**bad)


def test_deterministic_per_seed_and_step() -> None:
    cfg = TrainConfig(**ON)
    a, b = batch_augment(cfg, 7, 16), batch_augment(cfg, 7, 16)
    assert a is not None and b is not None
    assert torch.equal(a.angles, b.angles) and torch.equal(a.shifts, b.shifts) and torch.equal(a.factors, b.factors)
    c = batch_augment(cfg, 8, 16)
    assert not torch.equal(a.angles, c.angles)
    d = batch_augment(TrainConfig(seed=1, **ON), 7, 16)
    assert not torch.equal(a.angles, d.angles)
    # The draw does not depend on which augmentations are on: turning one on leaves the others' values.
    e = batch_augment(TrainConfig(crop_pad=2), 7, 16)
    assert torch.equal(a.shifts, e.shifts)


@pytest.mark.parametrize("world", [2, 4])
def test_shards_reassemble_the_single_process_batch(world: int) -> None:
    """What rank r of `world` feeds the flow at a step is rows r*B/W.. of the single process's batch."""
    x_all = images(40, c=3)
    data = TensorDataset(x_all, torch.arange(40) % 3)
    cfg = TrainConfig(batch_size=8, hflip=True, **ON)
    b, shard = cfg.batch_size, cfg.batch_size // world
    for step in (0, 3, 9):  # 9: a later epoch
        idx = global_batch_indices(len(data), b, step, cfg.seed)
        noise, flips = batch_noise(cfg.seed, step, b, (3, 8, 8))
        x, _ = load_batch(data, idx)
        single = training_inputs(x, noise, flips, n_bits=8, hflip=True, augment=batch_augment(cfg, step, b))
        parts = []
        for rank in range(world):
            sl = slice(rank * shard, (rank + 1) * shard)
            xr, _ = load_batch(data, idx[sl])
            parts.append(training_inputs(xr, noise[sl], flips[sl], n_bits=8, hflip=True,
                                         augment=batch_augment(cfg, step, b, sl)))
        assert torch.equal(torch.cat(parts), single)


def test_train_flow_with_augmentations(tmp_path: Path) -> None:
    from nfpi.checkpoint import load_checkpoint
    from nfpi.config import from_mapping
    from nfpi.flows import FlowConfig, build_flow

    shape = (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(48) % 3
    x = (torch.rand(48, *shape, generator=g) * 100 + y.view(-1, 1, 1, 1) * 70).to(torch.uint8)
    flow_raw = {"preset": "digits", "hidden": 8, "steps": 1}

    def run(name: str, **aug: float) -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        flow = build_flow(from_mapping(FlowConfig, flow_raw), shape)
        cfg = TrainConfig(steps=4, batch_size=8, warmup_steps=2, log_every=2, checkpoint_every=4, device="cpu",
                          init_size=16, **aug)
        res = train_flow(flow, TensorDataset(x, y), ClassGaussianPrior.standard(3, 64), cfg,
                         out_path=tmp_path / name / "flow.pt", config_record={"flow": flow_raw, "image_shape": [1, 8, 8]})
        assert res.steps == 4 and torch.isfinite(torch.tensor(res.final_loss))
        return load_checkpoint(tmp_path / name / "flow.pt", expected_kind="flow")

    off = run("off")
    zero = run("zero", crop_pad=0, rotate_deg=0.0, brightness=0.0)
    on = run("on", crop_pad=1, rotate_deg=10.0, brightness=0.2, contrast=0.2)
    assert all(torch.equal(off["model"][k], zero["model"][k]) for k in off["model"])
    assert any(not torch.equal(off["model"][k], on["model"][k]) for k in off["model"])
    assert on["config"]["train"]["crop_pad"] == 1 and on["config"]["train"]["rotate_deg"] == 10.0
