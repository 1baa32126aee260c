"""nfpi.experiments: settings, table membership and lineage hashes follow the config."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from nfpi.experiments import lambda_setting_name, lineage_hash, settings_from_config, table_settings

CONFIG = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())


def test_settings_cover_tables() -> None:
    s = settings_from_config(CONFIG)
    t = table_settings(CONFIG)
    for names in t.values():
        assert set(names) <= set(s)
    assert s["baseline1"].spec["lam"] == 0.0
    assert s["mu_only"].spec["learn"] == "mean" and s["mu_only"].spec["init"] == "identity"
    assert s["var_only"].spec["learn"] == "var"
    assert {s[n].spec["policy"] for n in t["table1"] if n.startswith("gd_")} == {
        "sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2"}
    # Every setting a CNN table needs is flagged for sampling + CNN training.
    assert all(s[n].cnn for n in t.get("table2", []) + t.get("table3", []))


def test_lambda_equal_to_fpi_lam_reuses_nfpi() -> None:
    assert lambda_setting_name(CONFIG, CONFIG["fpi"]["lam"]) == "nfpi"
    assert lambda_setting_name(CONFIG, 12.5) == "lam12.5"


def test_editing_lambda_changes_only_dependent_lineages() -> None:
    cfg2 = copy.deepcopy(CONFIG)
    cfg2["fpi"]["lam"] = 7.0
    assert lineage_hash(CONFIG) == lineage_hash(cfg2)  # pretraining does not depend on lambda
    assert lineage_hash(CONFIG, "nfpi", "evaluate") != lineage_hash(cfg2, "nfpi", "evaluate")
    assert lineage_hash(CONFIG, "baseline1", "evaluate") == lineage_hash(cfg2, "baseline1", "evaluate")
    cfg3 = copy.deepcopy(CONFIG)
    cfg3["sample"]["temperature"] = 0.5
    assert lineage_hash(CONFIG, "nfpi", "evaluate") == lineage_hash(cfg3, "nfpi", "evaluate")
    assert lineage_hash(CONFIG, "nfpi", "sample", "cnn") != lineage_hash(cfg3, "nfpi", "sample", "cnn")
