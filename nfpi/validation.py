"""The whole workflow config checked before the first job: one line naming the key, the value and the fix.

:func:`check_config` runs at ``snakemake`` start-up (``workflow/rules/common.smk``), on the merged config
(``config/config.yaml`` plus every ``--configfile`` / ``--config``), in three passes:

1. Every key against the generated schema (``workflow/schemas/config.schema.yaml``, from the config
   dataclasses and ``nfpi.schema.RANGES``): unknown keys and sections (with "did you mean"), missing
   required keys, types, allowed values, numeric ranges, list lengths.
2. The cross-key rules of :data:`RULES` (a fine-tuning round needs a step, a per-level list needs one
   value per level of the preset, a data source needs its files, ...): each rule is a function whose
   docstring is the rule, listed in ``docs/config.md``.
3. The library config dataclasses are built from their slices, so any check their ``__post_init__``
   makes fails here too, as one line, instead of inside a job.

A failure raises :class:`nfpi.config.ConfigError` with a one-line message:
``config key 'finetune.rounds' = 0: must be >= 1 (...); fix it in your --configfile``.

This is library code: it reads the schema file and imports only library modules (lazily, so a config
that fails the schema pass fails before torch is imported).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from nfpi.config import ConfigError

__all__ = ["check_config", "coerce_cli_strings", "load_schema", "schema_error_line", "RULES", "SCHEMA_FILE", "FIX"]

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
FIX = "fix it in your --configfile"

# torchvision's folder names under data.root (what nfpi.data's sources read): checked before any job so a
# missing download is named at once.
_TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw"}


@functools.lru_cache(maxsize=4)
def _load_schema_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_schema(path: str | Path | None = None) -> dict[str, Any]:
    """The workflow's config schema (the committed file; generated from the dataclasses when it is absent)."""
    p = Path(path) if path is not None else SCHEMA_FILE
    if p.is_file():
        return _load_schema_file(str(p))
    from nfpi.schema import build_schema  # an installed package without the workflow folder

    return build_schema()


# ---------------------------------------------------------------------------------------------------
# Messages


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML-ish, short)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _why(schema: Mapping[str, Any]) -> str:
    """The key's description (from the dataclass comment) as a short parenthesis, or nothing."""
    desc = " ".join(str(schema.get("description", "")).split()).lstrip(": ")
    if not desc:
        return ""
    if len(desc) > 100:
        desc = desc[:100].rsplit(" ", 1)[0] + " ..."
    return f" ({desc})"


def _error(key: str, value: Any, problem: str, fix: str = FIX) -> ConfigError:
    return ConfigError(f"config key '{key}' = {_show(value)}: {problem}; {fix}")


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"


# ---------------------------------------------------------------------------------------------------
# Pass 1: every key against the schema


def _type_ok(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if t == "array":
        return isinstance(value, (list, tuple))
    if t == "object":
        return isinstance(value, Mapping)
    return True


_TYPE_WORDS = {"integer": "an integer", "number": "a finite number", "string": "a string", "boolean": "true or false",
               "null": "null", "array": "a list", "object": "a mapping of keys"}


def _range_problem(value: float, s: Mapping[str, Any]) -> str | None:
    if "minimum" in s and value < s["minimum"]:
        return f"must be >= {s['minimum']:g}"
    if "exclusiveMinimum" in s and value <= s["exclusiveMinimum"]:
        return f"must be > {s['exclusiveMinimum']:g}"
    if "maximum" in s and value > s["maximum"]:
        return f"must be <= {s['maximum']:g}"
    if "exclusiveMaximum" in s and value >= s["exclusiveMaximum"]:
        return f"must be < {s['exclusiveMaximum']:g}"
    return None


def _check_node(value: Any, s: Mapping[str, Any], key: str) -> None:
    """Raise a one-line ConfigError if ``value`` does not satisfy schema node ``s`` (at dotted ``key``)."""
    if "anyOf" in s:
        branches = s["anyOf"]
        errors: list[ConfigError] = []
        for b in branches:
            try:
                _check_node(value, b, key)
                return
            except ConfigError as exc:
                errors.append(exc)
        # report against the branch of the value's own kind (a list for res_blocks, not "must be null")
        kinds = [b.get("type") for b in branches]
        for b, exc in zip(branches, errors):
            if b.get("type") != "null" and _type_ok(value, str(b.get("type"))):
                raise exc
        words = " or ".join(_TYPE_WORDS.get(str(k), str(k)) for k in kinds)
        raise _error(key, value, f"must be {words}{_why(s)}")
    if "enum" in s:
        allowed = list(s["enum"])
        # ``True == 1`` in Python: a boolean only matches a boolean
        if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error(key, value, f"must be one of {', '.join(_show(a) for a in allowed)}{hint}")
    t = s.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_type_ok(value, x) for x in types):
            words = " or ".join(_TYPE_WORDS.get(x, x) for x in types)
            extra = ", not true/false" if isinstance(value, bool) and ("integer" in types or "number" in types) else ""
            raise _error(key, value, f"must be {words}{extra}{_why(s)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _range_problem(value, s)
        if problem:
            raise _error(key, value, f"{problem}{_why(s)}")
    if isinstance(value, str) and "pattern" in s:
        if not re.search(s["pattern"], value):
            raise _error(key, value, f"must match {s['pattern']}{_why(s)}")
    if isinstance(value, (list, tuple)):
        if "minItems" in s and len(value) < s["minItems"]:
            n = s["minItems"]
            what = f"exactly {n}" if s.get("maxItems") == n else f"at least {n}"
            raise _error(key, value, f"needs {what} value{'s' if n != 1 else ''}{_why(s)}")
        if "maxItems" in s and len(value) > s["maxItems"]:
            n = s["maxItems"]
            what = f"exactly {n}" if s.get("minItems") == n else f"at most {n}"
            raise _error(key, value, f"needs {what} value{'s' if n != 1 else ''}{_why(s)}")
        if s.get("uniqueItems"):
            seen: list[Any] = []
            for v in value:
                if v in seen:
                    raise _error(key, value, f"lists {_show(v)} twice{_why(s)}")
                seen.append(v)
        if "items" in s:
            for i, v in enumerate(value):
                _check_node(v, s["items"], f"{key}[{i}]")
    if isinstance(value, Mapping) and "properties" in s:
        _check_object(value, s, key)


def _check_object(value: Mapping[str, Any], s: Mapping[str, Any], key: str) -> None:
    props: Mapping[str, Any] = s["properties"]
    known = list(props)
    for k in value:
        if k in props:
            continue
        if s.get("additionalProperties", True) is False:
            where = f"{key}.{k}" if key else str(k)
            what = "config key" if key else "config section"
            raise ConfigError(f"unknown {what} '{where}' (= {_show(value[k])}): {_did_you_mean(str(k), known)}; {FIX}")
    for req in s.get("required", []):
        if req not in value:
            where = f"{key}.{req}" if key else req
            raise ConfigError(f"config key '{where}' is missing{_why(props.get(req, {}))}; add it to your --configfile")
    for k, v in value.items():
        _check_node(v, props[k], f"{key}.{k}" if key else str(k))


def _accepts(value: Any, s: Mapping[str, Any]) -> bool:
    try:
        _check_node(value, s, "")
    except ConfigError:
        return False
    return True


def _coerce(value: Any, s: Mapping[str, Any], key: str, changed: list[str]) -> Any:
    """``value`` with every string the schema node ``s`` refuses replaced by its YAML reading where that fits."""
    if isinstance(value, str) and not _accepts(value, s):
        for read in (yaml.safe_load, float):  # float: YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                parsed = read(value)
            except (yaml.YAMLError, ValueError):
                continue
            if not isinstance(parsed, str) and _accepts(parsed, s):
                changed.append(key)
                return parsed
        return value
    props = s.get("properties")
    if isinstance(value, dict) and isinstance(props, Mapping):
        for k in list(value):
            if k in props:
                value[k] = _coerce(value[k], props[k], f"{key}.{k}" if key else str(k), changed)
    elif isinstance(value, list) and isinstance(s.get("items"), Mapping):
        for i, item in enumerate(value):
            value[i] = _coerce(item, s["items"], f"{key}[{i}]", changed)
    return value


def coerce_cli_strings(config: dict[str, Any], *, schema: Mapping[str, Any] | None = None) -> list[str]:
    """Read back the numbers, booleans and nulls that Snakemake's ``--config`` left as strings; return their keys.

    Snakemake parses a ``--config`` value with YAML's *base* loader, so everything nested in a mapping is a
    string: ``--config 'pretrain={n_bits: 5}'`` arrives as ``{"n_bits": "5"}``.  A string is replaced (in place)
    by its YAML reading only where the schema refuses the string and accepts that reading; a key whose schema
    takes strings (``run``, ``data.root``, ``fpi.lam: auto``) is never touched.
    """
    s = load_schema() if schema is None else schema
    changed: list[str] = []
    _coerce(config, s, "", changed)
    return changed


# ---------------------------------------------------------------------------------------------------
# Pass 2: cross-key rules


class _View:
    """The merged config with the schema's defaults behind it: ``v["finetune.steps"]``."""

    def __init__(self, config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
        self.config, self.schema = config, schema

    def __getitem__(self, key: str) -> Any:
        node: Any = self.config
        s: Any = self.schema
        given = True
        for part in key.split("."):
            s = s.get("properties", {}).get(part, {})
            given = given and isinstance(node, Mapping) and part in node
            node = node[part] if given else s.get("default")
        return node

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name) or {})


Rule = Callable[[_View], None]


def _rule_rounds(v: _View) -> None:
    """finetune.rounds is at most finetune.steps (each round trains at least one step)."""
    rounds, steps = v["finetune.rounds"], v["finetune.steps"]
    if rounds > max(steps, 1):
        raise _error("finetune.rounds", rounds,
                     f"must be <= finetune.steps = {steps} (every round trains at least one step between two "
                     "Gaussian solves)", "lower it or raise finetune.steps in your --configfile")


def _rule_warmup(v: _View) -> None:
    """pretrain/finetune.warmup_steps is at most the section's steps (else the peak lr is never reached)."""
    for sec in ("pretrain", "finetune"):
        warm, steps = v[f"{sec}.warmup_steps"], v[f"{sec}.steps"]
        if steps > 0 and warm > steps:
            raise _error(f"{sec}.warmup_steps", warm, f"must be <= {sec}.steps = {steps} (the linear warm-up would "
                                                      f"end after training, so the lr never reaches {sec}.lr)",
                         f"lower it (e.g. {max(steps // 10, 0)}) in your --configfile")


def _rule_gpu_batches(v: _View) -> None:
    """pretrain/finetune.batch_size is divisible by resources.gpus when gpus > 1 (one process per GPU)."""
    gpus = v["resources.gpus"]
    if not isinstance(gpus, int) or gpus <= 1:
        return
    for sec in ("pretrain", "finetune"):
        b = v[f"{sec}.batch_size"]
        if b % gpus:
            raise _error(f"{sec}.batch_size", b, f"must be divisible by resources.gpus = {gpus} (the global batch is "
                                                 "split evenly over one process per GPU)",
                         f"use a multiple of {gpus} (e.g. {max(gpus, b - b % gpus)}) in your --configfile")


def _rule_flow_layout(v: _View) -> None:
    """flow.preset and flow.arch are known; flow.res_blocks / flow.steps_per_level have one value or one per level."""
    from nfpi.flows import BUILTIN_ARCHS, PRESETS

    preset = v["flow.preset"]
    if preset not in PRESETS:
        raise _error("flow.preset", preset, f"unknown preset; {_did_you_mean(str(preset), sorted(PRESETS))}")
    arch = v["flow.arch"]
    if arch not in BUILTIN_ARCHS:  # only then ask the registry (it imports torch; the DAG does not)
        from nfpi.flows import available_flows

        if arch not in available_flows():
            raise _error("flow.arch", arch, f"unknown flow architecture; {_did_you_mean(str(arch), available_flows())}")
    levels = v["flow.levels"] if v["flow.levels"] is not None else PRESETS[preset].levels
    for key in ("res_blocks", "steps_per_level"):
        value = v[f"flow.{key}"]
        if value is not None and len(value) not in (1, levels):
            src = "flow.levels" if v["flow.levels"] is not None else f"preset '{preset}'"
            raise _error(f"flow.{key}", value, f"{len(value)} values for the {levels} levels of {src}",
                         f"give one value (all levels) or {levels} in your --configfile")


def _rule_data_files(v: _View) -> None:
    """data.root is set for every source but digits, and holds the source's files (unless download: true)."""
    name, root, download = v["data.name"], v["data.root"], v["data.download"]
    if download and name not in _TORCHVISION_FOLDERS:
        raise _error("data.download", download, f"only mnist, cifar10 and cifar100 can be downloaded, not '{name}'",
                     "set data.download: false in your --configfile and put the files under data.root (docs/data.md)")
    if name == "digits":
        return
    if root is None:
        raise ConfigError(f"config key 'data.root' is missing: the '{name}' source needs the folder holding its "
                          f"files (docs/data.md shows the layout); set data.root in your --configfile")
    path = Path(str(root)).expanduser()
    if download:  # torchvision creates the folder and downloads into it
        return
    if not path.is_dir():
        raise _error("data.root", root, f"folder {path} does not exist",
                     f"point data.root in your --configfile at the folder holding the '{name}' files (docs/data.md)")
    need: Path | None = None
    what = ""
    if name == "npz":
        need, what = path / "train.npz", "the training split (images, labels), see docs/data.md"
    elif name == "imagefolder":
        need, what = path / "train", "a folder train/<class>/<image> (+ test/, val/), see docs/data.md"
    elif name in _TORCHVISION_FOLDERS:
        need, what = path / _TORCHVISION_FOLDERS[name], f"torchvision's {name} files (or set data.download: true)"
    if need is not None and not need.exists():
        raise _error("data.root", root, f"{need} not found: the '{name}' source needs {what}",
                     "fix data.root in your --configfile or add the files")
    if name == "imagefolder" and not need.is_dir():  # type: ignore[union-attr]
        raise _error("data.root", root, f"{need} is not a folder (expected train/<class>/<image>)",
                     "fix data.root in your --configfile")


def _rule_fpi_bounds(v: _View) -> None:
    """fpi.var_min < fpi.var_max; fpi.step_min <= fpi.step_init; gd.gd_vmin < gd.gd_vmax when both are set; with
    fpi.lam: auto, fpi.path.lam_min < fpi.path.lam_max and data.val_fraction > 0."""
    if v["fpi.var_min"] >= v["fpi.var_max"]:
        raise _error("fpi.var_min", v["fpi.var_min"], f"must be < fpi.var_max = {v['fpi.var_max']:g}")
    if v["fpi.step_min"] > v["fpi.step_init"]:
        raise _error("fpi.step_min", v["fpi.step_min"], f"must be <= fpi.step_init = {v['fpi.step_init']:g} (the "
                                                        "first step would already count as no progress)")
    lo, hi = v["gd.gd_vmin"], v["gd.gd_vmax"]
    if lo is not None and hi is not None and lo >= hi:
        raise _error("gd.gd_vmin", lo, f"must be < gd.gd_vmax = {hi:g}")
    if v["fpi.lam"] == "auto":  # the lambda path (nfpi.lampath) chooses lambda on the validation split
        if v["fpi.path.lam_min"] >= v["fpi.path.lam_max"]:
            raise _error("fpi.path.lam_min", v["fpi.path.lam_min"],
                         f"must be < fpi.path.lam_max = {v['fpi.path.lam_max']:g} (the grid runs from one to the other)")
        if v["data.val_fraction"] <= 0:
            raise _error("data.val_fraction", v["data.val_fraction"], "must be > 0 with fpi.lam: auto (lambda is "
                                                                      "chosen on the validation split)")


def _rule_experiments(v: _View) -> None:
    """experiments.figure_lambdas is a small then a larger lambda; evaluate.splits includes test (the tables);
    experiments.gd_joint has Table 1, a policy and fine-tuning steps to run in."""
    small, large = v["experiments.figure_lambdas"]
    if small >= large:
        raise _error("experiments.figure_lambdas", [small, large], "must be a small lambda then a larger one "
                                                                    "(Fig. 1(c)-(d) compare them)")
    splits = v["evaluate.splits"]
    if "test" not in splits:
        raise _error("evaluate.splits", splits, "must include 'test' (every table reports test accuracy)")
    if v["experiments.gd_joint"]:  # Baseline 2 joint with the flow (nfpi.joint_gd): rows of Table 1, trained in finetune
        if not v["experiments.table1"]:
            raise _error("experiments.gd_joint", True, "needs experiments.table1: true (its rows are Table 1's)")
        if not v["experiments.gd_policies"]:
            raise _error("experiments.gd_joint", True, "needs at least one of experiments.gd_policies (one row each)")
        if v["finetune.steps"] < 1:
            raise _error("finetune.steps", v["finetune.steps"], "must be >= 1 with experiments.gd_joint: true (the "
                                                                "joint Gaussians are trained during fine-tuning)")


def _classifier_sections(v: _View) -> list[str]:
    """The classifier sections this run trains: cnn always, swin / eva02 when their experiment is on."""
    return ["cnn"] + [s for s in ("swin", "eva02") if v[f"experiments.{s}"]]


def _rule_classifiers(v: _View) -> None:
    """Each classifier run (cnn; swin, eva02 when on) has a known arch, max_lr >= lr under onecycle, a
    model_kwargs.model_name that timm knows, and its pretrained_file exists when set."""
    from nfpi.classifiers import BUILTIN_CLASSIFIERS, check_pretrained_file, classifier_config

    for sec in _classifier_sections(v):
        cfg = classifier_config(sec, v.section(sec))
        if cfg.arch not in BUILTIN_CLASSIFIERS:  # only then ask the registry (it imports torch; the DAG does not)
            from nfpi.classifiers import available_classifiers

            if cfg.arch not in available_classifiers():
                raise _error(f"{sec}.arch", cfg.arch,
                             f"unknown classifier; {_did_you_mean(cfg.arch, available_classifiers())}")
        if cfg.schedule == "onecycle" and cfg.max_lr < cfg.lr:
            raise _error(f"{sec}.max_lr", cfg.max_lr, f"must be >= {sec}.lr = {cfg.lr:g} (the one-cycle schedule "
                                                      "rises from lr to max_lr)")
        model_name = (cfg.model_kwargs or {}).get("model_name")
        if model_name is not None:
            import timm  # only here: a second of imports that most configs do not need

            if not timm.is_model(model_name):
                raise _error(f"{sec}.model_kwargs.model_name", model_name, "not a timm architecture; "
                             + _did_you_mean(str(model_name).split(".")[0], timm.list_models(f"{sec}*") or
                                             timm.list_models()))
    # A missing weights file (Table 6's EVA02 checkpoint): one line with the exact command that gets it.
    check_pretrained_file({**{sec: v.section(sec) for sec in ("cnn", "swin", "eva02")},
                           "experiments": {sec: v[f"experiments.{sec}"] for sec in ("swin", "eva02")}})


#: The cross-key rules, in the order they run (each docstring is the rule; docs/config.md lists them). None
#: imports torch for a built-in flow or classifier; the last two ask the registries (torch) for another name.
RULES: tuple[Rule, ...] = (_rule_rounds, _rule_warmup, _rule_gpu_batches, _rule_data_files, _rule_fpi_bounds,
                           _rule_experiments, _rule_flow_layout, _rule_classifiers)


# ---------------------------------------------------------------------------------------------------
# Pass 3: the library dataclasses' own checks


def _build_dataclasses(v: _View) -> None:
    """Build every library config dataclass from its slice (their ``__post_init__`` checks run now)."""
    import dataclasses

    from nfpi.classifiers import classifier_config
    from nfpi.config import from_mapping
    from nfpi.data import DataConfig
    from nfpi.flowfactor import FlowFactorConfig
    from nfpi.flows import FlowConfig, resolve_preset
    from nfpi.fpi import FPIConfig
    from nfpi.latent_ot import LatentOTConfig
    from nfpi.training import TrainConfig

    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    builders: list[tuple[str, Callable[[], Any]]] = [
        ("data", lambda: from_mapping(DataConfig, v.section("data"), where="data")),
        ("flow", lambda: resolve_preset(from_mapping(FlowConfig, v.section("flow"), where="flow"))),
        ("pretrain", lambda: from_mapping(TrainConfig, v.section("pretrain"), where="pretrain")),
        ("finetune", lambda: from_mapping(TrainConfig, {k: x for k, x in v.section("finetune").items()
                                                        if k in train_keys}, where="finetune")),
        ("fpi", lambda: from_mapping(FPIConfig, {**v.section("fpi"), **v.section("gd")}, where="fpi")),
        ("latent_ot", lambda: from_mapping(LatentOTConfig, v.section("latent_ot"), where="latent_ot")),
        ("flowfactor", lambda: from_mapping(FlowFactorConfig, v.section("flowfactor"), where="flowfactor")),
    ]
    builders += [(sec, functools.partial(classifier_config, sec, v.section(sec))) for sec in _classifier_sections(v)]
    for section, build in builders:
        try:
            build()
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # DataError and the __post_init__ ValueErrors
            msg = " ".join(str(exc).split())
            raise ConfigError(msg if "config key" in msg else f"config section '{section}': {msg}; {FIX}") from None


# ---------------------------------------------------------------------------------------------------


def check_config(config: Mapping[str, Any], *, schema: Mapping[str, Any] | None = None) -> None:
    """Check the merged workflow config; raise :class:`ConfigError` (one line: key, value, fix) on the first problem.

    Args:
        config: the merged config mapping (as Snakemake's ``config``; not modified).
        schema: the JSON schema (default: :func:`load_schema`).
    """
    s = load_schema() if schema is None else schema
    if not isinstance(config, Mapping):
        raise ConfigError(f"the config must be a mapping of sections, got {_show(config)}; {FIX}")
    _check_object(config, s, "")
    view = _View(config, s)
    for rule in RULES:
        rule(view)
    _build_dataclasses(view)


def schema_error_line(exc: BaseException) -> str:
    """One line for a failure of Snakemake's ``validate`` (the second net): the jsonschema error's key and
    message instead of the schema dump Snakemake prints."""
    err: Any = next((a for a in getattr(exc, "args", ()) if hasattr(a, "absolute_path")), None)
    if err is None:
        cause = exc.__cause__ or exc.__context__
        if cause is not None and hasattr(cause, "absolute_path"):
            err = cause
    if err is None:
        return " ".join(str(exc).split())[:300]
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    return f"config key '{key}': {' '.join(str(err.message).split())[:200]}; {FIX}"
