"""The paper's experiments as data: which Gaussian settings a config asks for, and their lineage.

A *setting* is one way of obtaining the class Gaussians from the pretrained flow's latents
(Section 5.2 of the paper): Baseline 1 (``lam = 0``), Baseline 2 (gradient descent under one of
five learning-rate policies), NFPI (the fixed point of Proposition 1), the lambda sweep of Table 2
and the ablations of Table 3.  Each setting is then fine-tuned, evaluated, sampled from and (where
a table needs it) used to train a CNN.  The Snakefile asks this module for the settings so that
the workflow and the table assembly agree on names, and so that a setting's *spec* (the exact
solver options) is the rule parameter Snakemake tracks: editing ``fpi.lam`` changes the spec of the
settings that depend on it and reruns only those.

The lineage hash of a stage output is the hash of every config slice upstream of it; metrics
files carry it and table assembly refuses a metrics file whose hash differs from the one the
current config implies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nfpi.config import config_hash

__all__ = ["Setting", "settings_from_config", "lineage", "lineage_hash", "table_settings", "GD_POLICIES"]

GD_POLICIES: tuple[str, ...] = ("sublinear_v1", "sublinear_v2", "linear", "superlinear_v1", "superlinear_v2")
GD_LABELS: dict[str, str] = {
    "sublinear_v1": "Sublinear v1",
    "sublinear_v2": "Sublinear v2",
    "linear": "Linear",
    "superlinear_v1": "Superlinear v1",
    "superlinear_v2": "Superlinear v2",
}


@dataclass(frozen=True)
class Setting:
    """One way to obtain class Gaussians; ``spec`` is exactly what the ``solve`` stage receives."""

    name: str
    label: str
    spec: dict[str, Any]  # an ``nfpi.fpi.FPIConfig`` mapping (``method`` "fpi" or "gd")
    cnn: bool  # whether some table needs CNN-Acc (images sampled from it train a ResNet18)


def _fmt(v: float) -> str:
    return f"{v:g}".replace("+", "")


def lambda_setting_name(config: Mapping[str, Any], lam: float) -> str:
    """Table 2's row for ``lam``: the NFPI setting itself when ``lam`` equals ``fpi.lam``."""
    return "nfpi" if float(lam) == float(config["fpi"].get("lam", 0.0)) else f"lam{_fmt(float(lam))}"


def settings_from_config(config: Mapping[str, Any]) -> dict[str, Setting]:
    """All settings the config's experiments need, keyed by name (a stable order: tables' order)."""
    fpi = dict(config["fpi"])
    exp = config.get("experiments", {})
    out: dict[str, Setting] = {}

    def add(name: str, label: str, spec: dict[str, Any], cnn: bool) -> None:
        prev = out.get(name)
        out[name] = Setting(name, label, spec, cnn or (prev.cnn if prev else False))

    add("baseline1", "Baseline 1 (data initialisation, lambda = 0)", {**fpi, "method": "fpi", "lam": 0.0},
        bool(exp.get("ablation", True)))
    if exp.get("table1", True):
        gd = dict(config.get("gd", {}))
        for policy in exp.get("gd_policies", list(GD_POLICIES)):
            spec = {**fpi, **gd, "method": "gd", "policy": policy}
            add(f"gd_{policy}", f"Baseline 2 (GD + {GD_LABELS.get(policy, policy)})", spec, False)
    add("nfpi", f"NFPI (lambda = {_fmt(float(fpi.get('lam', 0.0)))})", {**fpi, "method": "fpi"}, True)
    for lam in exp.get("lambdas", []):
        name = lambda_setting_name(config, lam)
        if name != "nfpi":
            add(name, f"NFPI (lambda = {_fmt(float(lam))})", {**fpi, "method": "fpi", "lam": float(lam)}, True)
        else:
            add("nfpi", out["nfpi"].label, out["nfpi"].spec, True)
    if exp.get("ablation", True):
        add("mu_only", "#2: KLD on mu only (identity covariance)",
            {**fpi, "method": "fpi", "learn": "mean", "init": "identity"}, True)
        add("var_only", "#3: KLD on Sigma only", {**fpi, "method": "fpi", "learn": "var"}, True)
    for lam in exp.get("figure_lambdas", []):  # Fig. 1(c)-(d): Gaussians only, no fine-tuning needed
        name = lambda_setting_name(config, lam)
        if name not in out:
            add(name, f"NFPI (lambda = {_fmt(float(lam))})", {**fpi, "method": "fpi", "lam": float(lam)}, False)
    return out


def table_settings(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Which settings feed which table (names as in :func:`settings_from_config`)."""
    exp = config.get("experiments", {})
    tables: dict[str, list[str]] = {}
    if exp.get("table1", True):
        tables["table1"] = ["baseline1"] + [f"gd_{p}" for p in exp.get("gd_policies", list(GD_POLICIES))] + ["nfpi"]
    if exp.get("lambdas"):
        tables["table2"] = [lambda_setting_name(config, lam) for lam in exp["lambdas"]]
    if exp.get("ablation", True):
        tables["table3"] = ["baseline1", "mu_only", "var_only", "nfpi"]
    return tables


# The config sections every flow downstream of pretraining depends on, in pipeline order.
_BASE: tuple[str, ...] = ("seed", "data", "flow", "pretrain")


def lineage(config: Mapping[str, Any], setting: str | None = None, *sections: str) -> dict[str, Any]:
    """The config an output depends on: data and pretraining, then (for a ``setting``) the latent
    extraction, the setting's solver spec and the fine-tuning, then the stage ``sections`` named
    (e.g. ``"evaluate"``; ``"sample", "cnn"`` for CNN-Acc).  Branches of the DAG that an output
    does not descend from (e.g. ``sample`` for NF-Acc) are not part of its lineage, so editing them
    does not invalidate it.
    """
    out: dict[str, Any] = {k: config.get(k) for k in _BASE}
    if setting is not None:
        settings = settings_from_config(config)
        if setting not in settings:
            raise KeyError(f"unknown setting '{setting}' (known: {', '.join(settings)})")
        out["extract"] = config.get("extract")
        out["setting"] = settings[setting].spec
        out["finetune"] = config.get("finetune")
    for sec in sections:
        out[sec] = config.get(sec)
    return out


def lineage_hash(config: Mapping[str, Any], setting: str | None = None, *sections: str) -> str:
    """Short hash of :func:`lineage`: stamped on metrics files, checked by table assembly."""
    return config_hash(lineage(config, setting, *sections))
