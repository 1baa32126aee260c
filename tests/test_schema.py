"""The workflow's config schema: generated from the dataclasses, validates every shipped config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from nfpi.schema import README_PATH, SCHEMA_PATH, config_keys, main as schema_main, render_readme

ROOT = Path(__file__).resolve().parent.parent


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_committed_schema_is_current() -> None:
    """workflow/schemas/config.schema.yaml and config/README.md are what the dataclasses generate today."""
    schema_main(["--check"])


def test_every_config_key_is_documented() -> None:
    """Each leaf key has a description (a trailing comment on its dataclass field, or the schema's own text)."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    keys = config_keys(schema)
    assert len(keys) > 250, len(keys)
    assert [k for k, node in keys if not node.get("description")] == []


def test_config_readme_has_one_row_per_key() -> None:
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    rows = [ln for ln in README_PATH.read_text().splitlines() if ln.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == [k for k, _ in config_keys(schema)]
    assert render_readme(schema) == README_PATH.read_text()


def test_a_stale_readme_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nfpi.schema as schema_mod

    stale = tmp_path / "README.md"
    stale.write_text(README_PATH.read_text().replace("| `run` |", "| `run_name` |"))
    monkeypatch.setattr(schema_mod, "README_PATH", stale)
    with pytest.raises(SystemExit, match="README.md is stale"):
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
