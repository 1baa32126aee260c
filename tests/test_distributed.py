"""Tests for nfpi.distributed and DDP training: 2 gloo processes (env set as torchrun does) vs 1 process.

The two-process run must reproduce the single-process run with the same global batch: same data
order, same dequantisation noise and augmentations (drawn per global batch and sliced), actnorm init on rank 0 then
broadcast, and DDP's gradient average equal to the global-batch mean.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from nfpi import distributed as ddp
from nfpi.checkpoint import load_checkpoint

SHAPE = (1, 8, 8)
K = 3
FLOW_RAW = {"preset": "digits", "hidden": 8, "steps": 1}
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _setup(n: int = 48):
    """Data, a flow and a prior, identical in every process (the flow's random init is seeded)."""
    from torch.utils.data import TensorDataset

    from nfpi.config import from_mapping
    from nfpi.density import ClassGaussianPrior
    from nfpi.flows import FlowConfig, build_flow
    from nfpi.training import TrainConfig

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % K
    x = (torch.rand(n, *SHAPE, generator=g) * 100 + y.view(-1, 1, 1, 1) * 70).to(torch.uint8)
    torch.manual_seed(1)
    flow = build_flow(from_mapping(FlowConfig, FLOW_RAW), SHAPE)
    prior = ClassGaussianPrior(torch.randn(K, 64, generator=g) * 0.3, torch.rand(K, 64, generator=g) + 0.5)
    cfg = TrainConfig(steps=5, batch_size=8, warmup_steps=2, log_every=5, checkpoint_every=5, device="cpu",
                      init_size=16, hflip=True, crop_pad=1, rotate_deg=10.0, brightness=0.2, contrast=0.2)
    return flow, TensorDataset(x, y), prior, cfg


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One DDP process, launched the way torchrun launches it (only the environment tells it its rank)."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from nfpi.training import train_flow

    info = ddp.init_distributed("cpu")
    try:
        assert (info.rank, info.world_size, info.is_main) == (rank, world, rank == 0)
        assert ddp.init_distributed("cpu") == info  # idempotent
        # Collectives: mean over ranks, max over ranks, and broadcast of parameters and bool buffers.
        mean = ddp.all_reduce_mean(torch.tensor([float(rank), 2.0 * rank]))
        assert torch.allclose(mean, torch.tensor([(world - 1) / 2, world - 1.0]))
        assert ddp.all_reduce_max(torch.tensor([float(rank)])).item() == world - 1
        m = torch.nn.Linear(3, 2)
        m.register_buffer("flag", torch.tensor(rank == 0))
        with torch.no_grad():
            m.weight.fill_(float(rank))
        ddp.broadcast_module(m, src=0)
        assert m.weight.abs().sum().item() == 0.0 and bool(m.flag)

        flow, data, prior, cfg = _setup()
        # Different local randomness per rank must not matter: everything random is seeded explicitly.
        torch.manual_seed(100 + rank)
        train_flow(flow, data, prior, cfg, out_path=Path(out_dir) / "flow.pt",
                   config_record={"flow": FLOW_RAW, "image_shape": list(SHAPE)})
        torch.save(flow.state_dict(), Path(out_dir) / f"rank{rank}.pt")
    finally:
        ddp.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_single_process_without_torchrun_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    info = ddp.init_distributed("cpu")
    assert info == ddp.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True)
    assert not ddp.is_distributed()
    t = torch.tensor([1.0, 2.0])
    assert ddp.all_reduce_mean(t) is t and ddp.all_reduce_max(t) is t
    ddp.barrier()
    ddp.broadcast_module(torch.nn.Linear(2, 2))
    ddp.cleanup()


def test_bad_torchrun_env_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="MASTER_ADDR is not set"):
        ddp.init_distributed("cpu")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        ddp.init_distributed("cpu")
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        ddp.init_distributed("cpu")


@pytest.mark.slow  # ~12 s of CPU (two spawned interpreters importing torch); 40-60 s wall on the busy 2-core box
def test_two_process_gloo_matches_single_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nfpi.training import train_flow

    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    flow, data, prior, cfg = _setup()
    single = tmp_path / "single"
    train_flow(flow, data, prior, cfg, out_path=single / "flow.pt",
               config_record={"flow": FLOW_RAW, "image_shape": list(SHAPE)})
    ref = flow.state_dict()

    multi = tmp_path / "ddp"
    multi.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(multi)), nprocs=2, join=True)

    r0 = torch.load(multi / "rank0.pt", weights_only=True)
    r1 = torch.load(multi / "rank1.pt", weights_only=True)
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"ranks disagree on {k}"  # DDP keeps replicas bit-identical
        if ref[k].is_floating_point():
            torch.testing.assert_close(r0[k], ref[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(r0[k], ref[k]), k
    # The parameters moved away from the shared initialisation, so the comparison has teeth.
    init = _setup()[0].state_dict()
    moved = max(float((ref[k] - init[k]).abs().max()) for k in ref if ref[k].is_floating_point())
    assert moved > 1e-2
    ck_ddp = load_checkpoint(multi / "flow.pt", expected_kind="flow")
    ck_one = load_checkpoint(single / "flow.pt", expected_kind="flow")
    assert ck_ddp["extra"]["world_size"] == 2 and ck_one["extra"]["world_size"] == 1
    torch.testing.assert_close(ck_ddp["extra"]["final_loss"], ck_one["extra"]["final_loss"], rtol=1e-5, atol=1e-5)
    for k in ck_one["ema"]:
        if ck_one["ema"][k].is_floating_point():
            torch.testing.assert_close(ck_ddp["ema"][k], ck_one["ema"][k], rtol=1e-4, atol=1e-5)


def _stop_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """A DDP process; on rank 1 only, a real SIGTERM arrives while step 2's batch loads."""
    import json
    import signal

    from torch.utils.data import Dataset

    from nfpi.training import TrainingStopped, train_flow

    class SignalAt(Dataset):
        # Rank 1's fetches: the fingerprint's data sample, then step k's shard is fetch 1 + k.
        def __init__(self, base, at: int) -> None:
            self.base, self.at, self.fetches = base, at, 0

        def __len__(self) -> int:
            return len(self.base)

        def __getitem__(self, i: int):
            return self.base[i]

        def __getitems__(self, idx: list[int]):
            if self.fetches == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            self.fetches += 1
            return [self.base[i] for i in idx]

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ddp.init_distributed("cpu")
    try:
        flow, data, prior, cfg = _setup()
        try:
            train_flow(flow, SignalAt(data, 1 + 2) if rank == 1 else data, prior, cfg,
                       out_path=Path(out_dir) / "flow.pt", config_record={"flow": FLOW_RAW, "image_shape": list(SHAPE)})
            outcome = {"stopped": None}
        except TrainingStopped as exc:
            outcome = {"stopped": exc.step, "code": exc.code}
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        ddp.cleanup()


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from nfpi.training import resume_path, train_flow

    mp.spawn(_stop_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    outcomes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Rank 0 got no signal, yet both stop after step 2 (3 steps done), before train.steps=5.
    assert outcomes == [{"stopped": 3, "code": 128 + 15}] * 2
    assert not (tmp_path / "flow.pt").exists()
    assert load_checkpoint(resume_path(tmp_path / "flow.pt"))["step"] == 3  # written by rank 0
    for var in TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    flow, data, prior, cfg = _setup()
    res = train_flow(flow, data, prior, cfg, out_path=tmp_path / "flow.pt",
                     config_record={"flow": FLOW_RAW, "image_shape": list(SHAPE)})
    assert res.resumed_from == 3 and res.steps == 5  # the world size may change between attempts
