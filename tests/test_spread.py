"""nfpi.stages.spread: Table 1 over replicate runs; refuses runs that are not replicates of each other."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from nfpi.config import ConfigError
from nfpi.experiments import table_settings
from nfpi.stages.spread import main, spread_table

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())


def _run(root: Path, name: str, seed: int, acc: dict[str, float], cfg: dict | None = None) -> Path:
    r = root / name
    (r / "metrics").mkdir(parents=True)
    c = copy.deepcopy(cfg or CONFIG)
    c.update(run=name, seed=seed)
    (r / "config.resolved.yaml").write_text(yaml.safe_dump(c))
    for s in table_settings(CONFIG)["table1"]:
        (r / "metrics" / f"{s}.json").write_text(json.dumps({"test": {"nf_acc": acc.get(s, 0.5)}}))
    (r / "cnn").mkdir()
    (r / "cnn" / "nfpi.json").write_text(json.dumps({"test": {"top1": acc["nfpi"] - 0.1}}))
    return r


def test_mean_and_sd_over_seeds(tmp_path: Path) -> None:
    runs = [_run(tmp_path, f"d{s}", s, {"nfpi": v, "baseline1": 0.8}) for s, v in ((0, 0.97), (1, 0.98), (2, 0.99))]
    table, summary = spread_table(runs)
    assert summary["nfpi"]["NF-Acc"]["mean"] == pytest.approx(98.0)
    assert summary["nfpi"]["NF-Acc"]["sd"] == pytest.approx(1.0)
    assert summary["nfpi"]["NF-Acc"]["seeds"] == [0, 1, 2]
    assert summary["nfpi"]["CNN-Acc"]["mean"] == pytest.approx(88.0)
    assert summary["baseline1"]["NF-Acc"]["sd"] == pytest.approx(0.0)
    assert "CNN-Acc" not in summary["baseline1"]  # no CNN files for it: no row, not a made-up one
    main([str(r) for r in runs] + ["--out", str(tmp_path / "out")])
    assert "98.00" in (tmp_path / "out" / "seeds.md").read_text()


def test_refuses_runs_that_are_not_replicates(tmp_path: Path) -> None:
    other = copy.deepcopy(CONFIG)
    other["fpi"]["lam"] = 3.0
    a = _run(tmp_path, "a", 0, {"nfpi": 0.9})
    b = _run(tmp_path, "b", 1, {"nfpi": 0.9}, cfg=other)
    with pytest.raises(ConfigError, match="fpi.lam"):
        spread_table([a, b])
    c = _run(tmp_path, "c", 0, {"nfpi": 0.9})
    with pytest.raises(ConfigError, match="repeat a seed"):
        spread_table([a, c])
    with pytest.raises(FileNotFoundError, match="config.resolved.yaml"):
        spread_table([a, tmp_path / "missing"])


def test_a_shared_setting_reads_its_representatives_metrics(tmp_path: Path) -> None:
    """A run where gd_linear shared NFPI's fine-tuning (nfpi.share) has no metrics/gd_linear.json."""
    a = _run(tmp_path, "a", 0, {"nfpi": 0.97, "gd_linear": 0.97})
    b = _run(tmp_path, "b", 1, {"nfpi": 0.99, "gd_linear": 0.5})
    (b / "metrics" / "gd_linear.json").unlink()
    (b / "gaussians").mkdir()
    (b / "gaussians" / "shared.json").write_text(json.dumps({"representative": {"gd_linear": "nfpi", "nfpi": "nfpi"}}))
    _, summary = spread_table([a, b])
    assert summary["gd_linear"]["NF-Acc"]["values"] == pytest.approx([97.0, 99.0])
