"""Each paper config (config/<name>.yaml) at reduced scale, through every rule it enables, on real Snakemake.

The real config file is applied, then its reduced override ``.test/config/paper/<name>.yaml``
(steps and epochs cut, a narrow flow of the same preset, small classifiers), then a last overlay
written here with ``data.root`` (and, for ImageNet, ``eva02.pretrained_file``).  The data are a few
images per class in the source's real on-disk format (``tests/fakedata.py``), read by the real
loaders; every class of the source keeps its label.  One config trains its flows with torchrun and 2
gloo processes (``resources.gpus: 2``) and the ImageNet configs fine-tune EVA02 from a tiny timm
EVA02 checkpoint written here (the pretrained-file loading path).

Marked ``paper`` (its own CI step: ``pytest -m paper tests/test_paper_configs.py``); each config runs
in a few minutes on 2 cores.  The wall time of each run is printed and written to
``$NFPI_PAPER_TIMES`` (a JSON file) when that variable is set, with the run's CPU seconds (all its
jobs): on a loaded machine, CPU / 2 is what the run needs of 2 free cores.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fakedata import write_cifar, write_imagenet_batches, write_mnist
from nfpi.checkpoint import load_checkpoint

pytestmark = pytest.mark.paper

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PAPER = ROOT / ".test" / "config" / "paper"
CONFIGS = ("mnist", "cifar10", "cifar100", "imagenet32", "imagenet64")

#: Every rule of the pipeline; each paper config enables all of them.
RULES = {"prepare", "pretrain", "extract", "solve", "finetune", "evaluate", "sample", "cnn", "augment",
         "swin", "eva02", "tsne", "curves", "tabulate", "resolved_config", "latent_ot", "flowfactor"}

#: A tiny timm EVA02 (one block at 28 px): the architecture the imagenet overrides name in
#: ``eva02.model_kwargs``, saved as a plain state dict as timm / torch checkpoints are.
TINY_EVA02 = {"model_name": "eva02_tiny_patch14_224", "depth": 1, "img_size": 28}


def _write_data(name: str, root: Path) -> None:
    """The source's files under ``root``: enough images per class for the override's caps."""
    rng = np.random.default_rng(0)
    if name == "mnist":
        write_mnist(root, rng, n_train=200, n_test=60)
    elif name == "cifar10":
        write_cifar(root, "cifar10", rng, n_train=30, n_test=50)  # 5 training batch files: 15 per class
    elif name == "cifar100":
        write_cifar(root, "cifar100", rng, n_train=400, n_test=200)
    elif name == "imagenet32":  # the original pickles, Imagenet32_train/ + Imagenet32_val/
        write_imagenet_batches(root, 32, rng, [300] * 10, 1000, fmt="pickle")
    elif name == "imagenet64":  # the .npz variant, Imagenet64_train_part1/ + _part2/ + Imagenet64_val/
        write_imagenet_batches(root, 64, rng, [300] * 10, 1000, fmt="npz")
    else:
        raise ValueError(name)


def _write_tiny_eva02(path: Path, num_classes: int = 1000) -> None:
    import timm
    import torch

    torch.manual_seed(0)
    kw = {k: v for k, v in TINY_EVA02.items() if k != "model_name"}
    model = timm.create_model(TINY_EVA02["model_name"], pretrained=False, num_classes=num_classes, **kw)
    torch.save(model.state_dict(), path)


def _snakemake(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)


def _job_stats(stdout: str) -> dict[str, int]:
    """Snakemake's dry-run ``Job stats`` table as {rule: count}."""
    stats: dict[str, int] = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"\s*([A-Za-z_][\w]*)\s+(\d+)\s*", line)
        if m and m.group(1) not in ("total", "job", "count"):
            stats[m.group(1)] = int(m.group(2))
    return stats


def _numbers(obj: Any) -> Iterator[float]:
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield float(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of every finished child process: the whole Snakemake run, its jobs
    included (each parent waits for its children), whatever else loads the machine."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _times_file() -> Path | None:
    p = os.environ.get("NFPI_PAPER_TIMES")
    return Path(p) if p else None


@pytest.fixture(scope="module", params=CONFIGS)
def paper_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    name: str = request.param
    wd = tmp_path_factory.mktemp(f"{name}-")
    data_root = wd / "source"
    t0 = time.perf_counter()
    _write_data(name, data_root)
    last: dict[str, Any] = {"data": {"root": str(data_root)}}
    if name.startswith("imagenet"):
        ckpt = wd / "eva02_tiny.pt"
        _write_tiny_eva02(ckpt)
        last["eva02"] = {"pretrained_file": str(ckpt)}
    gen_s = time.perf_counter() - t0
    overlay = wd / "last.yaml"
    overlay.write_text(yaml.safe_dump(last))
    cfgs = ["--configfile", str(ROOT / "config" / f"{name}.yaml"), str(PAPER / f"{name}.yaml"), str(overlay)]
    # The training rules ask for `gpu: resources.gpus`; a local run does not limit a resource that
    # --resources leaves out, so they run here on the CPU (torchrun with gloo when gpus > 1).
    gpus = int(yaml.safe_load((PAPER / f"{name}.yaml").read_text()).get("resources", {}).get("gpus", 1))
    common = ["all", "--cores", "2", *cfgs]
    keep_going = ["--keep-going"]  # a failing job does not hide the failures of independent ones
    dry = _snakemake([*common, "-n", "--quiet", "rules"], wd)
    assert dry.returncode == 0, dry.stderr[-4000:]
    planned = _job_stats(dry.stdout)
    t0, cpu0 = time.perf_counter(), _children_cpu_s()
    proc = _snakemake([*common, *keep_going], wd)
    run_s, cpu_s = time.perf_counter() - t0, _children_cpu_s() - cpu0
    results = wd / "results" / f"paper_{name}"
    if proc.returncode != 0:
        failed = [p for p in sorted((results / "logs").glob("*.log")) if "Traceback" in p.read_text()]
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in failed)
        raise AssertionError(f"{name}: snakemake failed ({proc.returncode}):\n{proc.stderr[-5000:]}\n{logs[-20000:]}")
    print(f"\n{name}: data {gen_s:.1f} s, snakemake {run_s:.1f} s wall, {cpu_s:.1f} s CPU, "
          f"{sum(planned.values())} jobs")
    if (tf := _times_file()) is not None:
        times = json.loads(tf.read_text()) if tf.is_file() else {}
        times[name] = {"data_s": round(gen_s, 1), "run_s": round(run_s, 1), "cpu_s": round(cpu_s, 1),
                       "jobs": planned}
        tf.write_text(json.dumps(times, indent=1))
    # Table 6 (EVA02) is ImageNet-only in the paper: the CIFAR / MNIST configs switch it off.
    merged = {**yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()).get("experiments", {}),
              **yaml.safe_load((PAPER / f"{name}.yaml").read_text()).get("experiments", {})}
    eva02 = bool(merged.get("eva02", True))
    off = {rule for rule in ("eva02", "latent_ot", "flowfactor") if not merged.get(rule, True)}
    return {"name": name, "wd": wd, "results": results, "planned": planned, "stderr": proc.stderr,
            "common": common, "gpus": gpus, "eva02": eva02, "off": off}


def _ran(results: Path) -> dict[str, int]:
    """Jobs run per rule, from the benchmark records (one per job; named ``<rule>`` or ``<rule>_<wildcards>``).
    After the ``share`` checkpoint Snakemake adds the jobs of the settings that do not share, so the
    dry run's plan is a lower bound and these counts are the run's own."""
    names = sorted(RULES | {"share"}, key=len, reverse=True)  # latent_ot before a shorter prefix
    out: dict[str, int] = {}
    for f in (results / "benchmarks").glob("*.tsv"):
        rule = next(n for n in names if f.stem == n or f.stem.startswith(n + "_"))
        out[rule] = out.get(rule, 0) + 1
    return out


def test_every_rule_of_the_config_ran(paper_run: dict[str, Any]) -> None:
    planned, results = paper_run["planned"], paper_run["results"]
    rules = RULES - paper_run["off"]  # what the config switches off (Table 6 on CIFAR / MNIST, ...)
    # `share` (a checkpoint) runs when some setting could share another's fine-tuning (experiments.share_tol)
    assert set(planned) - {"share"} == rules | {"all"}, sorted((set(planned) - {"share"}) ^ (rules | {"all"}))
    ran = _ran(results)
    assert set(ran) == set(planned) - {"all"}, sorted(set(ran) ^ (set(planned) - {"all"}))
    assert all(ran[k] >= n for k, n in planned.items() if k != "all"), (ran, planned)
    total = sum(ran.values()) + 1  # + `all`
    # every job Snakemake knew of at the end ran: "N of N steps (100%) done", one benchmark record per job
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", paper_run["stderr"])
    assert done and done[-1] == (str(total), str(total)), (done[-1:], total)
    again = _snakemake([*paper_run["common"], "-n"], paper_run["wd"])
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_outputs_exist_and_metrics_are_finite(paper_run: dict[str, Any]) -> None:
    r: Path = paper_run["results"]
    for n in range(1, 7 if paper_run["eva02"] else 6):  # Table 6 is EVA02's
        assert (r / "tables" / f"table{n}.md").is_file(), f"table{n}"
    assert (r / "tables" / "table6.md").is_file() == paper_run["eva02"]
    for fig in ("fig1_tsne.png", "fig2_augment.png", "training_curves.png", "samples_nfpi.png"):
        assert (r / "figures" / fig).stat().st_size > 1000, fig
    meta = json.loads((r / "data" / "meta.json").read_text())
    assert meta["num_classes"] == {"mnist": 10, "cifar10": 10, "cifar100": 100}.get(paper_run["name"], 1000)
    checked = 0
    for sub in ("metrics", "cnn", "swin", *(k for k in ("eva02", "latent_ot", "flowfactor") if k not in paper_run["off"])):
        files = sorted((r / sub).glob("*.json"))
        assert files, sub
        for f in files:
            values = list(_numbers(json.loads(f.read_text())))
            bad = [v for v in values if not math.isfinite(v)]
            assert not bad, f"{f.relative_to(r)}: non-finite values {bad[:5]}"
            checked += 1
    nf = json.loads((r / "metrics" / "nfpi.json").read_text())
    assert 0.0 <= nf["test"]["nf_acc"] <= 1.0
    # one result per job of each classifier / evaluate rule that ran (benchmark records), none missing
    ran = _ran(r)
    for sub, rule in (("metrics", "evaluate"), ("cnn", "cnn"), ("swin", "swin"), ("eva02", "eva02")):
        assert len(list((r / sub).glob("*.json"))) == ran.get(rule, 0), (sub, ran.get(rule, 0))
    assert checked >= sum(ran.get(k, 0) for k in ("evaluate", "cnn", "swin", "eva02")) + 2


def test_training_processes_and_eva02_weights(paper_run: dict[str, Any]) -> None:
    r: Path = paper_run["results"]
    world = max(paper_run["gpus"], 1)
    for flow in ("pretrain", "nfpi"):  # the training processes record their number in the checkpoint
        assert load_checkpoint(r / "flows" / f"{flow}.pt")["extra"]["world_size"] == world, flow
    if not paper_run["eva02"]:  # Table 6 off (CIFAR, MNIST): no EVA02 job ran
        assert not (r / "eva02").exists()
        return
    # Table 6 fine-tunes pretrained weights: the tiny generated timm checkpoint stands in for EVA02-B, in
    # every EVA02 job and in each of its processes (the eva02 rule runs torchrun too when gpus > 1)
    for f in sorted((r / "eva02").glob("*.json")):
        eva = json.loads(f.read_text())
        assert eva["pretrained"] is True and eva["config"]["pretrained_file"].endswith("eva02_tiny.pt"), f.name
        log = (r / "logs" / f"eva02_{f.stem}.log").read_text()
        assert log.count("loaded pretrained weights from ") == world and "eva02_tiny.pt" in log, f.name
