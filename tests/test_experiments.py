"""nfpi.experiments: settings, table membership and lineage hashes follow the config."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from nfpi.experiments import ablation_rows, aug_variants, lambda_setting_name, lineage_hash, settings_from_config, table_settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
# the default's data with every experiment of the paper (config/full.yaml over config/config.yaml)
CONFIG = {**DEFAULT, "experiments": {**DEFAULT["experiments"],
                                     **yaml.safe_load((ROOT / "config" / "full.yaml").read_text())["experiments"]}}


def test_settings_cover_tables() -> None:
    s = settings_from_config(CONFIG)
    t = table_settings(CONFIG)
    for names in t.values():
        assert set(names) <= set(s)
    assert s["baseline1"].spec["lam"] == 0.0
    assert s["baseline1"].spec["learn"] == "both" and s["baseline1"].spec["init"] == "data"  # whatever fpi says
    rows = dict((label[:2], name) for label, name in ablation_rows(CONFIG))
    assert s[rows["#2"]].spec["learn"] == "mean" and s[rows["#2"]].spec["init"] == "identity"
    assert s[rows["#3"]].spec["learn"] == "var" and s[rows["#4"]].spec["learn"] == "both"
    assert t["table3"] == [rows[k] for k in ("#1", "#2", "#3", "#4")]
    assert {s[n].spec["policy"] for n in t["table1"] if n.startswith("gd_")} == {
        "sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2"}
    # Every setting a CNN table needs is flagged for sampling + CNN training.
    assert all(s[n].cnn for n in t.get("table2", []) + t.get("table3", []))


def test_the_default_runs_a_subset_that_full_restores() -> None:
    """The default run leaves out Table 3, three GD policies and the SA rows; config/full.yaml adds them back,
    and the paper configs set the same keys (they are overlays on config/config.yaml)."""
    t, full = table_settings(DEFAULT), table_settings(CONFIG)
    assert "table3" not in t and "table3" in full
    assert set(t["table1"]) < set(full["table1"]) and t["table2"] == full["table2"]
    assert [v for v, _ in aug_variants(DEFAULT)] == ["none_none", "nf_none"] and len(aug_variants(CONFIG)) == 4
    for paper in ("cifar10", "cifar100", "imagenet32", "imagenet64", "mnist"):
        exp = yaml.safe_load((ROOT / "config" / f"{paper}.yaml").read_text())["experiments"]
        assert {k: exp[k] for k in CONFIG["experiments"] if k in ("gd_policies", "ablation", "standard_aug")} == {
            k: CONFIG["experiments"][k] for k in ("gd_policies", "ablation", "standard_aug")}, paper


def test_lambda_equal_to_fpi_lam_reuses_nfpi() -> None:
    fixed = {**CONFIG, "fpi": {**CONFIG["fpi"], "lam": 1000.0}}
    assert lambda_setting_name(fixed, 1000.0) == "nfpi"
    assert lambda_setting_name(fixed, 12.5) == "lam12.5"
    # with lam: auto no sweep value is NFPI's row: the path's choice joins Table 2 as its own row
    auto = {**CONFIG, "fpi": {**CONFIG["fpi"], "lam": "auto"}}
    assert lambda_setting_name(auto, 1000.0) == "lam1000"
    sweep = CONFIG["experiments"]["lambdas"]
    assert table_settings(auto)["table2"] == [f"lam{lam:g}" for lam in sweep] + ["nfpi"]
    assert table_settings(fixed)["table2"] == [lambda_setting_name(fixed, lam) for lam in sweep]


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


def test_same_spec_is_one_setting_and_table1_names_stay() -> None:
    """An ablation row or sweep lambda with another setting's solver spec reuses that setting."""
    cfg = copy.deepcopy(CONFIG)
    cfg["fpi"].update(lam=50, learn="mean", init="identity")
    cfg["experiments"].update(lambdas=[5.0, 50.0], ablation_lam=None, figure_lambdas=[5, 50])
    s, t = settings_from_config(cfg), table_settings(cfg)
    assert t["table2"] == ["lam5", "nfpi"]  # 50 (an int in YAML) is fpi.lam 50
    assert t["table3"][1] == "nfpi" and "mu_only" not in s  # row #2 at fpi.lam is the NFPI setting
    assert len({json_key(x.spec) for x in s.values()}) == len(s)  # no spec solved twice
    cfg["experiments"]["ablation_lam"] = 5
    assert table_settings(cfg)["table3"][1] == "lam5"
    # lambda = 0 with learn both / init data is Baseline 1's spec: both names still exist for Table 1.
    cfg["fpi"].update(lam=0.0, learn="both", init="data")
    s = settings_from_config(cfg)
    assert {"baseline1", "nfpi"} <= set(s)


def json_key(spec: dict) -> str:
    import json

    return json.dumps({k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in spec.items()},
                      sort_keys=True)


def test_a_setting_depends_only_on_the_keys_that_change_its_solve() -> None:
    """fpi.alpha is part of the objective (NFPI and GD) but not of Baseline 1 (lambda = 0); the FPI's
    iteration controls are not part of GD's solve; gd.* is not part of any FPI setting."""
    specs = {n: s.spec for n, s in settings_from_config(CONFIG).items()}

    def changed(section: str, key: str, value: object) -> set[str]:
        cfg = copy.deepcopy(CONFIG)
        cfg[section][key] = value
        new = {n: s.spec for n, s in settings_from_config(cfg).items()}
        return {n for n in specs if new[n] != specs[n]}

    gd = {n for n in specs if n.startswith("gd_")}
    fpi = set(specs) - gd - {"baseline1"}
    assert changed("fpi", "alpha", 2.0) == fpi | gd
    assert changed("fpi", "max_iter", 50) == fpi
    assert changed("fpi", "var_min", 1e-8) == fpi | {"baseline1"}
    assert changed("gd", "lr", 0.01) == gd
    cfg = copy.deepcopy(CONFIG)
    cfg["fpi"]["alpha"] = 2.0
    assert lineage_hash(CONFIG, "baseline1", "evaluate") == lineage_hash(cfg, "baseline1", "evaluate")


def test_the_lambda_path_grid_changes_only_the_setting_it_chooses_for() -> None:
    """fpi.path acts only when fpi.lam is auto: widening the grid reruns the NFPI row, not Table 2's
    fixed-lambda rows, Baseline 1 or Baseline 2."""
    def specs(lam: object, path: dict[str, object]) -> dict[str, dict[str, object]]:
        cfg = copy.deepcopy(CONFIG)
        cfg["fpi"]["lam"] = lam
        cfg["fpi"]["path"] = path
        return {n: s.spec for n, s in settings_from_config(cfg).items()}

    narrow, wide = {"lam_max": 1e4, "points": 13}, {"lam_max": 1e6, "points": 19}
    before, after = specs("auto", narrow), specs("auto", wide)
    assert {n for n in before if before[n] != after[n]} == {"nfpi"}
    assert after["nfpi"]["path"] == wide
    assert all("path" not in s for n, s in after.items() if n != "nfpi")
    fixed_before, fixed_after = specs(1000.0, narrow), specs(1000.0, wide)
    assert fixed_before == fixed_after


def test_tabulate_receives_only_what_the_tables_depend_on() -> None:
    from nfpi.experiments import tables_slice

    base = tables_slice(CONFIG)
    assert "fpi" in base and "experiments" in base and "cnn" in base
    for section, key, value in (("figures", "tsne_per_class", 7), ("latent_ot", "steps", 3),
                                ("flowfactor", "iterations", 5), ("threads", "other", 2)):
        cfg = copy.deepcopy(CONFIG)
        cfg.setdefault(section, {})[key] = value
        assert tables_slice(cfg) == base, (section, key)
    cfg = copy.deepcopy(CONFIG)
    cfg["fpi"]["max_iter"] = 50  # the NFPI settings' lineage: the tables check those hashes
    assert tables_slice(cfg) != base


def test_the_default_subset_computes_its_rows_as_the_full_run_does() -> None:
    """Leaving rows out changes no row that stays: every setting of the default has the full run's lineage."""
    full = settings_from_config(CONFIG)
    for s in settings_from_config(DEFAULT):
        assert s in full
        assert lineage_hash(DEFAULT, s, "evaluate") == lineage_hash(CONFIG, s, "evaluate"), s
        assert lineage_hash(DEFAULT, s, "sample", "cnn") == lineage_hash(CONFIG, s, "sample", "cnn"), s
