"""Tests for nfpi.training and nfpi.evaluation on the real flows (tiny "digits" preset, 8x8 images).

Properties checked: exact resume (crash and extension), deterministic rank-independent data order and
noise, the non-finite guard (skip, roll back, give up), self-describing checkpoints that rebuild the
flow, EMA semantics, metrics log, and the evaluation / extraction / sampling contracts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from nfpi.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nfpi.config import ConfigError, from_mapping
from nfpi.density import ClassGaussianPrior, postprocess, preprocess
from nfpi.evaluation import evaluate_flow, extract_latents, sample_images
from nfpi.flows import FlowConfig, build_flow
from nfpi.training import (
    StartWeights,
    TrainConfig,
    TrainingStopped,
    batch_noise,
    dequantize_batch,
    global_batch_indices,
    load_batch,
    load_trained_flow,
    lr_at,
    resume_path,
    train_flow,
    training_inputs,
)

torch.set_num_threads(1)

SHAPE = (1, 8, 8)
K = 3
FLOW_RAW = {"preset": "digits", "hidden": 8, "steps": 1}
FLOW_CFG = from_mapping(FlowConfig, FLOW_RAW)
RECORD = {"flow": FLOW_RAW, "image_shape": list(SHAPE), "stage": "test"}


def make_data(n: int = 48, seed: int = 0) -> TensorDataset:
    """Small uint8 images whose brightness depends on the class (so the classes are learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = (torch.rand(n, *SHAPE, generator=g) * 100 + y.view(-1, 1, 1, 1) * 70).to(torch.uint8)
    return TensorDataset(x, y)


def make_flow() -> torch.nn.Module:
    torch.manual_seed(1)  # coupling weights are randomly initialised
    return build_flow(FLOW_CFG, SHAPE)


def cfg(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, warmup_steps=3, log_every=2, checkpoint_every=3, device="cpu", init_size=32)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp: Path, c: TrainConfig, data: Dataset | None = None, prior: ClassGaussianPrior | None = None, **kw):
    flow = make_flow()
    res = train_flow(flow, data if data is not None else make_data(), prior or ClassGaussianPrior.standard(K, 64), c,
                     out_path=tmp / "flow.pt", config_record=RECORD, **kw)
    return flow, res


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------
# pure helpers


def test_lr_warmup_linear_then_constant() -> None:
    c = TrainConfig(lr=1e-2, warmup_steps=1000)
    lrs = np.array([lr_at(s, c) for s in range(1500)])
    assert lrs[0] == pytest.approx(1e-5) and lrs[999] == pytest.approx(1e-2)
    np.testing.assert_allclose(np.diff(lrs[:1000]), 1e-5, rtol=1e-9)
    assert (lrs[1000:] == 1e-2).all()
    assert lr_at(0, TrainConfig(warmup_steps=0)) == TrainConfig().lr


def test_data_order_is_epoch_permutation_and_rank_independent() -> None:
    n, b = 37, 8  # 4 full batches per epoch, one image of 37 dropped each epoch (equal shards)
    epoch0 = torch.cat([global_batch_indices(n, b, s, seed=5) for s in range(4)])
    assert len(set(epoch0.tolist())) == 32 and epoch0.max() < n
    epoch1 = torch.cat([global_batch_indices(n, b, s, seed=5) for s in range(4, 8)])
    assert not torch.equal(epoch0, epoch1)  # a fresh permutation per epoch
    assert torch.equal(global_batch_indices(n, b, 6, seed=5), global_batch_indices(n, b, 6, seed=5))
    assert not torch.equal(global_batch_indices(n, b, 0, seed=5), global_batch_indices(n, b, 0, seed=6))
    # Noise/flips of a global batch do not depend on who draws them: shards are slices of one draw.
    noise, flips = batch_noise(5, 3, b, SHAPE)
    noise2, flips2 = batch_noise(5, 3, b, SHAPE)
    assert torch.equal(noise, noise2) and torch.equal(flips, flips2)
    assert not torch.equal(noise, batch_noise(5, 4, b, SHAPE)[0])
    assert noise.min() >= 0 and noise.max() < 1


def test_dequantize_matches_density_conventions() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    for n_bits in (8, 5):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
        xd = dequantize_batch(x, noise, n_bits=n_bits)
        assert xd.dtype == torch.float32 and xd.min() >= -0.5 and xd.max() < 0.5
        # Same bins as nfpi.density: postprocess recovers the (bit-reduced) image for any noise.
        assert torch.equal(postprocess(xd, n_bits=n_bits), postprocess(preprocess(x, n_bits=n_bits), n_bits=n_bits))
        assert torch.equal(dequantize_batch(x, None, n_bits=n_bits), preprocess(x, n_bits=n_bits, dequantize=False))
    xf = torch.rand(2, 1, 8, 8) - 0.5
    assert torch.equal(dequantize_batch(xf, None), xf)  # float images are already preprocessed


def test_training_inputs_flip_exactly_the_flagged_images() -> None:
    x = make_data(6).tensors[0]
    noise, flips = batch_noise(0, 0, 6, SHAPE)
    flips[:2] = torch.tensor([True, False])
    plain = dequantize_batch(x, noise)
    out = training_inputs(x, noise, flips, n_bits=8, hflip=True)
    assert torch.equal(out[flips], plain[flips].flip(-1)) and torch.equal(out[~flips], plain[~flips])
    assert torch.equal(training_inputs(x, noise, flips, n_bits=8, hflip=False), plain)


def test_load_batch_generic_dataset_matches_tensor_dataset() -> None:
    data = make_data(20)

    class ListDataset(Dataset):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int):
            return data.tensors[0][i], int(data.tensors[1][i])

    idx = torch.tensor([3, 0, 19, 7])
    xa, ya = load_batch(data, idx)
    xb, yb = load_batch(ListDataset(), idx)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and yb.dtype == torch.int64


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="train.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="unknown config key 'train.lrate'"):
        from_mapping(TrainConfig, {"lrate": 1.0}, where="train")


# ------------------------------------------------------------------------------------------------
# training loop


def test_train_writes_self_describing_checkpoint_and_metrics(tmp_path: Path) -> None:
    prior = ClassGaussianPrior(torch.randn(K, 64) * 0.1, torch.rand(K, 64) + 0.5)
    flow, res = run(tmp_path, cfg(), prior=prior, metrics_path=tmp_path / "m.jsonl")
    assert res.steps == 6 and res.skipped_steps == 0 and res.rollbacks == 0 and math.isfinite(res.final_loss)
    ck = load_checkpoint(tmp_path / "flow.pt", expected_kind="flow")
    assert ck["step"] == 6 and ck["config"]["flow"] == FLOW_RAW and ck["config"]["image_shape"] == [1, 8, 8]
    assert ck["config"]["train"]["batch_size"] == 8
    assert torch.equal(ck["gaussians"]["means"], prior.means)
    assert_same_state(ck["model"], flow.state_dict())
    assert bool(ck["model"]["initialized"])  # actnorm data init ran
    lines = [json.loads(s) for s in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4, 6]
    for r in lines:
        assert {"step", "loss", "bpd", "lr", "grad_norm", "images_per_sec", "elapsed"} <= r.keys()
        assert r["bpd"] == pytest.approx((r["loss"] / 64 + 8 * math.log(2)) / math.log(2))
    assert res.final_loss == pytest.approx(lines[-1]["loss"])
    assert lines[-1]["loss"] < lines[0]["loss"]  # it learns
    assert resume_path(tmp_path / "flow.pt").exists()


def test_load_trained_flow_rebuilds_with_ema(tmp_path: Path) -> None:
    flow, _ = run(tmp_path, cfg())
    ck = load_checkpoint(tmp_path / "flow.pt")
    tf = load_trained_flow(tmp_path / "flow.pt")
    assert not tf.flow.training and tf.image_shape == SHAPE and tf.config["flow"] == FLOW_RAW
    assert_same_state(tf.flow.state_dict(), ck["ema"])
    raw = load_trained_flow(tmp_path / "flow.pt", use_ema=False)
    assert_same_state(raw.flow.state_dict(), flow.state_dict())
    # The EMA is a different (smoothed) point; with decay 0 it is the raw weights.
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"] if ck["model"][k].is_floating_point())
    assert torch.equal(tf.prior.means, torch.zeros(K, 64)) and torch.equal(tf.prior.variances, torch.ones(K, 64))
    # A checkpoint without the flow record cannot be rebuilt: the error names the file.
    save_checkpoint(tmp_path / "bare.pt", kind="flow", model=ck["model"], config={})
    with pytest.raises(CheckpointError, match=r"bare\.pt.*'flow'"):
        load_trained_flow(tmp_path / "bare.pt")


def test_ema_decay_zero_tracks_weights(tmp_path: Path) -> None:
    _, _ = run(tmp_path, cfg(ema_decay=0.0))
    ck = load_checkpoint(tmp_path / "flow.pt")
    assert_same_state(ck["ema"], ck["model"])


class CrashingDataset(Dataset):
    """The real data, but the process "dies" (raises) when batch ``crash_at`` is fetched."""

    def __init__(self, base: TensorDataset, crash_at: int) -> None:
        self.base, self.crash_at, self.fetches = base, crash_at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        return self.base[i]

    def __getitems__(self, idx: list[int]):
        if self.fetches == self.crash_at:
            raise KeyboardInterrupt("simulated kill")
        self.fetches += 1
        return [self.base[i] for i in idx]


def test_resume_after_crash_is_exact(tmp_path: Path) -> None:
    c = cfg(steps=7, checkpoint_every=3)
    full, _ = run(tmp_path / "full", c)
    full_ck = load_checkpoint(tmp_path / "full" / "flow.pt")
    # Fetch 0 is the data-init batch; crash while fetching step 5's batch (after the step-3 checkpoint).
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crash", c, data=CrashingDataset(make_data(), crash_at=1 + 5))
    assert not (tmp_path / "crash" / "flow.pt").exists()
    assert load_checkpoint(resume_path(tmp_path / "crash" / "flow.pt"))["step"] == 3
    resumed, res = run(tmp_path / "crash", c)
    assert res.resumed_from == 3 and res.steps == 7
    ck = load_checkpoint(tmp_path / "crash" / "flow.pt")
    assert_same_state(resumed.state_dict(), full.state_dict())
    assert_same_state(ck["ema"], full_ck["ema"])


class SignallingDataset(CrashingDataset):
    """The real data; the process sends itself ``sig`` (a real signal) while batch ``at`` is fetched."""

    def __init__(self, base: TensorDataset, at: int, sig: signal.Signals) -> None:
        super().__init__(base, crash_at=-1)
        self.at, self.sig = at, sig

    def __getitems__(self, idx: list[int]):
        if self.fetches == self.at:
            os.kill(os.getpid(), self.sig)
        return super().__getitems__(idx)


def _rows(path: Path) -> list[dict]:
    """Metrics lines without the timing fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("elapsed", "images_per_sec")}
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_checkpoints_the_current_step_and_the_rerun_resumes_exactly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, sig: signal.Signals) -> None:
    c = cfg(steps=7, checkpoint_every=3, log_every=2)
    full, _ = run(tmp_path / "full", c, metrics_path=tmp_path / "full" / "m.jsonl")
    before = signal.getsignal(sig)
    # Fetches: the fingerprint's data sample, the data-init batch, then step k's batch is fetch 2 + k.
    # The signal arrives while step 4's batch loads: step 4 completes, then the loop stops (step 5 done).
    with caplog.at_level(logging.INFO, logger="nfpi.training"), pytest.raises(TrainingStopped) as stopped:
        run(tmp_path / "stop", c, data=SignallingDataset(make_data(), at=2 + 4, sig=sig),
            metrics_path=tmp_path / "stop" / "m.jsonl")
    assert stopped.value.code == 128 + sig and stopped.value.step == 5
    assert signal.getsignal(sig) == before  # the handler is only installed while training runs
    assert not (tmp_path / "stop" / "flow.pt").exists()
    state = resume_path(tmp_path / "stop" / "flow.pt")
    assert load_checkpoint(state)["step"] == 5  # not the periodic step-3 checkpoint: the step it stopped at
    assert f"stopped at step 5 of 7 on {sig.name}; resume checkpoint {state} at step 5" in caplog.text
    with caplog.at_level(logging.INFO, logger="nfpi.training"):
        resumed, res = run(tmp_path / "stop", c, metrics_path=tmp_path / "stop" / "m.jsonl")
    assert res.resumed_from == 5 and f"resumed from step 5 of 7 ({state})" in caplog.text
    assert_same_state(resumed.state_dict(), full.state_dict())
    assert_same_state(load_checkpoint(tmp_path / "stop" / "flow.pt")["ema"],
                      load_checkpoint(tmp_path / "full" / "flow.pt")["ema"])
    # The metrics log equals the uninterrupted one, including the window (steps 5-6) cut by the stop.
    assert _rows(tmp_path / "stop" / "m.jsonl") == _rows(tmp_path / "full" / "m.jsonl")


def test_rerun_of_a_finished_run_leaves_its_checkpoint_untouched(tmp_path: Path) -> None:
    """A later stage identifies its start weights by the file's bytes: a rerun must not rewrite them."""
    run(tmp_path, cfg(steps=3))
    before = (tmp_path / "flow.pt").read_bytes()
    time.sleep(1.1)  # the checkpoint's time stamp has one-second resolution
    _, res = run(tmp_path, cfg(steps=3))
    assert res.resumed_from == 3 and (tmp_path / "flow.pt").read_bytes() == before


def test_extending_steps_resumes_exactly_and_config_change_restarts(tmp_path: Path, caplog) -> None:
    full, _ = run(tmp_path / "full", cfg(steps=6))
    _, first = run(tmp_path / "ext", cfg(steps=4))
    ext, res = run(tmp_path / "ext", cfg(steps=6, log_every=1))  # log_every does not change the trajectory
    assert first.resumed_from == 0 and res.resumed_from == 4
    assert_same_state(ext.state_dict(), full.state_dict())
    with caplog.at_level(logging.WARNING, logger="nfpi.training"):
        _, res2 = run(tmp_path / "ext", cfg(steps=6, lr=5e-3))
    assert res2.resumed_from == 0 and "fingerprint differs" in caplog.text
    _, res3 = run(tmp_path / "ext", cfg(steps=6, lr=5e-3), data=make_data(seed=7))  # other data: fresh start
    assert res3.resumed_from == 0


def test_truncated_resume_state_is_reported_and_ignored(tmp_path: Path, caplog) -> None:
    run(tmp_path, cfg(steps=2))
    state = resume_path(tmp_path / "flow.pt")
    state.write_bytes(state.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="nfpi.training"):
        _, res = run(tmp_path, cfg(steps=2))
    assert res.resumed_from == 0 and f"{state}: cannot read checkpoint" in caplog.text
    final = tmp_path / "flow.pt"
    final.write_bytes(final.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{final}: cannot read checkpoint .* truncated"):
        load_trained_flow(final)


def _nan_dataset(n: int, nan_idx: list[int]) -> TensorDataset:
    """Float images in [-0.5, 0.5) (used as they are), with NaN images at ``nan_idx``."""
    base = make_data(n)
    x = preprocess(base.tensors[0], generator=torch.Generator().manual_seed(0))
    x[nan_idx] = float("nan")
    return TensorDataset(x, base.tensors[1])


def test_nan_sample_is_skipped(tmp_path: Path, caplog) -> None:
    c = cfg(steps=6, init_size=8)
    bad = int(global_batch_indices(48, 8, 2, c.seed)[0])  # an image in step 2's batch (and not in init)
    assert bad not in global_batch_indices(48, 8, 0, c.seed).tolist()
    expected = sum(bad in global_batch_indices(48, 8, s, c.seed).tolist() for s in range(6))
    with caplog.at_level(logging.WARNING, logger="nfpi.training"):
        flow, res = run(tmp_path, c, data=_nan_dataset(48, [bad]))
    assert res.skipped_steps == expected >= 1 and res.rollbacks == 0
    assert "step 2: non-finite loss" in caplog.text
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    assert math.isfinite(res.final_loss)


def test_repeated_nonfinite_rolls_back_then_gives_up(tmp_path: Path, caplog) -> None:
    c = cfg(steps=6, checkpoint_every=2, max_nonfinite=2, init_size=8)
    bad = sorted(set(global_batch_indices(48, 8, 3, c.seed).tolist()) | set(global_batch_indices(48, 8, 4, 0).tolist()))
    data = _nan_dataset(48, bad)
    with caplog.at_level(logging.WARNING, logger="nfpi.training"):
        flow, res = run(tmp_path / "a", c, data=data)
    assert res.skipped_steps == 2 and res.rollbacks == 1 and res.steps == 6
    state = resume_path(tmp_path / "a" / "flow.pt")
    # Steps 3 and 4 (0-based) are skipped; the checkpoint written after step index 3 (step count 4)
    # holds untouched, finite weights, so it is the last good one.
    assert f"rolled back to the last good checkpoint {state} (step 4)" in caplog.text
    assert all(torch.isfinite(p).all() for p in flow.parameters())
    with pytest.raises(RuntimeError, match="max_rollbacks=0"):
        run(tmp_path / "b", cfg(steps=6, checkpoint_every=2, max_nonfinite=2, max_rollbacks=0, init_size=8), data=data)


@pytest.mark.parametrize("read_first", [False, True])
def test_finetune_starts_from_init_checkpoint_ema(tmp_path: Path, read_first: bool) -> None:
    """The start weights are the init checkpoint's EMA, given as a path or as StartWeights read once."""
    run(tmp_path / "pre", cfg(steps=3))
    pre = load_checkpoint(tmp_path / "pre" / "flow.pt")
    prior = ClassGaussianPrior(torch.randn(K, 64), torch.full((K, 64), 0.5))
    flow = make_flow()
    init = tmp_path / "pre" / "flow.pt"
    start = StartWeights.read(init) if read_first else init
    if read_first:
        assert start.n_bits == 8 and start.uses_ema and start.config["flow"] == RECORD["flow"]
        assert_same_state(start.trained_flow().flow.state_dict(), load_trained_flow(init).flow.state_dict())
    res = train_flow(flow, make_data(), prior, cfg(steps=0), out_path=tmp_path / "ft" / "flow.pt",
                     init_checkpoint=start, config_record=RECORD)
    assert res.steps == 0
    ck = load_checkpoint(tmp_path / "ft" / "flow.pt")
    assert_same_state(ck["model"], pre["ema"])  # zero steps: the start weights are the pretrained EMA
    assert torch.equal(ck["gaussians"]["variances"], prior.variances)


def test_bad_batch_size_and_missing_init(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="larger than the training set"):
        run(tmp_path, cfg(batch_size=64), data=make_data(32))
    with pytest.raises(CheckpointError, match=r"missing\.pt: init checkpoint not found"):
        run(tmp_path, cfg(), init_checkpoint=tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------------
# evaluation


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trained")
    prior = ClassGaussianPrior(torch.randn(K, 64, generator=torch.Generator().manual_seed(3)), torch.ones(K, 64))
    flow = make_flow()
    train_flow(flow, make_data(), prior, cfg(steps=12), out_path=tmp / "flow.pt", config_record=RECORD)
    return load_trained_flow(tmp / "flow.pt")


def test_evaluate_flow_consistent_with_prior(trained) -> None:
    data = make_data(30, seed=1)
    m = evaluate_flow(trained.flow, trained.prior, data, batch_size=7)
    conf = np.array(m["confusion"])
    assert conf.shape == (K, K) and conf.sum() == 30 == m["num_images"]
    x = preprocess(data.tensors[0], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z, logdet = trained.flow(x.double().float())
        # predictions classify each image at its bin centres; bits/dim use the noisy x
        pred = trained.prior.classify(trained.flow(preprocess(data.tensors[0], dequantize=False))[0])
    y = data.tensors[1]
    assert m["nf_acc"] == pytest.approx(float((pred == y).double().mean()))
    noisy = evaluate_flow(trained.flow, trained.prior, data, batch_size=7, classify_centres=False)
    assert noisy["nf_acc"] == pytest.approx(float((trained.prior.classify(z) == y).double().mean()))
    assert noisy["bpd_conditional"] == m["bpd_conditional"]
    for c in range(K):
        assert m["per_class_acc"][c] == pytest.approx(float((pred[y == c] == c).double().mean()))
    lp_y = trained.prior.log_prob(z, y) + logdet
    lp_m = trained.prior.marginal_log_prob(z) + logdet
    assert m["bpd_conditional"] == pytest.approx(float((-lp_y.mean() / 64 + 8 * math.log(2)) / math.log(2)), rel=1e-5)
    assert m["bpd_marginal"] == pytest.approx(float((-lp_m.mean() / 64 + 8 * math.log(2)) / math.log(2)), rel=1e-5)
    # log p(x) >= log p(x|y) + log(1/K) for every image, so the marginal bound holds on average.
    assert m["bpd_marginal"] <= m["bpd_conditional"] + math.log2(K) / 64 + 1e-9
    # Batch-size independent (the noise stream is drawn in dataset order) up to float rounding.
    m30 = evaluate_flow(trained.flow, trained.prior, data, batch_size=30)
    assert m30["confusion"] == m["confusion"]
    assert m30["bpd_conditional"] == pytest.approx(m["bpd_conditional"], rel=1e-6)


def test_extract_latents_batched_and_deterministic(trained) -> None:
    data = make_data(25, seed=2)
    batches = list(extract_latents(trained.flow, data, batch_size=10))
    assert [b[0].shape for b in batches] == [(10, 64), (10, 64), (5, 64)]
    assert all(z.dtype == np.float32 and y.dtype == np.int64 for z, y in batches)
    z = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), data.tensors[1].numpy())
    with torch.no_grad():
        ref, _ = trained.flow(preprocess(data.tensors[0], dequantize=False))
    np.testing.assert_allclose(z, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert trained.flow.training is False


def test_sample_images_temperature_and_reproducibility(trained) -> None:
    labels = torch.tensor([0, 1, 2, 2, 1])
    a = sample_images(trained.flow, trained.prior, labels, temperature=0.7, batch_size=2,
                      generator=torch.Generator().manual_seed(4))
    b = sample_images(trained.flow, trained.prior, labels, temperature=0.7, batch_size=5,
                      generator=torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (5, *SHAPE)
    assert (a.int() - b.int()).abs().max() <= 1  # batch size only changes float rounding
    # T = 0 decodes the class means exactly: x = f^{-1}(mu_y).
    t0 = sample_images(trained.flow, trained.prior, labels, temperature=0.0)
    with torch.no_grad():
        ref = postprocess(trained.flow.inverse(trained.prior.means[labels]))
    assert torch.equal(t0, ref)


def test_bf16_precision_on_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """precision: bf16 autocasts the coupling networks on a bf16-capable CPU, else runs fp32 and says so."""
    from nfpi import runtime

    _, ref = run(tmp_path / "fp32", cfg(steps=3))
    with caplog.at_level("WARNING"):
        _, res = run(tmp_path / "bf16", cfg(steps=3, precision="bf16"))
    assert math.isfinite(res.final_loss)
    if runtime.cpu_has_bf16():
        assert res.final_loss != ref.final_loss  # the convolutions really ran in bf16
        assert abs(res.final_loss - ref.final_loss) < 0.05 * abs(ref.final_loss)
    else:
        assert res.final_loss == ref.final_loss
        assert "no native bf16" in caplog.text


def test_start_weights_load_once_and_not_on_resume(tmp_path: Path) -> None:
    """StartWeights hashes the file at once and deserialises it on first use, once; a fine-tuning
    run that resumes from its own state never loads the start checkpoint."""
    run(tmp_path / "pre", cfg(steps=3))
    init = tmp_path / "pre" / "flow.pt"
    prior = ClassGaussianPrior(torch.randn(K, 64), torch.full((K, 64), 0.5))

    def finetune(steps: int, start: StartWeights):
        return train_flow(make_flow(), make_data(), prior, cfg(steps=steps), out_path=tmp_path / "ft" / "flow.pt",
                          init_checkpoint=start, config_record=RECORD)

    first = StartWeights.read(init)
    assert "checkpoint" not in vars(first)  # only the digest so far
    assert finetune(3, first).resumed_from == 0
    assert first.checkpoint is first.checkpoint  # loaded once, then cached
    again = StartWeights.read(init)
    assert again.digest == first.digest
    assert finetune(6, again).resumed_from == 3  # extends the same run from its resume state
    assert "checkpoint" not in vars(again)
