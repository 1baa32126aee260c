"""Tool module: the workflow's config JSON schema, generated from the frozen config dataclasses.

    python -m nfpi.schema --write     # regenerate the schema and config/README.md after changing a dataclass
    python -m nfpi.schema --check     # exit 1 if either committed file is stale

Each config section is validated against the dataclass that consumes it, so the schema and the
code cannot drift apart (``tests/test_schema.py`` runs ``--check``).  Types come from the type
hints, defaults from the dataclass defaults, descriptions from the comment on each field's line,
and ranges from ``RANGES`` below.  Every object has ``additionalProperties: false``: a misspelt
key fails at ``snakemake`` start-up, before any job runs, naming the key.

It imports the library's config dataclasses (never a stage); library modules never import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
README_PATH = Path(__file__).resolve().parent.parent / "config" / "README.md"

# Allowed values per "range-key.field" (JSON-schema keywords), where range-key is the first argument
# of ``dataclass_schema`` ("train" serves pretrain and finetune, "classifier" serves cnn, swin and eva02,
# "classifier.aug" their nested augmentation options).  EVERY numeric key has an entry (tests/test_validation.py
# checks it): a value outside it fails at `snakemake` start-up instead of inside a job.  Array keys get the
# range of their items.  Rules that tie several keys together live in ``nfpi.validation``.
_DEVICE = {"pattern": r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"}  # what nfpi.runtime.select_device accepts
_SEED = {"minimum": 0}
_POS = {"minimum": 1}  # counts of things that must exist
_NONNEG = {"minimum": 0}
_GT0 = {"exclusiveMinimum": 0}
_PROB = {"minimum": 0, "maximum": 1}
RANGES: dict[str, dict[str, Any]] = {
    # data
    "data.val_fraction": {"minimum": 0, "exclusiveMaximum": 1},
    "data.test_fraction": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "data.split_seed": _SEED,
    "data.image_size": _POS,
    "data.channels": {"enum": [1, 3, None]},
    "data.max_train_per_class": _POS,
    "data.max_test_per_class": _POS,
    # flow (the preset / arch names are checked against their registries by nfpi.validation)
    "flow.levels": _POS,
    "flow.steps": _POS,
    "flow.hidden": _POS,
    "flow.res_blocks": {**_NONNEG, "minItems": 1},
    "flow.steps_per_level": {**_POS, "minItems": 1},
    "flow.coupling_max_full": _NONNEG,
    "flow.coupling_rank": _POS,
    "flow.coupling_bound": {"exclusiveMinimum": 1},
    "flow.coupling_expm": {"enum": ["series", "matrix_exp"]},
    # flow training (pretrain, finetune)
    "train.steps": _NONNEG,
    "train.batch_size": _POS,
    "train.lr": _GT0,
    "train.warmup_steps": _NONNEG,
    "train.weight_decay": _NONNEG,
    "train.ema_decay": {"minimum": 0, "exclusiveMaximum": 1},
    "train.grad_clip": _GT0,
    "train.n_bits": {"minimum": 1, "maximum": 8},
    "train.init_size": _POS,
    "train.checkpoint_every": _POS,
    "train.log_every": _POS,
    "train.max_nonfinite": _POS,
    "train.max_rollbacks": _NONNEG,
    "train.seed": _SEED,
    "train.device": _DEVICE,
    "train.crop_pad": _NONNEG,
    "train.rotate_deg": {"minimum": 0, "maximum": 180},
    "train.brightness": _NONNEG,
    "train.contrast": _NONNEG,
    "train.saturation": _NONNEG,
    "train.rounds": _POS,
    # extract
    "extract.batch_size": _POS,
    "extract.row_group_size": _POS,
    "extract.seed": _SEED,
    "extract.device": _DEVICE,
    # the FPI solver
    "fpi.lam": _NONNEG,
    "fpi.alpha": _GT0,
    "fpi.max_iter": _POS,
    "fpi.tol": _GT0,
    "fpi.step_init": {"exclusiveMinimum": 0, "maximum": 1},
    "fpi.step_min": {"exclusiveMinimum": 0, "maximum": 1},
    "fpi.step_shrink": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "fpi.step_grow": {"minimum": 1},
    "fpi.max_backtracks": _NONNEG,
    "fpi.divergence_factor": {"exclusiveMinimum": 1},
    "fpi.bound_patience": _POS,
    "fpi.var_min": _GT0,
    "fpi.var_max": _GT0,
    "fpi.pi_floor": _GT0,
    "fpi.path.lam_min": _GT0,
    "fpi.path.lam_max": _GT0,
    "fpi.path.points": {"minimum": 2},
    "fpi.path.tie_tol": _PROB,
    "fpi.path.separation": _GT0,
    "fpi.path.same_point_tol": _GT0,
    # Baseline 2 (gradient descent)
    "gd.steps": _POS,
    "gd.lr": _GT0,
    "gd.gd_vmin": _GT0,
    "gd.gd_vmax": _GT0,
    # evaluate, sample
    "evaluate.batch_size": _POS,
    "evaluate.splits": {"enum": ["train", "val", "test"], "minItems": 1, "uniqueItems": True},
    "evaluate.device": _DEVICE,
    "sample.per_class": _POS,
    "sample.temperature": _GT0,
    "sample.seed": _SEED,
    "sample.batch_size": _POS,
    "sample.grid_per_class": _POS,
    "sample.device": _DEVICE,
    # classifiers (cnn, swin, eva02)
    "classifier.epochs": _POS,
    "classifier.batch_size": _POS,
    "classifier.lr": _GT0,
    "classifier.momentum": {"minimum": 0, "exclusiveMaximum": 1},
    "classifier.weight_decay": _NONNEG,
    "classifier.max_lr": _GT0,
    "classifier.warmup_epochs": _NONNEG,
    "classifier.grad_clip": _GT0,
    "classifier.label_smoothing": {"minimum": 0, "exclusiveMaximum": 1},
    "classifier.num_workers": _NONNEG,
    "classifier.seed": _SEED,
    "classifier.device": _DEVICE,
    "classifier.log_every": _NONNEG,
    "classifier.aug.padding": _NONNEG,
    "classifier.aug.random_erasing": _PROB,
    "classifier.aug.mixup_alpha": _NONNEG,
    "classifier.aug.cutmix_alpha": _NONNEG,
    "classifier.aug.label_smoothing": {"minimum": 0, "exclusiveMaximum": 1},
    # NF augmentation
    "augment.beta_max": _NONNEG,
    "augment.num_axes": _POS,
    "augment.copies": _POS,
    "augment.seed": _SEED,
    "augment.batch_size": _POS,
    "augment.figure_rows": _POS,
    "augment.figure_variants": _POS,
    "augment.device": _DEVICE,
    # figures
    "figures.tsne_per_class": {"minimum": 2},
    "figures.perplexity": _GT0,
    "figures.seed": _SEED,
    # latent OT (the bounds of LatentOTConfig.__post_init__)
    "latent_ot.hidden": _POS,
    "latent_ot.depth": _POS,
    "latent_ot.steps": _NONNEG,
    "latent_ot.batch_size": {"minimum": 2},
    "latent_ot.lr": _GT0,
    "latent_ot.value_weight": _NONNEG,
    "latent_ot.grad_weight": _NONNEG,
    "latent_ot.map_scale": _NONNEG,
    "latent_ot.semi_discrete_samples": _NONNEG,
    "latent_ot.min_class_size": {"minimum": 2},
    "latent_ot.samples_per_class": _POS,
    "latent_ot.temperature": _NONNEG,
    "latent_ot.mode_clusters": _POS,
    "latent_ot.mode_min_share": _PROB,
    "latent_ot.eval_points": {"minimum": 2},
    "latent_ot.grid_per_class": _POS,
    "latent_ot.seed": _SEED,
    "latent_ot.device": _DEVICE,
    # flow-factorized transformations (the bounds of FlowFactorConfig.__post_init__)
    "flowfactor.latent_scale": _GT0,
    "flowfactor.transformations": {"enum": ["rotate", "scale", "intensity"], "minItems": 1, "uniqueItems": True},
    "flowfactor.rotate_deg": {"minimum": -180, "maximum": 180},
    "flowfactor.scale_step": _GT0,
    "flowfactor.intensity_step": _GT0,
    **{f"flowfactor.{k}": _POS for k in (
        "steps", "substeps", "hidden", "depth", "quadratic_max_dim", "train_sequences", "batch_size", "iterations",
        "hj_points", "exact_max_dim", "hutchinson_probes", "hutchinson_order", "eval_images", "extrapolate_factor",
        "augment_per_image", "classifier_train_size", "pca_axes", "adapt_batch_size", "adapt_copies")},
    "flowfactor.lr": _GT0,
    **{f"flowfactor.{k}": _NONNEG for k in ("hj_weight", "init_weight", "density_weight", "weak_balance",
                                             "pca_beta_max", "adapt_steps")},
    "flowfactor.weak_temperature": _GT0,
    "flowfactor.adapt_lr": _GT0,
    "flowfactor.adapt_range": _GT0,
    "flowfactor.seed": _SEED,
}

# Keywords that constrain an array itself rather than its items.
_ARRAY_KEYWORDS = ("minItems", "maxItems", "uniqueItems")


def _apply_range(p: dict[str, Any], rng: dict[str, Any]) -> None:
    """Put ``rng`` where it applies: on the value, on an array's items, in each branch of an ``anyOf``."""
    if not rng:
        return
    if "anyOf" in p:
        for branch in p["anyOf"]:
            if branch.get("type") != "null":
                _apply_range(branch, rng)
        return
    if p.get("type") == "array":
        p.update({k: v for k, v in rng.items() if k in _ARRAY_KEYWORDS})
        items = p.setdefault("items", {})
        item_rng = {k: v for k, v in rng.items() if k not in _ARRAY_KEYWORDS}
        if "enum" in item_rng:
            items.pop("type", None)
        items.update(item_rng)
        return
    if "enum" in rng:
        p.pop("type", None)
    p.update(rng)


def _json_type(tp: Any, range_key: str = "") -> dict[str, Any]:
    """JSON schema of a Python type hint (``range_key``: where a nested dataclass's ranges live)."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is type(None):
        return {"type": "null"}
    if origin is typing.Literal:
        vals = list(typing.get_args(tp))
        return {"enum": vals}
    if origin in (typing.Union, types.UnionType):
        subs = [_json_type(a) for a in typing.get_args(tp)]
        simple = [s["type"] for s in subs if set(s) == {"type"} and isinstance(s["type"], str)]
        if len(simple) == len(subs):
            return {"type": simple}
        return {"anyOf": subs}
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        out: dict[str, Any] = {"type": "array"}
        if args and all(a == args[0] for a in args):
            out["items"] = _json_type(args[0])
        return out
    if origin is dict or tp is dict:
        return {"type": "object"}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp, range_key)
    return {}


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field line in the class source (its description); fields
    inherited from a dataclass base keep the base's description unless the subclass redefines them."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            out.update(_own_field_comments(base))
    out.update(_own_field_comments(cls))
    return out


def _own_field_comments(cls: type) -> dict[str, str]:
    """The one documentation style of a config field: a comment at the end of its line (``name: T = v  # text``)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: dict[str, str] = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+)\s*:\s*[^=#]+(?:=[^#]*)?#:?\s*(.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def dataclass_schema(cls: type, range_key: str, *, only: tuple[str, ...] | None = None,
                     doc: str | None = None, defaults: Any = None) -> dict[str, Any]:
    """Schema of one dataclass: typed properties with defaults and descriptions, no extra keys.

    ``defaults``: an instance of ``cls`` whose values are the section's defaults (a preset, e.g. the
    Swin recipe of the ``swin`` section) instead of the dataclass's own.
    """
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        p = _json_type(hints[f.name], f"{range_key}.{f.name}")
        if defaults is not None:  # validation fills these in: they must be the section's preset
            p["default"] = _plain(getattr(defaults, f.name))
        elif f.default is not dataclasses.MISSING:
            p["default"] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            p["default"] = _plain(f.default_factory())  # type: ignore[misc]
        desc = comments.get(f.name)
        if desc:
            p["description"] = desc
        _apply_range(p, RANGES.get(f"{range_key}.{f.name}", {}))
        props[f.name] = p
    description = doc if doc is not None else (inspect.getdoc(cls) or "").split("\n")[0]
    return {"type": "object", "description": description, "additionalProperties": False, "properties": props,
            "default": {}}


# Long (121 lines): one declarative table of the config sections and their dataclasses; splitting it would
# scatter the schema's layout over several functions.
def build_schema() -> dict[str, Any]:
    """The whole config schema."""
    from nfpi.classifiers import PRESETS, ClassifierConfig
    from nfpi.data import DataConfig
    from nfpi.evaluation import EvaluateConfig, ExtractConfig, SampleConfig
    from nfpi.flowfactor import FlowFactorConfig
    from nfpi.flows import FlowConfig
    from nfpi.fpi import LR_POLICIES, FPIConfig
    from nfpi.latent_ot import LatentOTConfig
    from nfpi.augment import AugmentConfig
    from nfpi.training import FinetuneConfig, TrainConfig
    from nfpi.report.figures import FiguresConfig

    gd_keys = ("optimizer", "steps", "lr", "gd_vmin", "gd_vmax")
    fpi_keys = tuple(f.name for f in dataclasses.fields(FPIConfig) if f.name not in gd_keys + ("method", "policy"))
    policies = list(LR_POLICIES)
    per_kind = {"type": "object", "additionalProperties": False, "required": ["cpu", "train", "infer"],
                "properties": {k: {"type": "integer", "minimum": 1, "description": d} for k, d in (
                    ("cpu", "jobs without a GPU (prepare, solve, tabulate, figures, flowfactor)"),
                    ("train", "training jobs (pretrain, finetune, swin, eva02)"),
                    ("infer", "inference jobs (extract, evaluate, sample, cnn, augment, latent_ot)"))}}
    props: dict[str, Any] = {
        "run": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$",
                "description": "run name: every output goes under results/<run>/"},
        "seed": {"type": "integer", "default": 0, "minimum": 0,
                 "description": "replicate seed: every stage's own seed is derived from it and the section's seed (pretrain, finetune, sample, cnn, "
                                "swin, eva02, augment, extract, ...); the data split (data.split_seed) stays. "
                                "`make seeds` runs replicates and tabulates their spread"},
        "container": {"type": "string", "minLength": 1, "default": "nfpi.sif",
                      "description": "the image every job runs in under `snakemake --sdm apptainer` (ignored "
                                     "otherwise): a SIF file, relative to the project root (apptainer build nfpi.sif "
                                     "docker-daemon://nfpi:latest), or a URI apptainer pulls (docker://..., "
                                     "oras://...); docs/cluster.md"},
        "threads": {"type": "object", "additionalProperties": False, "default": {"train": 2, "other": 1},
                    "description": "CPU threads per job",
                    "properties": {"train": {"type": "integer", "minimum": 1, "default": 2,
                                             "description": "threads of the training jobs (pretrain)"},
                                   "other": {"type": "integer", "minimum": 1, "default": 1,
                                             "description": "threads of every other job"}}},
        "resources": {
            "type": "object", "additionalProperties": False, "required": ["gpus", "mem_mb", "runtime_min"],
            "description": "cluster resources: GPUs per training job (torchrun with one process per GPU when > 1), "
                           "memory (MB) and runtime (minutes) per kind of job (cpu-only, train, infer)",
            "properties": {"gpus": {"type": "integer", "minimum": 0,
                                    "description": "GPUs per training job (torchrun with one process per GPU when > 1)"},
                           "mem_mb": {**per_kind, "description": "memory (MB) per kind of job"},
                           "runtime_min": {**per_kind, "description": "runtime (minutes) per kind of job"}},
        },
        "data": dataclass_schema(DataConfig, "data"),
        "flow": dataclass_schema(FlowConfig, "flow"),
        "pretrain": dataclass_schema(TrainConfig, "train", doc="flow pretraining with the N(0, I) prior"),
        "extract": dataclass_schema(ExtractConfig, "extract"),
        "fpi": dataclass_schema(FPIConfig, "fpi", only=fpi_keys,
                                doc="the NFPI fixed-point solver (Proposition 1); lam = 0 is Baseline 1"),
        "gd": dataclass_schema(FPIConfig, "gd", only=gd_keys,
                               doc="Baseline 2 (NF^GD): gradient descent on the same objective"),
        # n_bits is the pretrained flow's (pretrain.n_bits): a second value here would be a contradiction
        "finetune": dataclass_schema(FinetuneConfig, "train", only=tuple(f.name for f in dataclasses.fields(FinetuneConfig)
                                                                           if f.name != "n_bits"),
                                     doc="flow fine-tuning on each setting's Gaussians, re-solved between rounds"),
        "evaluate": dataclass_schema(EvaluateConfig, "evaluate"),
        "sample": dataclass_schema(SampleConfig, "sample"),
        "cnn": dataclass_schema(ClassifierConfig, "classifier", doc="ResNet18 trained on generated images (CNN-Acc)",
                               defaults=PRESETS["cnn"]),
        "augment": dataclass_schema(AugmentConfig, "augment"),
        "swin": dataclass_schema(ClassifierConfig, "classifier", doc="Swin for Table 5 (standard_aug set per run)",
                                defaults=PRESETS["swin"]),
        "eva02": dataclass_schema(ClassifierConfig, "classifier", doc="EVA02 for Table 6 (standard_aug set per run)",
                                 defaults=PRESETS["eva02"]),
        "figures": dataclass_schema(FiguresConfig, "figures"),
        "latent_ot": dataclass_schema(LatentOTConfig, "latent_ot"),
        "flowfactor": dataclass_schema(FlowFactorConfig, "flowfactor"),
        "experiments": {
            "type": "object", "additionalProperties": False, "default": {},
            "description": "which of the paper's experiments the run performs",
            "properties": {
                "table1": {"type": "boolean", "default": True, "description": "Table 1: Baseline 1, GD, NFPI"},
                "gd_policies": {"type": "array", "items": {"enum": policies}, "uniqueItems": True, "default": policies,
                                "description": "Baseline 2 learning-rate policies (docs/method.md)"},
                "gd_joint": {"type": "boolean", "default": False,
                             "description": "Table 1 also has Baseline 2 as the paper runs it: the Gaussians trained "
                                            "by GD with the flow during fine-tuning (gdjoint_<policy>, one fine-tuning "
                                            "per policy; off by default for the run's time)"},
                "table1_cnn": {"type": "boolean", "default": False,
                               "description": "CNN-Acc for every Table 1 row (samples + a CNN per row)"},
                "lambdas": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "uniqueItems": True,
                            "default": [],
                            "description": "Table 2: the lambda sweep (empty: no Table 2; lambda = 0 is Baseline 1, "
                                           "in Table 1)"},
                "ablation": {"type": "boolean", "default": True, "description": "Table 3: the KLD ablation"},
                "ablation_lam": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                                 "description": "lambda of Table 3's rows #2-#4 (null: fpi.lam); learning the "
                                                "variances diverges at a lower lambda than the means alone"},
                "share_tol": {"type": ["number", "null"], "minimum": 0, "default": 1e-3,
                              "description": "settings whose solved Gaussians are this close (largest class-mean "
                                             "shift in standard deviations or relative variance change; same "
                                             "objective) share one fine-tuning and the tables say so (nfpi.share); "
                                             "0 or null: fine-tune every setting (the paper's protocol)"},
                "figure_lambdas": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2,
                                   "maxItems": 2, "default": [10.0, 1000.0],
                                   "description": "Fig. 1(c)-(d): a small and a large lambda"},
                "swin": {"type": "boolean", "default": True, "description": "Table 5 (Swin + NF augmentation)"},
                "eva02": {"type": "boolean", "default": True, "description": "Table 6 (EVA02 + NF augmentation)"},
                "standard_aug": {"type": "boolean", "default": True,
                                 "description": "Tables 5-6: also the rows with the standard augmentation set (SA, "
                                                "with and without NF augmentation); false: the no-augmentation and "
                                                "NF-augmentation rows only"},
                "latent_ot": {"type": "boolean", "default": True, "description": "latent OT prior comparison"},
                "flowfactor": {"type": "boolean", "default": True, "description": "flow-factorized transformations"},
            },
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "nfpi workflow configuration",
        "description": "Generated by `python -m nfpi.schema` from the config dataclasses; do not edit by hand.",
        "type": "object",
        "additionalProperties": False,
        "required": ["run", "data", "flow", "pretrain", "fpi", "finetune", "resources"],
        "properties": props,
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Write repeated sub-schemas out in full (no YAML anchors: the file is read by people too)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    buf = io.StringIO()
    buf.write("# Generated by `python -m nfpi.schema` from the config dataclasses; do not edit by hand.\n")
    yaml.dump(build_schema(), buf, Dumper=_NoAliasDumper, sort_keys=False, width=120)
    return buf.getvalue()


def config_keys(schema: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Every leaf config key of the schema as ``(dotted key, its schema)``, in schema order."""
    out: list[tuple[str, dict[str, Any]]] = []

    def walk(node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if props:
            for k, v in props.items():
                walk(v, f"{path}.{k}" if path else k)
        else:
            out.append((path, node))

    walk(build_schema() if schema is None else schema, "")
    return out


def _cell(v: Any) -> str:
    text = v if isinstance(v, str) else yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    return text.replace("|", "\\|").replace("\n", " ")


def _kind(node: dict[str, Any]) -> str:
    """A key's type in words: ``integer``, ``string / null``, ``one of `a`, `b```."""
    if "enum" in node:
        return "one of " + ", ".join(f"`{e}`" for e in node["enum"])
    if "anyOf" in node:
        return " / ".join(_kind(a) for a in node["anyOf"])
    t = node.get("type", "any")
    return " / ".join(t) if isinstance(t, list) else str(t)


def render_readme(schema: dict[str, Any] | None = None) -> str:
    """``config/README.md``: one row per config key (type, default, range, description), from the schema."""
    schema = build_schema() if schema is None else schema
    lines = ["# Config keys", "",
             "Generated by `python -m nfpi.schema --write` from the config dataclasses (the same source as",
             "`workflow/schemas/config.schema.yaml`); do not edit by hand. `tests/test_schema.py` checks it is current.",
             "The sections are described in docs/config.md; `config/config.yaml` is the embedded default.", "",
             "| key | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
    for key, node in config_keys(schema):
        kind = _kind(node)
        rng = ", ".join(f"{k} {node[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
                        if k in node)
        default = f"`{_cell(node['default'])}`" if "default" in node else ""
        lines.append(f"| `{key}` | {_cell(kind)} | {default} | {rng} | "
                     f"{_cell(node.get('description', ''))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--check", action="store_true", help="compare with the committed schema; exit 1 if stale")
    p.add_argument("--write", action="store_true", help=f"write {SCHEMA_PATH}")
    args = p.parse_args(argv)
    text = render()
    readme = render_readme(yaml.safe_load(text))
    if args.check:
        for path, want in ((SCHEMA_PATH, text), (README_PATH, readme)):
            if not path.exists() or path.read_text() != want:
                sys.exit(f"{path} is stale: run `python -m nfpi.schema --write`")
        return
    if args.write:
        from nfpi.io import atomic_write_text

        atomic_write_text(SCHEMA_PATH, text)
        atomic_write_text(README_PATH, readme)
        return
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
