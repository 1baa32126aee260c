"""Tool module: the paper-settings audit, each paper config's resolved settings next to the paper's.

    python -m nfpi.paper_settings --write     # regenerate docs/paper-settings.md from the table
    python -m nfpi.paper_settings --check     # exit 1 if the doc is stale or a resolved value drifted

The table ``config/audit/paper_settings.yaml`` lists, per setting, the value each paper config must resolve
to, the paper's value (Sec. 5.2, Tables 1-3) and the source of ours: ``paper``, ``reference code``
(the authors' public code) or ``our choice, because ...``.  :func:`resolve` resolves a config the way
the workflow does: ``config/config.yaml`` updated with the paper file (Snakemake's ``--configfile``
merge), validated with the schema's defaults filled in (``snakemake.utils.validate``), then the slice
each rule receives parsed into its dataclass (``pretrain`` -> ``TrainConfig``, ``finetune`` ->
``FinetuneConfig``, the ``nfpi`` setting's spec -> ``FPIConfig``, ``flow`` -> the resolved preset,
``cnn`` / ``swin`` / ``eva02`` -> ``ClassifierConfig`` as the classify stage parses them).  Derived
rows: ``data.train_images`` (the training split after the val carve, by ``nfpi.data``'s own carve),
``<stage>.steps_per_epoch`` (the loop drops the last partial batch) and ``<stage>.epochs``.

:func:`intended_classifier` resolves a classifier section on top of its own preset
(``nfpi.classifiers.classifier_config``), which is what the table records for those rows.
``tests/test_paper_settings.py`` runs the comparison.  Like ``nfpi.schema``, this imports across the
package; library modules never import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
TABLE_PATH = ROOT / "config" / "audit" / "paper_settings.yaml"
DOC_PATH = ROOT / "docs" / "paper-settings.md"
SCHEMA_PATH = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = ROOT / "config" / "config.yaml"

# The paper configs and their sources' training-part sizes and classes (torchvision MNIST / CIFAR,
# the downsampled-ImageNet train batches); the val split is carved from these by nfpi.data.
CONFIGS: dict[str, str] = {name: f"config/{name}.yaml" for name in
                           ("cifar10", "cifar100", "imagenet32", "imagenet64", "mnist")}
SOURCE_TRAIN: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10), "cifar100": (50_000, 100), "mnist": (60_000, 10),
    "imagenet32": (1_281_167, 1000), "imagenet64": (1_281_167, 1000),
}
SOURCES = ("paper", "reference code", "our choice, because ")
CLASSIFIER_SECTIONS = ("cnn", "swin", "eva02")


def merged_config(name: str) -> dict[str, Any]:
    """``config/config.yaml`` updated with the paper file, as Snakemake merges ``--configfile``."""
    from snakemake.utils import update_config

    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    update_config(config, yaml.safe_load((ROOT / CONFIGS[name]).read_text()))
    return config


def workflow_config(name: str) -> dict[str, Any]:
    """The merged config after ``workflow/rules/common.smk``'s validation (schema defaults filled in)."""
    from snakemake.utils import validate

    config = merged_config(name)
    validate(config, str(SCHEMA_PATH))
    return config


def train_images(config: Mapping[str, Any]) -> int:
    """Training images after the val carve, by the carve ``nfpi.data`` uses (balanced stand-in labels:
    the carve takes ``round(val_fraction * N)`` images whatever the class sizes)."""
    from nfpi.data import stratified_carve

    n, k = SOURCE_TRAIN[config["data"]["name"]]
    labels = np.arange(n) % k
    carved = stratified_carve(labels, k, float(config["data"]["val_fraction"]), [int(config["data"]["split_seed"]), 1])
    return int(n - carved.sum())


def _plain(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _flat(prefix: str, obj: Any) -> dict[str, Any]:
    return {f"{prefix}.{f.name}": _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def classifier_as_run(config: Mapping[str, Any], section: str) -> Any:
    """The classifier options the classify stage trains with for ``section``, as it parses its slice:
    the section (schema defaults filled in, which are that section's preset) on ``PRESETS[section]``."""
    from nfpi.classifiers import classifier_config

    return classifier_config(section, json.loads(json.dumps(config[section])))


def intended_classifier(name: str, section: str) -> Any:
    """``section`` of the merged config (no schema defaults) on top of ``nfpi.classifiers.PRESETS[section]``."""
    from nfpi.classifiers import classifier_config

    return classifier_config(section, merged_config(name).get(section) or {})


def resolve(name: str) -> dict[str, Any]:
    """Every audited value of paper config ``name`` as the workflow's rules receive it, flat ``rule.key``."""
    from nfpi.experiments import settings_from_config
    from nfpi.training import FinetuneConfig
    from nfpi.flows import FlowConfig, resolve_preset
    from nfpi.fpi import FPIConfig
    from nfpi.training import TrainConfig
    from nfpi.config import from_mapping

    config = workflow_config(name)
    out: dict[str, Any] = {"data.val_fraction": config["data"]["val_fraction"], "data.train_images": train_images(config)}
    flow = from_mapping(FlowConfig, config["flow"], where="flow")
    out["flow.arch"] = flow.arch
    out["flow.actnorm_per_pixel"] = flow.actnorm_per_pixel
    out.update({f"flow.{k}": _plain(v) for k, v in dataclasses.asdict(resolve_preset(flow)).items()})
    # The JSON round trip is the slice the rule passes on the command line.
    stages = {"pretrain": from_mapping(TrainConfig, json.loads(json.dumps(config["pretrain"])), where="pretrain"),
              "finetune": from_mapping(FinetuneConfig, json.loads(json.dumps(config["finetune"])), where="finetune")}
    epochs = 0.0
    for stage, cfg in stages.items():
        out.update(_flat(stage, cfg))
        per_epoch = out["data.train_images"] // cfg.batch_size
        out[f"{stage}.steps_per_epoch"] = per_epoch
        out[f"{stage}.epochs"] = cfg.steps / per_epoch
        epochs += cfg.steps / per_epoch
    out["schedule.epochs"] = epochs
    spec = settings_from_config(config)["nfpi"].spec
    out.update(_flat("fpi", from_mapping(FPIConfig, json.loads(json.dumps(spec)), where="fpi")))
    for section in CLASSIFIER_SECTIONS:
        out.update(_flat(section, classifier_as_run(config, section)))
    return out


def intended(name: str) -> dict[str, Any]:
    """:func:`resolve`, with the classifier sections on their own presets (:func:`intended_classifier`)."""
    out = resolve(name)
    for section in CLASSIFIER_SECTIONS:
        out.update(_flat(section, intended_classifier(name, section)))
    return out


# ----------------------------------------------------------------------------------------------
# The table and its rendering


@dataclasses.dataclass(frozen=True)
class Row:
    """One audited setting of one paper config."""

    config: str
    key: str  # "rule.key" as in resolve()
    setting: str  # what it is, in words
    value: Any  # what the config must resolve to
    paper: str  # the paper's value (or "not given")
    source: str  # "paper", "reference code ..." or "our choice, because ..."
    pending: str | None = None  # why the workflow does not resolve to ``value`` yet (the fix it waits for)


def load_table(path: Path = TABLE_PATH) -> list[Row]:
    """The table's rows, one per (config, setting); a row's ``value`` / ``source`` may be one for all
    configs or a mapping per config (``values`` / ``sources``), and ``configs`` restricts the row."""
    doc = yaml.safe_load(path.read_text())
    rows: list[Row] = []
    for item in doc["rows"]:
        for name in item.get("configs", list(CONFIGS)):
            if "values" in item:
                if name not in item["values"]:
                    raise ValueError(f"{path}: row {item['key']} has no value for {name}")
                value = item["values"][name]
            else:
                value = item["value"]
            source = item["sources"].get(name, item.get("source")) if "sources" in item else item["source"]
            paper = item["paper"].get(name, item["paper"].get("default")) if isinstance(item["paper"], dict) \
                else item["paper"]
            pending = item.get("pending")
            pending = pending.get(name) if isinstance(pending, dict) else pending
            rows.append(Row(name, item["key"], item["setting"], value, str(paper), str(source), pending))
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return f"{v:g}" if v != int(v) or abs(v) < 1e6 else f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def render(rows: list[Row] | None = None) -> str:
    """docs/paper-settings.md from the table."""
    rows = load_table() if rows is None else rows
    doc = yaml.safe_load(TABLE_PATH.read_text())
    out = ["# Paper settings: what each paper config resolves to, and why", "",
           "Generated by `python -m nfpi.paper_settings --write` from `config/audit/paper_settings.yaml`; do not",
           "edit by hand. `tests/test_paper_settings.py` resolves every paper config as the workflow does",
           "(`config/config.yaml` updated with the paper file, validated with the schema's defaults, each rule's",
           "slice parsed into its dataclass) and fails when a resolved value differs from this table.", ""]
    out += [line.rstrip() for line in str(doc.get("intro", "")).strip().splitlines()] + [""]
    for name in CONFIGS:
        mine = [r for r in rows if r.config == name]
        if not mine:
            continue
        out += [f"## `{CONFIGS[name]}`", ""]
        note = (doc.get("notes") or {}).get(name)
        if note:
            out += [line.rstrip() for line in str(note).strip().splitlines()] + [""]
        out += ["| setting | key | value | paper | source |", "| --- | --- | --- | --- | --- |"]
        for r in mine:
            value = _fmt(r.value) + (f" (pending: {r.pending})" if r.pending else "")
            out.append(f"| {r.setting} | `{r.key}` | {value} | {r.paper} | {r.source} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def drift(name: str, rows: list[Row] | None = None, *, classifiers: str = "intended") -> list[str]:
    """Rows of config ``name`` whose resolved value differs from the table (one line each; rows
    marked ``pending`` are skipped: they wait for a fix elsewhere).

    ``classifiers="intended"`` resolves the classifier sections on their presets
    (:func:`intended`), ``"as_run"`` as the classify stage does today (:func:`resolve`).
    """
    rows = load_table() if rows is None else rows
    got = intended(name) if classifiers == "intended" else resolve(name)
    return [f"{name}: {r.key} resolves to {got.get(r.key, '<missing>')!r}, the table says {r.value!r}"
            for r in rows if r.config == name and not r.pending and not same(got.get(r.key, _MISSING), r.value)]


_MISSING = object()


def same(a: Any, b: Any) -> bool:
    """Equal as config values (1 == 1.0, tuples as lists), never bool == int."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return bool(a == b) if a is not _MISSING else False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if the doc is stale or a value drifted")
    p.add_argument("--write", action="store_true", help=f"write {DOC_PATH.relative_to(ROOT)}")
    args = p.parse_args(argv)
    text = render()
    if args.write:
        from nfpi.io import atomic_write_text

        atomic_write_text(DOC_PATH, text)
    if args.check:
        problems = [] if DOC_PATH.exists() and DOC_PATH.read_text() == text else \
            [f"{DOC_PATH.relative_to(ROOT)} is stale: run `python -m nfpi.paper_settings --write`"]
        rows = load_table()
        for name in CONFIGS:
            problems += drift(name, rows)
        if problems:
            sys.exit("\n".join(problems))
    if not (args.write or args.check):
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
