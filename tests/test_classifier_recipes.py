"""The classifier recipe each shipped config resolves to, the way the workflow resolves it.

A workflow config is ``config/config.yaml`` (digits) deep-merged with a ``--configfile`` (Snakemake's
merge), validated against the generated schema (which fills each section's defaults: its preset) and
parsed by ``nfpi.stages.classify`` on the preset of its section (``classifier_config``).  Paper sections must
therefore restate every key the digits file sets, or they silently inherit the digits recipe.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import validate

from nfpi.classifiers import (
    DEFAULT_EVA02_FILE,
    DEFAULT_EVA02_PRETRAINED,
    PRESETS,
    ClassifierConfig,
    check_pretrained_file,
    classifier_config,
)
from nfpi.config import ConfigError
from nfpi.schema import SCHEMA_PATH, build_schema

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("cnn", "swin", "eva02")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _workflow_config(override: str | None = None) -> dict[str, Any]:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    if override:
        cfg = _merge(cfg, yaml.safe_load((ROOT / override).read_text()))
    validate(cfg, str(SCHEMA_PATH))  # fills the schema's defaults in, as common.smk does
    return cfg


def _resolved(override: str | None, section: str) -> ClassifierConfig:
    return classifier_config(section, _workflow_config(override)[section])


# The default (digits) run's classifiers, resolved before the sections had presets (commit 073a7d9):
# the default run's results must not change.
_AUG = {"padding": None, "hflip": True, "auto_augment": True, "rand_augment": True, "random_erasing": 0.25,
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}
_COMMON = {"momentum": 0.9, "standard_aug": False, "aug": _AUG, "label_smoothing": 0.0, "pretrained_file": None,
           "model_kwargs": None, "num_workers": 0, "seed": 0, "device": "auto", "precision": "fp32", "log_every": 0,
           "hflip": False}
DIGITS_BEFORE = {
    "cnn": {**_COMMON, "arch": "resnet18", "epochs": 6, "batch_size": 100, "optimizer": "sgd", "lr": 0.001,
            "weight_decay": 0.0005, "schedule": "onecycle", "max_lr": 0.1, "warmup_epochs": 0.0, "grad_clip": None,
            "crop_flip": True},
    "swin": {**_COMMON, "arch": "swin", "epochs": 12, "batch_size": 32, "optimizer": "adamw", "lr": 0.002,
             "weight_decay": 0.05, "schedule": "cosine", "max_lr": 0.002, "warmup_epochs": 1.0, "grad_clip": None,
             "crop_flip": False},
    "eva02": {**_COMMON, "arch": "eva02", "epochs": 12, "batch_size": 32, "optimizer": "adamw", "lr": 0.001,
              "weight_decay": 0.05, "schedule": "cosine", "max_lr": 0.001, "warmup_epochs": 1.0, "grad_clip": 1.0,
              "crop_flip": False},
}


@pytest.mark.parametrize("section", SECTIONS)
def test_the_default_runs_classifiers_are_unchanged(section: str) -> None:
    assert dataclasses.asdict(_resolved(None, section)) == DIGITS_BEFORE[section]


# The paper's recipes (Sec. 5.2); docs/classifiers.md tabulates them with their sources.
RESNET18 = {"arch": "resnet18", "batch_size": 100, "optimizer": "sgd", "lr": 1e-3, "momentum": 0.9,
            "weight_decay": 5e-4, "schedule": "onecycle", "max_lr": 0.1, "crop_flip": True, "hflip": True,
            "pretrained_file": None}
SWIN = {"arch": "swin", "epochs": 1000, "batch_size": 256, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-2,
        "schedule": "cosine", "warmup_epochs": 10.0, "grad_clip": None, "crop_flip": True, "hflip": True,
        "pretrained_file": None, "model_kwargs": None}
EVA02 = {"arch": "eva02", "epochs": 3, "batch_size": 64, "optimizer": "sgd", "lr": 1e-5, "momentum": 0.9,
         "weight_decay": 0.0, "schedule": "constant", "warmup_epochs": 0.0, "grad_clip": 1.0, "crop_flip": False,
         "hflip": True, "pretrained_file": DEFAULT_EVA02_FILE, "model_kwargs": None}
PAPER = {
    "config/cifar10.yaml": {"cnn": {**RESNET18, "epochs": 30}, "swin": SWIN, "eva02": EVA02},
    "config/cifar100.yaml": {"cnn": {**RESNET18, "epochs": 50}, "swin": SWIN, "eva02": EVA02},
    "config/imagenet32.yaml": {"cnn": {**RESNET18, "epochs": 30, "batch_size": 256},
                               "swin": {**SWIN, "epochs": 100}, "eva02": EVA02},
    "config/imagenet64.yaml": {"cnn": {**RESNET18, "epochs": 30, "batch_size": 256},
                               "swin": {**SWIN, "epochs": 100}, "eva02": EVA02},
    "config/mnist.yaml": {"cnn": {**RESNET18, "epochs": 10, "hflip": False},
                          "swin": {**SWIN, "epochs": 50, "hflip": False}, "eva02": {**EVA02, "hflip": False}},
}


@pytest.mark.parametrize("override,section", [(o, s) for o in PAPER for s in SECTIONS])
def test_paper_configs_resolve_to_the_paper_recipes(override: str, section: str) -> None:
    got = dataclasses.asdict(_resolved(override, section))
    want = PAPER[override][section]
    assert {k: got[k] for k in want} == want
    # Nothing else differs from the section's preset but the keys listed above.
    preset = dataclasses.asdict(PRESETS[section])
    assert {k for k in got if got[k] != preset[k]} <= set(want)


def test_a_section_that_sets_one_key_gets_its_own_preset_for_the_rest() -> None:
    # Through the schema (its defaults are the presets) and through classify's parse alike.
    cfg = _workflow_config()
    for section in SECTIONS:
        cfg[section] = {"epochs": 3}
    validate(cfg, str(SCHEMA_PATH))
    for section in SECTIONS:
        assert classifier_config(section, cfg[section]) == dataclasses.replace(PRESETS[section], epochs=3)
        assert classifier_config(section, {"epochs": 3}) == dataclasses.replace(PRESETS[section], epochs=3)
    assert classifier_config("eva02", {}).pretrained_file == DEFAULT_EVA02_FILE
    assert DEFAULT_EVA02_PRETRAINED in DEFAULT_EVA02_FILE


@pytest.mark.parametrize("section", SECTIONS)
def test_schema_defaults_are_the_sections_presets(section: str) -> None:
    props = build_schema()["properties"][section]["properties"]
    preset = dataclasses.asdict(PRESETS[section])
    assert {k: p["default"] for k, p in props.items()} == preset


# ---------------------------------------------------------------------------------------------
# check_pretrained_file: the start-up check common.smk runs
# ---------------------------------------------------------------------------------------------


def test_imagenet_configs_need_the_eva02_checkpoint_and_say_how_to_get_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the path is relative to the working directory; nothing is there
    for override in ("config/imagenet32.yaml", "config/imagenet64.yaml"):
        cfg = _workflow_config(override)
        with pytest.raises(ConfigError) as err:
            check_pretrained_file(cfg)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith(f"config key 'eva02.pretrained_file' = '{DEFAULT_EVA02_FILE}': weights file not found")
        assert f"timm.create_model('{DEFAULT_EVA02_PRETRAINED}', pretrained=True)" in msg
        (tmp_path / DEFAULT_EVA02_FILE).parent.mkdir(exist_ok=True)
        (tmp_path / DEFAULT_EVA02_FILE).write_bytes(b"")  # present: the check passes (the loader reads it later)
        check_pretrained_file(cfg)
        (tmp_path / DEFAULT_EVA02_FILE).unlink()


@pytest.mark.parametrize("override", [None, ".test/config/config.yaml", "config/cifar10.yaml",
                                      "config/cifar100.yaml", "config/mnist.yaml"])
def test_configs_without_table6_or_with_a_scratch_eva02_pass_the_check(override: str | None, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    check_pretrained_file(_workflow_config(override))


def test_the_check_skips_a_switched_off_experiment_and_names_the_section() -> None:
    cfg = {"swin": {"pretrained_file": "no/such/swin.pt"}, "eva02": {"pretrained_file": None},
           "experiments": {"swin": False}}
    check_pretrained_file(cfg)
    cfg["experiments"]["swin"] = True
    with pytest.raises(ConfigError, match=r"^config key 'swin\.pretrained_file' = 'no/such/swin.pt': weights file not found.*put the state-dict"):
        check_pretrained_file(cfg)
