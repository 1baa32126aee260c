"""What does not need torch does not import it: the workflow's DAG and the torch-free stages, checked on real
processes (``sys.modules`` when the process exits: every module it imported, however).

torch costs ~3 CPU-seconds to import; the DAG is built at every ``snakemake`` call and ``tabulate``,
``resolved_config`` and ``curves`` never compute with it (docs/benchmarks.md, "Start-up of torch-free stages").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tests.importcheck import ROOT, run_module


def test_the_dag_of_the_default_config_is_built_without_torch(tmp_path: Path) -> None:
    """A real ``snakemake -n`` on config/config.yaml: the config check, every rule's params, the DAG."""
    proc, modules = run_module("snakemake", ["-s", str(ROOT / "Snakefile"), "-n", "--cores", "1", "all"], tmp_path)
    assert "This was a dry-run" in proc.stdout and "tabulate" in proc.stdout
    # the check sees the imports it is about: the config check and the dataclasses it builds
    assert {"nfpi.validation", "nfpi.data.config", "nfpi.training.config", "nfpi.classifiers.config"} <= modules
    assert "torch" not in modules, sorted(m for m in modules if m.startswith("nfpi"))


def test_resolved_config_and_curves_run_without_torch(tmp_path: Path) -> None:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    out = tmp_path / "config.resolved.yaml"
    _, modules = run_module("nfpi", ["resolved_config", "--config", json.dumps(cfg), "--threads", "1", "--out", str(out)],
                            tmp_path)
    assert yaml.safe_load(out.read_text()) == cfg
    assert "nfpi.stages.resolved_config" in modules and "torch" not in modules

    log = tmp_path / "pretrain.jsonl"
    log.write_text("".join(json.dumps({"step": s, "bpd": 3.0 - 0.1 * s}) + "\n" for s in range(1, 6)))
    png = tmp_path / "curves.png"
    _, modules = run_module("nfpi", ["curves", "--threads", "1", "--out", str(png), str(log)], tmp_path)
    assert png.stat().st_size > 1000
    assert "nfpi.stages.curves" in modules and "torch" not in modules


def test_a_stage_gets_its_torch_settings_when_it_imports_torch(tmp_path: Path) -> None:
    """``--threads`` reaches torch although the stage set-up ran before torch was imported (and the probe sees
    torch when a process does import it)."""
    probe = tmp_path / "probe_stage.py"
    probe.write_text("import sys, argparse\n"
                     "from nfpi.cli import start_stage\n"
                     "start_stage(argparse.Namespace(threads=1), 'probe')\n"
                     "assert 'torch' not in sys.modules\n"
                     "import torch\n"
                     "print(torch.get_num_threads(), float(torch.tensor(1e-40, dtype=torch.float32)))\n")
    proc, modules = run_module("probe_stage", [], tmp_path)
    assert "torch" in modules
    threads, tiny = proc.stdout.split()
    assert int(threads) == 1
    assert float(tiny) == 0.0  # a denormal float32 is flushed to zero: flush_denormals ran


def test_start_stage_applies_the_settings_at_once_when_torch_is_loaded() -> None:
    import argparse

    import torch

    from nfpi.cli import start_stage

    before = torch.get_num_threads()
    try:
        start_stage(argparse.Namespace(threads=1), "probe")
        assert torch.get_num_threads() == 1
        assert float(torch.tensor(1e-40, dtype=torch.float32)) == 0.0
    finally:
        torch.set_num_threads(before)
    assert sys.modules["torch"] is torch
