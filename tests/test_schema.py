"""The workflow's config schema: generated from the dataclasses, validates every shipped config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from nfpi.schema import SCHEMA_PATH, main as schema_main

ROOT = Path(__file__).resolve().parent.parent


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_committed_schema_is_current() -> None:
    schema_main(["--check"])


@pytest.mark.parametrize("override", [None, ".test/config/config.yaml"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml") if p.name != "config.yaml"))
def test_shipped_configs_validate(override: str | None) -> None:
    cfg = _load("config/config.yaml")
    if override:
        cfg = _merge(cfg, _load(override))
    validate(cfg, str(SCHEMA_PATH))
    assert cfg["fpi"]["pi"] in ("mean", "pair")  # defaults were filled in


@pytest.mark.parametrize("section,key,value", [("fpi", "lamda", 1.0), ("data", "nmae", "digits"),
                                               ("pretrain", "stpes", 3)])
def test_misspelt_key_is_rejected_naming_it(section: str, key: str, value: object) -> None:
    cfg = _load("config/config.yaml")
    cfg[section][key] = value
    with pytest.raises(Exception, match=key):
        validate(cfg, str(SCHEMA_PATH))


def test_out_of_range_value_is_rejected() -> None:
    cfg = _load("config/config.yaml")
    cfg["fpi"]["lam"] = -1.0
    with pytest.raises(Exception, match="minimum"):
        validate(cfg, str(SCHEMA_PATH))
