"""Bad configs and bad data fail early, in one line naming the key (or file), the value and the fix.

Three layers:

* ``check_config`` on its own (fast): every rule of ``nfpi.validation`` with a config that breaks it,
  the generated schema's ranges (every numeric key has one), the shipped configs passing.
* The real workflow: ``snakemake -n`` on 20 distinct bad configs (run a few at a time: each builds the
  DAG in a fresh process), each failing before the first job with one line on stderr, exit status 1,
  no traceback and no ``results/`` folder.
* Bad data through the ``prepare`` rule and its stage: one line naming the file, nothing half-written.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nfpi.config import ConfigError
from nfpi.data import DataConfig, DataError, prepare_dataset
from nfpi.schema import build_schema
from nfpi.validation import RULES, check_config, load_schema, schema_error_line

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
NUMERIC = {"integer", "number"}
RANGE_KEYWORDS = {"minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "enum"}


def _merge(base: dict, over: dict) -> dict:
    """Snakemake's config merge: nested mappings merged key by key, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _default() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _fails(over: dict) -> str:
    """check_config's message for the default config with ``over`` merged in."""
    with pytest.raises(ConfigError) as exc:
        check_config(_merge(_default(), over))
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg  # one line (a missing-weights line carries a whole command)
    return msg


# ---------------------------------------------------------------------------------------------------
# The schema: a range for every numeric key


def _numeric_leaves(node: dict, key: str) -> list[tuple[str, dict]]:
    """(dotted key, schema node) of every numeric value (a number, or the items of a list of numbers)."""
    out: list[tuple[str, dict]] = []
    for k, sub in node.get("properties", {}).items():
        out += _numeric_leaves(sub, f"{key}.{k}" if key else k)
    branches = node.get("anyOf", [node])
    for b in branches:
        types = b.get("type") if isinstance(b.get("type"), list) else [b.get("type")]
        if NUMERIC & set(types) or (b.get("enum") and any(isinstance(e, (int, float)) for e in b["enum"])):
            out.append((key, b))
        items = b.get("items")
        if isinstance(items, dict) and (items.get("type") in NUMERIC):
            out.append((f"{key}[]", items))
    return out


def test_every_numeric_key_of_the_schema_has_a_range() -> None:
    leaves = _numeric_leaves(build_schema(), "")
    assert len(leaves) > 150  # the walk does reach every section
    missing = [k for k, node in leaves if not RANGE_KEYWORDS & set(node)]
    assert not missing, f"numeric keys without a range (add them to nfpi.schema.RANGES): {missing}"


def test_loaded_schema_is_the_generated_one() -> None:
    assert load_schema() == yaml.safe_load(yaml.safe_dump(build_schema()))


@pytest.mark.parametrize("override", [None, ".test/config/config.yaml", ".test/config/custom.yaml"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml") if p.name != "config.yaml") + sorted(
    # each paper config with its reduced-scale CI override (tests/test_paper_configs.py), caught here in seconds
    f"config/{p.name}+{p.relative_to(ROOT)}" for p in (ROOT / ".test" / "config" / "paper").glob("*.yaml")))
def test_shipped_configs_pass(override: str | None, tmp_path: Path) -> None:
    cfg = _default()
    for part in (override.split("+") if override else []):
        cfg = _merge(cfg, yaml.safe_load((ROOT / part).read_text()))
    if cfg["data"].get("root") and not cfg["data"].get("download"):
        cfg["data"]["root"] = str(tmp_path)  # the paper's data folders are not on this machine
        if cfg["data"]["name"] in ("mnist", "cifar10", "cifar100"):  # the reduced overrides: files checked offline
            from fakedata import write_cifar, write_mnist

            rng = np.random.default_rng(0)
            if cfg["data"]["name"] == "mnist":
                write_mnist(tmp_path, rng, n_train=20, n_test=10)
            else:
                write_cifar(tmp_path, cfg["data"]["name"], rng, n_train=10, n_test=10)
    for sec in ("cnn", "swin", "eva02"):  # nor the pretrained classifier weights (their existence is checked)
        if (cfg.get(sec) or {}).get("pretrained_file"):
            weights = tmp_path / f"{sec}.pth"
            weights.write_bytes(b"")
            cfg[sec]["pretrained_file"] = str(weights)
    before = copy.deepcopy(cfg)
    check_config(cfg)
    assert cfg == before  # checked, not modified (Snakemake's validate fills in the defaults afterwards)


# ---------------------------------------------------------------------------------------------------
# check_config, rule by rule: (overlay, words the one-line message must contain)

CASES: list[tuple[str, dict, list[str]]] = [
    # pass 1: the schema (types, enums, ranges, unknown keys)
    ("misspelt key", {"fpi": {"lamda": 3.0}}, ["'fpi.lamda'", "3.0", "did you mean 'lam'?"]),
    ("misspelt section", {"fip": {"lam": 3.0}}, ["'fip'", "did you mean 'fpi'?"]),
    ("enum value", {"fpi": {"pi": "meen"}}, ["'fpi.pi'", "'meen'", "'mean', 'pair'", "did you mean 'mean'?"]),
    ("wrong type", {"pretrain": {"lr": "fast"}}, ["'pretrain.lr'", "'fast'", "number"]),
    ("bool for an int", {"cnn": {"epochs": True}}, ["'cnn.epochs'", "true", "integer"]),
    ("rounds 0", {"finetune": {"rounds": 0}}, ["'finetune.rounds'", "= 0", ">= 1"]),
    ("epochs 0", {"cnn": {"epochs": 0}}, ["'cnn.epochs'", "= 0", ">= 1"]),
    ("checkpoint_every 0", {"pretrain": {"checkpoint_every": 0}}, ["'pretrain.checkpoint_every'", ">= 1"]),
    ("log_every 0", {"finetune": {"log_every": 0}}, ["'finetune.log_every'", ">= 1"]),
    ("ema_decay 1", {"pretrain": {"ema_decay": 1.0}}, ["'pretrain.ema_decay'", "< 1"]),
    ("val_fraction 1", {"data": {"val_fraction": 1.0}}, ["'data.val_fraction'", "< 1"]),
    ("channels 2", {"data": {"channels": 2}}, ["'data.channels'", "= 2", "1, 3, null"]),
    ("gpus negative", {"resources": {"gpus": -1}}, ["'resources.gpus'", "-1", ">= 0"]),
    ("gpus fractional", {"resources": {"gpus": 1.5}}, ["'resources.gpus'", "1.5", "integer"]),
    ("lambda 0 in the sweep", {"experiments": {"lambdas": [0.0, 10.0]}}, ["'experiments.lambdas[0]'", "> 0"]),
    ("duplicate lambda", {"experiments": {"lambdas": [10.0, 10.0]}}, ["'experiments.lambdas'", "twice"]),
    ("ablation_lam 0", {"experiments": {"ablation_lam": 0.0}}, ["'experiments.ablation_lam'", "> 0"]),
    ("one figure lambda", {"experiments": {"figure_lambdas": [10.0]}}, ["'experiments.figure_lambdas'", "exactly 2"]),
    ("run name", {"run": "my run"}, ["'run'", "'my run'", "must match"]),
    ("device", {"pretrain": {"device": "gpu"}}, ["'pretrain.device'", "'gpu'"]),
    ("transformation", {"flowfactor": {"transformations": ["rotate", "shear"]}},
     ["'flowfactor.transformations[1]'", "'shear'", "'rotate', 'scale', 'intensity'"]),
    ("latent_ot batch", {"latent_ot": {"batch_size": 1}}, ["'latent_ot.batch_size'", ">= 2"]),
    ("res_blocks item", {"flow": {"res_blocks": [-1]}}, ["'flow.res_blocks[0]'", ">= 0"]),
    ("section not a mapping", {"sample": 3}, ["'sample'", "= 3", "mapping"]),
    # pass 2: cross-key rules
    ("rounds > steps", {"finetune": {"rounds": 700}}, ["'finetune.rounds'", "700", "finetune.steps = 600"]),
    ("warmup > steps", {"pretrain": {"warmup_steps": 5000}},
     ["'pretrain.warmup_steps'", "5000", "pretrain.steps = 800"]),
    ("batch vs gpus", {"resources": {"gpus": 3}}, ["'pretrain.batch_size'", "64", "resources.gpus = 3"]),
    ("res_blocks length", {"flow": {"res_blocks": [1, 2, 3]}}, ["'flow.res_blocks'", "[1, 2, 3]", "2 levels"]),
    ("steps_per_level vs levels", {"flow": {"levels": 3, "steps_per_level": [2, 2]}},
     ["'flow.steps_per_level'", "3 levels of flow.levels"]),
    ("unknown preset", {"flow": {"preset": "cifr"}}, ["'flow.preset'", "'cifr'", "did you mean 'cifar'?"]),
    ("unknown flow arch", {"flow": {"arch": "glwo"}}, ["'flow.arch'", "'glwo'", "did you mean 'glow'?"]),
    ("no data.root", {"data": {"name": "npz"}}, ["'data.root'", "missing", "'npz'"]),
    ("no root for mnist offline", {"data": {"name": "mnist"}}, ["'data.root'", "missing", "'mnist'"]),
    ("download for npz", {"data": {"name": "npz", "download": True}}, ["'data.download'", "only mnist"]),
    ("var bounds", {"fpi": {"var_min": 1.0, "var_max": 0.5}}, ["'fpi.var_min'", "fpi.var_max"]),
    ("lambda path grid", {"fpi": {"lam": "auto", "path": {"lam_min": 100.0, "lam_max": 10.0}}},
     ["'fpi.path.lam_min'", "100", "fpi.path.lam_max"]),
    ("lambda path without validation", {"fpi": {"lam": "auto"}, "data": {"val_fraction": 0.0}},
     ["'data.val_fraction'", "fpi.lam: auto"]),
    ("lambda path points", {"fpi": {"lam": "auto", "path": {"points": 1}}}, ["'fpi.path.points'", ">= 2"]),
    ("lambda word", {"fpi": {"lam": "automatic"}}, ["'fpi.lam'", "'automatic'"]),
    ("step bounds", {"fpi": {"step_init": 0.001, "step_min": 0.01}}, ["'fpi.step_min'", "fpi.step_init"]),
    ("gd bounds", {"gd": {"gd_vmin": 2.0, "gd_vmax": 1.0}}, ["'gd.gd_vmin'", "gd.gd_vmax"]),
    ("figure lambdas order", {"experiments": {"figure_lambdas": [1000.0, 10.0]}},
     ["'experiments.figure_lambdas'", "[1000.0, 10.0]", "small"]),
    ("evaluate without test", {"evaluate": {"splits": ["val"]}}, ["'evaluate.splits'", "'test'"]),
    ("classifier arch", {"swin": {"arch": "swim"}}, ["'swin.arch'", "'swim'", "did you mean 'swin'?"]),
    ("onecycle max_lr < lr", {"cnn": {"schedule": "onecycle", "lr": 0.1, "max_lr": 0.01}},
     ["'cnn.max_lr'", "0.01", "cnn.lr = 0.1"]),
    ("timm model name", {"eva02": {"model_kwargs": {"model_name": "eva02_base_patch14_449"}}},
     ["'eva02.model_kwargs.model_name'", "'eva02_base_patch14_449'", "did you mean 'eva02_base_patch14_448'?"]),
    ("eva02 file", {"eva02": {"pretrained_file": "nowhere/eva02.safetensors"}},
     ["'eva02.pretrained_file'", "nowhere/eva02.safetensors", "torch.save(timm.create_model(", "safetensors"]),
]


@pytest.mark.parametrize("over,words", [(o, w) for _, o, w in CASES], ids=[n for n, _, _ in CASES])
def test_check_config_names_key_value_and_fix(over: dict, words: list[str]) -> None:
    msg = _fails(over)
    for w in words:
        assert w in msg, (w, msg)
    assert "--configfile" in msg, msg


def test_missing_required_key() -> None:
    cfg = _default()
    del cfg["resources"]["mem_mb"]["infer"]
    with pytest.raises(ConfigError, match=r"config key 'resources.mem_mb.infer' is missing.*--configfile"):
        check_config(cfg)


def test_data_root_must_hold_the_source_files(tmp_path: Path) -> None:
    msg = _fails({"data": {"name": "npz", "root": str(tmp_path / "nowhere")}})
    assert "'data.root'" in msg and "nowhere" in msg and "does not exist" in msg
    msg = _fails({"data": {"name": "npz", "root": str(tmp_path)}})
    assert str(tmp_path / "train.npz") in msg
    msg = _fails({"data": {"name": "imagefolder", "root": str(tmp_path)}})
    assert str(tmp_path / "train") in msg and "train/<class>/<image>" in msg
    msg = _fails({"data": {"name": "cifar10", "root": str(tmp_path)}})
    assert "cifar-10-batches-py" in msg and "data.download: true" in msg
    # with download: true torchvision fills the folder; with the files present the rule passes
    check_config(_merge(_default(), {"data": {"name": "cifar10", "root": str(tmp_path / "new"), "download": True}}))
    (tmp_path / "train.npz").write_bytes(b"")  # existence only: reading is prepare's job
    check_config(_merge(_default(), {"data": {"name": "npz", "root": str(tmp_path)}}))


def test_classifier_rules_only_for_the_runs_made(tmp_path: Path) -> None:
    off = {"experiments": {"eva02": False}, "eva02": {"pretrained_file": "nowhere.pth"}}
    check_config(_merge(_default(), off))
    weights = tmp_path / "eva02.pth"
    weights.write_bytes(b"")
    check_config(_merge(_default(), {"eva02": {"pretrained_file": str(weights)}}))


def test_every_rule_is_documented() -> None:
    doc = " ".join((ROOT / "docs" / "config.md").read_text().split())
    for rule in RULES:
        first = " ".join((rule.__doc__ or "").split())
        assert first and first in doc, f"docs/config.md does not list the rule of {rule.__name__}: {first!r}"


def test_dataclass_checks_are_the_last_net() -> None:
    """A schema without ranges (an older file) still stops a bad value, through the dataclass's own check."""
    schema = json.loads(json.dumps(build_schema()))
    del schema["properties"]["data"]["properties"]["test_fraction"]["exclusiveMaximum"]
    with pytest.raises(ConfigError) as exc:
        check_config(_merge(_default(), {"data": {"test_fraction": 1.5}}), schema=schema)
    assert "data.test_fraction=1.5" in str(exc.value) and "\n" not in str(exc.value)


def test_schema_net_failure_is_one_line() -> None:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = _merge(_default(), {"fpi": {"alpha": -1.0}})
    with pytest.raises(WorkflowError) as exc:
        validate(cfg, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    line = schema_error_line(exc.value)
    assert line.startswith("config key 'fpi.alpha'") and "-1.0" in line and "\n" not in line, line


# ---------------------------------------------------------------------------------------------------
# The real workflow: `snakemake -n` stops before the first job


def _snakemake(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _npz_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root


# (name, overlay, words the stderr line must contain); `{tmp}` is replaced by the case's folder.
WORKFLOW_CASES: list[tuple[str, dict, list[str]]] = [
    ("finetune_rounds_0", {"finetune": {"rounds": 0}}, ["finetune.rounds", "= 0"]),
    ("cnn_epochs_0", {"cnn": {"epochs": 0}}, ["cnn.epochs", "= 0"]),
    ("res_blocks_length", {"flow": {"res_blocks": [1, 2, 3]}}, ["flow.res_blocks", "[1, 2, 3]"]),
    ("missing_data_root", {"data": {"name": "npz"}}, ["data.root", "missing"]),
    ("misspelt_key", {"fpi": {"lamda": 3.0}}, ["fpi.lamda", "did you mean 'lam'?"]),
    ("misspelt_section", {"finetuen": {"steps": 10}}, ["finetuen", "did you mean 'finetune'?"]),
    ("enum", {"pretrain": {"optimizer": "adamm"}}, ["pretrain.optimizer", "'adamm'", "did you mean 'adam'?"]),
    ("type", {"sample": {"per_class": "many"}}, ["sample.per_class", "'many'"]),
    ("negative_gpus", {"resources": {"gpus": -1}}, ["resources.gpus", "-1"]),
    ("batch_vs_gpus", {"resources": {"gpus": 3}}, ["pretrain.batch_size", "resources.gpus = 3"]),
    ("warmup_gt_steps", {"finetune": {"warmup_steps": 601}}, ["finetune.warmup_steps", "601"]),
    ("rounds_gt_steps", {"finetune": {"rounds": 601}}, ["finetune.rounds", "601"]),
    ("data_root_missing_folder", {"data": {"name": "imagefolder", "root": "{tmp}/nowhere"}},
     ["data.root", "nowhere", "does not exist"]),
    ("npz_without_train", {"data": {"name": "npz", "root": "{tmp}"}}, ["data.root", "train.npz"]),
    ("eva02_weights_missing", {"eva02": {"pretrained_file": "{tmp}/eva02.pth"}},
     ["eva02.pretrained_file", "eva02.pth", "torch.save"]),
    ("unknown_preset", {"flow": {"preset": "imagenet"}}, ["flow.preset", "'imagenet'"]),
    ("figure_lambdas_order", {"experiments": {"figure_lambdas": [1000.0, 1.0]}}, ["experiments.figure_lambdas"]),
    ("duplicate_lambdas", {"experiments": {"lambdas": [10.0, 10.0]}}, ["experiments.lambdas", "twice"]),
    ("run_name", {"run": "my run"}, ["'run'", "'my run'"]),
    ("test_fraction_1", {"data": {"test_fraction": 1.0}}, ["data.test_fraction", "1.0"]),
    ("onecycle_max_lr", {"cnn": {"schedule": "onecycle", "lr": 0.1, "max_lr": 0.01}}, ["cnn.max_lr", "cnn.lr"]),
]


def _fill(value: Any, tmp: Path) -> Any:
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    return value


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess[str]]]:
    """Every workflow case's `snakemake -n`, three at a time (each is a fresh process that builds the DAG)."""

    def one(case: tuple[str, dict, list[str]]) -> tuple[Path, subprocess.CompletedProcess[str]]:
        name, over, _ = case
        wd = tmp_path_factory.mktemp(name)
        cfg = wd / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"run": name, **_fill(over, wd)}))
        return wd, _snakemake(["all", "-n", "--cores", "1", "--configfile", str(cfg)], wd)

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(one, WORKFLOW_CASES))
    return {case[0]: res for case, res in zip(WORKFLOW_CASES, results)}


@pytest.mark.slow
@pytest.mark.parametrize("name,words", [(n, w) for n, _, w in WORKFLOW_CASES], ids=[n for n, _, _ in WORKFLOW_CASES])
def test_bad_config_fails_before_the_first_job(dry_runs: dict, name: str, words: list[str]) -> None:
    wd, proc = dry_runs[name]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("nfpi config error: ")]
    assert len(errors) == 1 and len(lines) <= 2, proc.stderr[-4000:]  # the message (+ Snakemake's config note)
    for w in words:
        assert w in errors[0], (w, errors[0])
    assert not (wd / "results").exists()
    assert "Building DAG" not in proc.stderr + proc.stdout


def test_workflow_suite_has_at_least_fifteen_distinct_bad_configs() -> None:
    overlays = {json.dumps(o, sort_keys=True) for _, o, _ in WORKFLOW_CASES}
    assert len(overlays) == len(WORKFLOW_CASES) >= 15


# ---------------------------------------------------------------------------------------------------
# Bad data: fails in `prepare` with one line naming the file, and nothing half-written


def _png(path: Path, hw: tuple[int, int], seed: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)).save(path)


def _bad_npz_corrupt(root: Path) -> tuple[dict, str]:
    (root / "train.npz").write_bytes(b"PK\x03\x04 this is not a complete zip archive")
    return {"name": "npz", "root": str(root)}, str(root / "train.npz")


def _npz_files(root: Path, named: str, **splits: dict[str, np.ndarray]) -> tuple[dict, str]:
    """``{split}.npz`` files with the given arrays; the data slice and the file the error must name."""
    for split, arrays in splits.items():
        np.savez(root / f"{split}.npz", **arrays)
    return {"name": "npz", "root": str(root)}, str(root / f"{named}.npz")


_GREY8 = {"images": np.zeros((8, 4, 4), np.uint8), "labels": np.arange(8) % 2}  # a good train.npz


def _bad_npz_label_count(root: Path) -> tuple[dict, str]:
    return _npz_files(root, "train", train={"images": np.zeros((6, 4, 4), np.uint8), "labels": np.arange(5) % 2})


def _bad_npz_unknown_test_label(root: Path) -> tuple[dict, str]:
    return _npz_files(root, "test", train=_GREY8, test={"images": np.zeros((2, 4, 4), np.uint8),
                                                        "labels": np.array([0, 7])})


def _bad_npz_class_names(root: Path) -> tuple[dict, str]:
    return _npz_files(root, "train", train={**_GREY8, "labels": np.arange(8) % 4, "class_names": np.array(["a", "b"])})


def _bad_npz_sizes(root: Path) -> tuple[dict, str]:
    return _npz_files(root, "test", train=_GREY8, test={"images": np.zeros((2, 6, 6), np.uint8),
                                                        "labels": np.array([0, 1])})


def _bad_npz_float_pixels(root: Path) -> tuple[dict, str]:
    return _npz_files(root, "train", train={**_GREY8, "images": np.full((8, 4, 4), 0.5, np.float32)})


def _bad_folder_empty_class(root: Path) -> tuple[dict, str]:
    for i in range(3):
        _png(root / "train" / "cat" / f"{i}.png", (4, 4), i)
    (root / "train" / "dog").mkdir(parents=True)
    return {"name": "imagefolder", "root": str(root)}, "dog"


def _bad_folder_no_images(root: Path) -> tuple[dict, str]:
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "cat" / "notes.txt").write_text("no images here")
    return {"name": "imagefolder", "root": str(root)}, str(root / "train")


def _two_class_folder(root: Path) -> dict:
    """train/cat and train/dog, four 4x4 PNGs each; the data slice that reads them."""
    for i in range(4):
        _png(root / "train" / "cat" / f"{i}.png", (4, 4), i)
        _png(root / "train" / "dog" / f"{i}.png", (4, 4), 10 + i)
    return {"name": "imagefolder", "root": str(root), "test_fraction": 0.25}


def _bad_folder_sizes(root: Path) -> tuple[dict, str]:
    data = _two_class_folder(root)
    _png(root / "train" / "cat" / "2.png", (5, 4), 2)
    return data, str(root / "train" / "cat" / "2.png")


def _bad_folder_corrupt_image(root: Path) -> tuple[dict, str]:
    data = _two_class_folder(root)
    (root / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return data, str(root / "train" / "dog" / "1.png")


DATA_CASES = [_bad_npz_corrupt, _bad_npz_label_count, _bad_npz_unknown_test_label, _bad_npz_class_names,
              _bad_npz_sizes, _bad_npz_float_pixels, _bad_folder_empty_class, _bad_folder_no_images,
              _bad_folder_sizes, _bad_folder_corrupt_image]


def _source(tmp_path: Path, make: Any) -> tuple[dict, str]:
    """Run a ``_bad_*`` maker in ``tmp_path/src``: (the data slice, the file its error must name)."""
    root = tmp_path / "src"
    root.mkdir()
    return make(root)


def _assert_nothing_half_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert "meta.json" not in left and not [n for n in left if n.endswith(".tmp")], left


@pytest.mark.parametrize("make", DATA_CASES, ids=[f.__name__[5:] for f in DATA_CASES])
def test_bad_data_is_one_line_naming_the_file(tmp_path: Path, make: Any) -> None:
    data, named = _source(tmp_path, make)
    out = tmp_path / "out"
    with pytest.raises(DataError) as exc:
        prepare_dataset(DataConfig(**data), out, size_multiple=4)
    msg = " ".join(str(exc.value).split())
    assert named in msg, msg
    _assert_nothing_half_written(out)


@pytest.mark.slow
def test_prepare_stage_prints_one_line_and_exits_1(tmp_path: Path) -> None:
    """The stage as the rule runs it: exit status 1, the message as the last (only error) line, no traceback."""
    data, named = _source(tmp_path, _bad_folder_sizes)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "nfpi", "prepare", "--config", json.dumps({"data": data}),
                           "--out-dir", str(out), "--size-multiple", "4", "--threads", "2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nfpi prepare error: ") and named in last, last
    _assert_nothing_half_written(out)


@pytest.mark.slow
def test_prepare_rule_shows_the_data_error(tmp_path: Path) -> None:
    """A corrupt .npz through the real workflow: the prepare job fails and Snakemake's output ends with the line."""
    data, named = _source(tmp_path, _bad_npz_corrupt)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"run": "badnpz", "data": data}))
    proc = _snakemake(["results/badnpz/data/meta.json", "--cores", "1", "--configfile", str(cfg)], tmp_path)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("nfpi prepare error: ")]
    assert len(errors) == 1 and named in errors[0], proc.stderr[-4000:]
    log = (tmp_path / "results" / "badnpz" / "logs" / "prepare.log").read_text()
    assert "Traceback" not in log and log.strip().splitlines()[-1] == errors[0]
    _assert_nothing_half_written(tmp_path / "results" / "badnpz" / "data")


# ---------------------------------------------------------------------------------------------------
# --config values nested in a mapping reach the config as strings (Snakemake's YAML base loader)


def test_cli_strings_are_read_back_where_the_schema_refuses_a_string() -> None:
    from nfpi.validation import coerce_cli_strings

    cfg = _merge(_default(), {"run": "2024", "pretrain": {"n_bits": "5", "lr": "1e-3"}, "finetune": {"hflip": "true"},
                              "fpi": {"lam": "300", "path": {"tie_tol": "se"}}, "data": {"root": "/tmp/7"},
                              "experiments": {"lambdas": ["10", "1e2"]}})
    changed = coerce_cli_strings(cfg)
    assert cfg["pretrain"]["n_bits"] == 5 and cfg["pretrain"]["lr"] == 1e-3 and cfg["finetune"]["hflip"] is True
    assert cfg["fpi"]["lam"] == 300 and cfg["experiments"]["lambdas"] == [10, 100.0]
    # keys whose schema takes strings keep them
    assert cfg["run"] == "2024" and cfg["data"]["root"] == "/tmp/7" and cfg["fpi"]["path"]["tie_tol"] == "se"
    assert set(changed) == {"pretrain.n_bits", "pretrain.lr", "finetune.hflip", "fpi.lam", "experiments.lambdas[0]",
                            "experiments.lambdas[1]"}
    check_config(cfg)
    # a string that is no valid reading still fails, naming the key
    bad = _merge(_default(), {"pretrain": {"n_bits": "five"}})
    assert coerce_cli_strings(bad) == []
    with pytest.raises(ConfigError, match="pretrain.n_bits"):
        check_config(bad)


def test_snakemake_config_option_with_a_nested_number_plans(tmp_path: Path) -> None:
    """The real command line: ``--config 'pretrain={n_bits: 5}'`` plans the run (it used to be refused)."""
    r = _snakemake(["-n", "-p", "--cores", "1", "--configfile", str(ROOT / "config" / "config.yaml"),
                    "--config", "run=cli_strings", "pretrain={n_bits: 5, steps: 400}", "--", "tables"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert '"n_bits": 5' in r.stdout + r.stderr and '"steps": 400' in r.stdout + r.stderr
