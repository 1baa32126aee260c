"""Tests for nfpi.checkpoint: round trip, weights-only loading, clear errors naming the file."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

import nfpi
from nfpi.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _small_state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict()}


def test_round_trip_stamps_and_weights_only(tmp_path: Path) -> None:
    st = _small_state()
    path = tmp_path / "sub" / "ck.pt"
    save_checkpoint(path, kind="flow", model=st["model"], optimizer=st["optimizer"], step=7,
                    rng=capture_rng_state(), config={"flow": {"levels": 2, "res_blocks": (1, 2)}, "p": Path("/x")},
                    gaussians={"means": torch.zeros(2, 3)})
    # The file must load under the strict loader (no pickled code objects).
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "nfpi-checkpoint" and raw["version"] == FORMAT_VERSION
    ck = load_checkpoint(path, expected_kind="flow")
    assert ck["nfpi_version"] == nfpi.__version__ and ck["torch_version"] == torch.__version__
    assert ck["step"] == 7 and ck["kind"] == "flow" and ck["time"].endswith("Z")
    assert ck["config"] == {"flow": {"levels": 2, "res_blocks": [1, 2]}, "p": "/x"}
    for k, v in st["model"].items():
        assert torch.equal(ck["model"][k], v)
    opt_state = ck["optimizer"]["state"]
    assert set(opt_state) == set(st["optimizer"]["state"])
    # No temporary files are left behind by the atomic write.
    assert [p.name for p in path.parent.iterdir()] == ["ck.pt"]


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leave a cached gaussian in numpy's legacy state
    save_checkpoint(tmp_path / "r.pt", kind="resume", model={}, rng=capture_rng_state())
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pt.*not found"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_or_truncated_file_names_it(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad.pt"
    save_checkpoint(path, kind="flow", model=_small_state()["model"])
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(random.Random(0).randrange(256) for _ in range(len(data))))
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and ("truncated" in msg or "corrupt" in msg) and "rerun" in msg


def test_not_an_nfpi_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"plain\.pt: not an nfpi checkpoint"):
        load_checkpoint(path)


def test_pickled_object_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a file that needs arbitrary unpickling is reported, not executed."""
    path = tmp_path / "evil.pt"
    torch.save({"format": "nfpi-checkpoint", "version": 1, "obj": _Unsafe()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_checkpoint(path)


class _Unsafe:
    pass


def test_newer_version_and_wrong_kind(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, kind="resume", model={})
    with pytest.raises(CheckpointError, match=r"ck\.pt: checkpoint kind is 'resume', expected 'flow'"):
        load_checkpoint(path, expected_kind="flow")
    ck = torch.load(path, weights_only=True)
    ck["version"] = FORMAT_VERSION + 1
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match=r"ck\.pt: checkpoint format version .* newer"):
        load_checkpoint(path)


def test_failed_save_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, kind="flow", model={"w": torch.ones(3)}, step=1)
    with pytest.raises(TypeError, match=r"ck\.pt.*\['extra'\]\['bad'\].*weights_only"):
        save_checkpoint(path, kind="flow", model={"w": torch.ones(3)}, step=2, extra={"bad": _Unsafe()})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_gpu_tensors_saved_on_cpu(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    save_checkpoint(tmp_path / "g.pt", kind="flow", model={"w": torch.ones(2, device="cuda")})
    assert torch.load(tmp_path / "g.pt", weights_only=True)["model"]["w"].device.type == "cpu"
