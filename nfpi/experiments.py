"""The paper's experiments as data: which Gaussian settings a config asks for, and their lineage.

A *setting* is one way of obtaining the class Gaussians from the pretrained flow's latents
(Section 5.2 of the paper): Baseline 1 (``lam = 0``), Baseline 2 (gradient descent under one of
five learning-rate policies, in two readings: ``gd_<policy>`` converged on the pretrained flow's fixed
latents, and ``gdjoint_<policy>`` trained with the flow as the paper runs it, ``experiments.gd_joint``), NFPI (the fixed point of Proposition 1), the lambda sweep of Table 2
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

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nfpi.config import config_hash
from nfpi.fpi.config import LR_POLICIES

__all__ = ["Setting", "settings_from_config", "lineage", "lineage_hash", "table_settings", "ablation_rows",
           "aug_variants", "GD_POLICIES", "ABLATION"]

GD_POLICIES: tuple[str, ...] = tuple(LR_POLICIES)  # the five names, defined once (nfpi.fpi.config)
GD_LABELS: dict[str, str] = {p: p.replace("_", " ").capitalize() for p in GD_POLICIES}  # "Sublinear v1", ...


@dataclass(frozen=True)
class Setting:
    """One way to obtain class Gaussians; ``spec`` is exactly what the ``solve`` stage receives."""

    name: str
    label: str
    spec: dict[str, Any]  # an ``nfpi.fpi.FPIConfig`` mapping (``method`` "fpi" or "gd"), or ``nfpi.joint_gd.JointGDConfig``
    cnn: bool  # whether some table needs CNN-Acc (images sampled from it train a ResNet18)


def _fmt(v: float) -> str:
    return f"{v:g}".replace("+", "")


def lambda_setting_name(config: Mapping[str, Any], lam: float) -> str:
    """Table 2's row for ``lam``: the NFPI setting itself when ``lam`` equals ``fpi.lam``."""
    own = config["fpi"].get("lam", 0.0)
    return "nfpi" if own != "auto" and float(lam) == float(own) else f"lam{_fmt(float(lam))}"


# Table 3's rows: which parameters the KLD term moves, and how the Gaussians are initialised.
# Row #1 is Baseline 1 (no KLD: the class data statistics).  A row whose solver spec equals the
# configured NFPI's (e.g. ``fpi.learn: mean`` with ``init: identity``) *is* the NFPI setting.
ABLATION: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("baseline1", "#1: w/o KLD (lambda = 0)", {"lam": 0.0, "learn": "both", "init": "data"}),
    ("mu_only", "#2: w/ KLD on mu only (identity covariance)", {"learn": "mean", "init": "identity"}),
    ("var_only", "#3: w/ KLD on Sigma only", {"learn": "var", "init": "data"}),
    ("both", "#4: w/ KLD on mu and Sigma", {"learn": "both", "init": "data"}),
)


# Which config keys change each kind of solve (issue: a setting depends only on the keys that change
# its result).  The objective of Eq. 4 is fixed by these; GD minimises it, the FPI finds its fixed point.
OBJECTIVE_KEYS: tuple[str, ...] = ("lam", "alpha", "pi", "learn", "init")
# Baseline 1 (lambda = 0) is the class data mean and variance, clipped to the FPI's variance bounds:
# alpha, pi, the iteration controls and the GD options cannot change it.
BASELINE1_KEYS: tuple[str, ...] = ("var_min", "var_max")


def _fpi_spec(config: Mapping[str, Any], **override: Any) -> dict[str, Any]:
    """An FPI setting: every ``fpi`` key (the schema's ``fpi`` section holds only FPI solver options),
    less ``fpi.path`` where lambda is fixed: the path's grid and rule only act when ``lam`` is ``auto``,
    so widening the grid must not rerun Table 2's fixed-lambda rows."""
    spec = {**dict(config["fpi"]), "method": "fpi", **override}
    if spec.get("lam") != "auto":
        spec.pop("path", None)
    return spec


def _baseline1_spec(config: Mapping[str, Any]) -> dict[str, Any]:
    """Baseline 1: lambda = 0 from the class data statistics; only the variance bounds matter."""
    fpi = config["fpi"]
    return {"method": "fpi", "lam": 0.0, "learn": "both", "init": "data",
            **{k: fpi[k] for k in BASELINE1_KEYS if k in fpi}}


def _gd_spec(config: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """Baseline 2: the objective's keys from ``fpi`` and the ``gd`` section; no FPI iteration control."""
    fpi = config["fpi"]
    return {**{k: fpi[k] for k in OBJECTIVE_KEYS if k in fpi}, **dict(config.get("gd", {})), "method": "gd",
            "policy": policy}


# The gd keys that change the joint descent (gd.steps does not: it runs for the fine-tuning's steps).
JOINT_GD_KEYS: tuple[str, ...] = ("optimizer", "lr", "gd_vmin", "gd_vmax")


def _gd_joint_spec(config: Mapping[str, Any], policy: str) -> dict[str, Any]:
    """Baseline 2 as the paper runs it (``nfpi.joint_gd``): the same objective, its Gaussians trained with the flow."""
    fpi, gd = config["fpi"], config.get("gd", {})
    return {**{k: fpi[k] for k in OBJECTIVE_KEYS if k in fpi}, **{k: gd[k] for k in JOINT_GD_KEYS if k in gd},
            "method": "gd_joint", "policy": policy}


def _ablation_specs(config: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Table 3's rows as ``(name, label, spec)`` at ``experiments.ablation_lam`` (default: ``fpi.lam``)."""
    lam = config.get("experiments", {}).get("ablation_lam")
    at = {} if lam is None else {"lam": float(lam)}
    return [(name, label, _baseline1_spec(config) if name == "baseline1" else _fpi_spec(config, **{**at, **override}))
            for name, label, override in ABLATION]


def _key(spec: Mapping[str, Any]) -> str:
    """Canonical form of a solver spec (``100`` and ``100.0`` are the same lambda)."""
    return json.dumps({k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in spec.items()},
                      sort_keys=True)


def ablation_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Table 3 as ``(row label, setting name)``: a row whose spec another setting already has (the
    NFPI setting, a lambda of the sweep) names that setting, so it is solved and fine-tuned once."""
    by_spec = {_key(s.spec): s.name for s in settings_from_config(config).values()}
    return [(label, by_spec[_key(spec)]) for _, label, spec in _ablation_specs(config)]


def settings_from_config(config: Mapping[str, Any]) -> dict[str, Setting]:
    """All settings the config's experiments need, keyed by name (a stable order: tables' order).

    Two requests with the same solver spec are one setting (the first name wins): identical
    Gaussians are solved, fine-tuned and evaluated once.  Table 1's settings (``baseline1``,
    ``gd_<policy>``, ``gdjoint_<policy>`` with ``experiments.gd_joint``, ``nfpi``) always exist under
    those names; ``experiments.table1_cnn`` gives each of them CNN-Acc.
    """
    fpi = dict(config["fpi"])
    exp = config.get("experiments", {})
    out: dict[str, Setting] = {}
    names: dict[str, str] = {}  # spec (canonical JSON) -> setting name

    def add(name: str, label: str, spec: dict[str, Any], cnn: bool, anchor: bool = False) -> None:
        # Table 1's settings keep their names (tables address them directly); the others merge.
        name = name if anchor else names.get(_key(spec), name)
        names.setdefault(_key(spec), name)
        prev = out.get(name)
        out[name] = Setting(name, prev.label if prev else label, prev.spec if prev else spec,
                            cnn or (prev.cnn if prev else False))

    ablation = _ablation_specs(config)
    # Baseline 1 is the class data mean and variance whatever the NFPI's learn / init options.
    t1_cnn = bool(exp.get("table1", True) and exp.get("table1_cnn", False))
    add("baseline1", "Baseline 1 (data initialisation, lambda = 0)", ablation[0][2],
        bool(exp.get("ablation", True)) or t1_cnn, anchor=True)
    if exp.get("table1", True):
        for policy in exp.get("gd_policies", list(GD_POLICIES)):  # the NFPI objective, solved by GD
            add(f"gd_{policy}", f"Baseline 2, converged on fixed latents (GD + {GD_LABELS.get(policy, policy)})",
                _gd_spec(config, policy), t1_cnn, anchor=True)
        if exp.get("gd_joint", False):  # the paper's reading: the Gaussians descend while the flow trains
            for policy in exp.get("gd_policies", list(GD_POLICIES)):
                add(f"gdjoint_{policy}", f"Baseline 2, joint with the flow (GD + {GD_LABELS.get(policy, policy)})",
                    _gd_joint_spec(config, policy), t1_cnn, anchor=True)
    lam_text = "chosen by the lambda path" if fpi.get("lam") == "auto" else _fmt(float(fpi.get("lam", 0.0)))
    add("nfpi", f"NFPI (lambda = {lam_text})", _fpi_spec(config), True, anchor=True)
    for lam in exp.get("lambdas", []):
        add(lambda_setting_name(config, lam), f"NFPI (lambda = {_fmt(float(lam))})",
            _fpi_spec(config, lam=float(lam)), True)
    if exp.get("ablation", True):
        for name, label, spec in ablation[1:]:
            add(name, label, spec, True)
    for lam in exp.get("figure_lambdas", []):  # Fig. 1(c)-(d): Gaussians only, no fine-tuning needed
        add(lambda_setting_name(config, lam), f"NFPI (lambda = {_fmt(float(lam))})",
            _fpi_spec(config, lam=float(lam)), False)
    return out


def table_settings(config: Mapping[str, Any]) -> dict[str, list[str]]:
    """Which settings feed which table (names as in :func:`settings_from_config`)."""
    exp = config.get("experiments", {})
    tables: dict[str, list[str]] = {}
    if exp.get("table1", True):
        policies = exp.get("gd_policies", list(GD_POLICIES))
        joint = [f"gdjoint_{p}" for p in policies] if exp.get("gd_joint", False) else []
        tables["table1"] = ["baseline1"] + [f"gd_{p}" for p in policies] + joint + ["nfpi"]
    if exp.get("lambdas"):
        tables["table2"] = [lambda_setting_name(config, lam) for lam in exp["lambdas"]]
        if config["fpi"].get("lam") == "auto":  # the path's choice beside the sweep: NFPI's own row, no extra job
            tables["table2"].append("nfpi")
    if exp.get("ablation", True):
        tables["table3"] = [name for _, name in ablation_rows(config)]
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


#: Top-level config sections no table depends on: the figures, the two related methods (they write their
#: own tables), and where / how jobs run.  ``tabulate`` receives the config without them, so editing one
#: of them does not rebuild the tables.
NOT_TABULATED: tuple[str, ...] = ("figures", "latent_ot", "flowfactor", "threads", "resources", "container")


def tables_slice(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config ``tabulate`` receives: every section a table's numbers, labels or provenance check (the
    lineage hashes of its metrics files) depend on, and nothing else."""
    return {k: v for k, v in config.items() if k not in NOT_TABULATED}


def aug_variants(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Tables 5-6's rows as ``(file key, label)``: without / with NF augmentation, each also with the standard
    augmentation set (SA) when ``experiments.standard_aug`` (the paper's four rows; the default run's two)."""
    rows = [("none_none", "Baseline (no augmentation)"), ("nf_none", "+ NF augmentation (ours)")]
    if config.get("experiments", {}).get("standard_aug", True):
        rows += [("none_sa", "+ standard augmentations (SA)"), ("nf_sa", "+ NF augmentation + SA")]
    return rows
