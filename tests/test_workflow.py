"""The tiny end-to-end workflow (.test/config) on a real Snakemake: every stage, every table.

Runs in a temporary working directory (the Snakefile finds its rules and default config next to
itself), so the repository's own results/ is untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / ".test" / "config" / "config.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("results/*/logs/*.log")))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs[-20000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wd = tmp_path_factory.mktemp("wf")
    _run(["all", "--cores", "2", "--configfile", str(TINY)], wd)
    return wd


def test_tiny_workflow_produces_every_table_and_figure(tiny_run: Path) -> None:
    r = tiny_run / "results" / "tiny"
    for n in range(1, 7):
        for ext in ("md", "csv", "tex", "sources.json"):
            assert (r / "tables" / f"table{n}.{ext}").is_file(), f"table{n}.{ext}"
    for fig in ("fig1_tsne.png", "fig2_augment.png", "training_curves.png", "samples_nfpi.png"):
        assert (r / "figures" / fig).stat().st_size > 1000, fig
    summary = json.loads((r / "summary.json").read_text())
    assert set(summary["tables"]) >= {f"table{n}" for n in range(1, 7)}
    # the share checkpoint ran; a GD policy that shares NFPI's fine-tuning has no flow of its own, and its
    # Table 1 row says whose numbers it prints
    shared = json.loads((r / "gaussians" / "shared.json").read_text())["representative"]
    assert summary["shared"] == {s: rep for s, rep in shared.items() if rep != s}
    for s, rep in summary["shared"].items():
        assert not (r / "flows" / f"{s}.pt").exists() and (r / "flows" / f"{rep}.pt").is_file()
        assert any(row[4] == f"shares {rep}'s fine-tuning" for row in summary["tables"]["table1"])
    m = json.loads((r / "metrics" / "nfpi.json").read_text())
    assert 0.0 <= m["test"]["nf_acc"] <= 1.0 and m["provenance"]["config_hash"]
    assert (r / "latent_ot" / "metrics.json").is_file() and (r / "flowfactor" / "metrics.json").is_file()
    # The resolved config slice is recorded beside the outputs.
    assert json.loads((r / "flows" / "pretrain.json").read_text())["config"]["train"]["steps"] == 30


def test_editing_lambda_reruns_only_its_descendants(tiny_run: Path) -> None:
    cfg = yaml.safe_load(TINY.read_text())
    cfg["fpi"]["lam"] = 55.0
    edited = tiny_run / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    out = _run(["all", "-n", "--cores", "2", "--quiet", "rules", "--configfile", str(edited)], tiny_run).stdout
    jobs = {line.split()[0] for line in out.splitlines() if line.strip() and not line.startswith(("job", "-", "total"))}
    assert "solve" in jobs and "finetune" in jobs and "tabulate" in jobs
    assert not jobs & {"prepare", "pretrain"}, jobs


def test_editing_alpha_leaves_baseline1_alone_and_figures_leave_the_tables(tiny_run: Path) -> None:
    """A setting's spec holds only the keys that change its solve: fpi.alpha is in the objective that
    NFPI and GD solve, not in Baseline 1 (lambda = 0), whose Gaussians, flow and metrics stay; tabulate
    receives only what the tables depend on, so a figure setting does not rebuild them."""
    base = yaml.safe_load(TINY.read_text())
    edited = tiny_run / "alpha.yaml"
    edited.write_text(yaml.safe_dump({**base, "fpi": {**base["fpi"], "alpha": 2.0}}))
    out = _run(["all", "-n", "--cores", "2", "--configfile", str(edited)], tiny_run).stdout
    planned = {f.strip().removeprefix("results/tiny/") for line in out.splitlines()
               if line.strip().startswith("output:") for f in line.split(":", 1)[1].split(",")}
    assert {"gaussians/nfpi.pt", "gaussians/gd_linear.pt", "flows/nfpi.pt"} <= planned, planned
    assert not planned & {"gaussians/baseline1.pt", "flows/baseline1.pt", "metrics/baseline1.json",
                          "flows/pretrain.pt"}, planned
    # a key no table depends on: the figure and the resolved-config record, not the tables
    edited.write_text(yaml.safe_dump({**base, "figures": {**base.get("figures", {}), "tsne_per_class": 7}}))
    out = _run(["all", "-n", "--cores", "2", "--configfile", str(edited)], tiny_run).stdout
    planned = {f.strip().removeprefix("results/tiny/") for line in out.splitlines()
               if line.strip().startswith("output:") for f in line.split(":", 1)[1].split(",")}
    assert "figures/fig1_tsne.png" in planned and "config.resolved.yaml" in planned, planned
    assert "tables/README.md" not in planned and not any(f.startswith(("flows/", "metrics/")) for f in planned)


def test_tabulate_rebuilds_the_tables_without_torch(tiny_run: Path, tmp_path: Path) -> None:
    """``python -m nfpi tabulate`` on the tiny run's real metrics, as the rule calls it: the same tables, and the
    process never imported torch (tests/test_torch_free.py checks the DAG and the other torch-free stages)."""
    from nfpi.experiments import tables_slice

    from tests.importcheck import run_module

    r = tiny_run / "results" / "tiny"
    cfg = yaml.safe_load((r / "config.resolved.yaml").read_text())
    args = ["tabulate", "--config", json.dumps(tables_slice(cfg), sort_keys=True), "--results", "results/tiny",
            "--out-dir", str(tmp_path / "tables")]
    if (r / "gaussians" / "shared.json").is_file():
        args += ["--shared", "results/tiny/gaussians/shared.json"]
    _, modules = run_module("nfpi", args, tiny_run)
    assert "nfpi.stages.tabulate" in modules and "torch" not in modules
    for name in ("table1.md", "table2.csv", "README.md"):
        assert (tmp_path / "tables" / name).read_text() == (r / "tables" / name).read_text(), name


def test_misspelt_key_fails_before_any_job(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: bad\nfpi:\n  lamda: 3.0\n")
    proc = _run(["all", "--cores", "1", "--configfile", str(bad)], tmp_path, check=False)
    assert proc.returncode != 0
    assert "lamda" in proc.stderr
    assert not (tmp_path / "results").exists()
