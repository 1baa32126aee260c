"""nfpi.io: atomic writes leave either the old file or the new one, never a partial file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from nfpi.io import append_jsonl, atomic_path, atomic_write_json, atomic_write_text, read_json, to_jsonable


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [f.name for f in p.parent.iterdir()] == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # same mode as a plain open(), not mkstemp's 0600


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text('{"x": 2, "trunc')
            raise RuntimeError("killed midway")
    assert read_json(p) == {"x": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_to_jsonable_handles_tensors_numpy_and_nan() -> None:
    out = to_jsonable({"t": torch.tensor([1.0, 2.0]), "n": np.float32(3.0), "bad": math.nan, "p": Path("x")})
    assert out == {"t": [1.0, 2.0], "n": 3.0, "bad": None, "p": "x"}
    json.dumps(out)


def test_read_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(bad)


def test_append_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2})
    assert [json.loads(line)["step"] for line in p.read_text().splitlines()] == [1, 2]
