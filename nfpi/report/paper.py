"""The paper's tables (Tables 1-6) and the results summary, built from a run's metrics files.

Every number is a :class:`~nfpi.report.tables.Cell` with its source file and key; a metrics file whose lineage
hash does not match the run's config is refused (:func:`~nfpi.report.tables.load_metrics`).

    >>> tables = paper_tables(cfg, Path("results/digits"), stamp={})   # doctest: +SKIP
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from nfpi.data import dataset_title
from nfpi.experiments import (GD_POLICIES, ablation_rows, aug_variants, lineage_hash,
                              settings_from_config, table_settings)
from nfpi.report.tables import Cell, Table, cell_from, load_metrics, lookup
from nfpi.share import SharedRows


__all__ = ["paper_tables", "table1", "table2", "table3", "table4", "headline", "summary_page", "not_run"]

PCT = 100.0



def _title(cfg: Mapping[str, Any]) -> str:
    """The data's name in titles: the source (cifar10), or the run's name for a user's npz / ImageFolder."""
    return dataset_title(str(cfg["data"]["name"]), cfg.get("run"))


def _status_note(m: Mapping[str, Any]) -> str:
    status = lookup(m, "solver.status") or "?"
    if status == "joint":  # nfpi.joint_gd: no solve; the Gaussians took a GD step with every flow step
        return "GD with the flow (joint)"
    it = lookup(m, "solver.result.iterations")
    return f"{status}" + (f" ({it} it.)" if it is not None else "")


def _load(cfg: Mapping[str, Any], r: Path, sh: SharedRows, kind: str, s: str) -> tuple[Path, dict[str, Any]]:
    """A setting's metrics file (``kind``: metrics or cnn), its representative's when it shares a fine-tuning,
    checked against the lineage hash of the setting it was computed for."""
    rep = sh.of(s)
    f = r / kind / f"{rep}.json"
    sections = ("evaluate",) if kind == "metrics" else ("sample", "cnn")
    return f, load_metrics(f, lineage_hash(cfg, rep, *sections))


def _labels(cfg: Mapping[str, Any]) -> dict[str, str]:
    return {name: s.label for name, s in settings_from_config(cfg).items()}


def _gd_subset_note(cfg: Mapping[str, Any]) -> list[str]:
    """Say so when Table 1 has fewer Baseline 2 rows than the paper's five learning-rate policies."""
    ran = list(cfg.get("experiments", {}).get("gd_policies", GD_POLICIES))
    left = [p for p in GD_POLICIES if p not in ran]
    if not left:
        return []
    return [f"Baseline 2 ran {len(ran)} of the {len(GD_POLICIES)} learning-rate policies (experiments.gd_policies); "
            f"not run: {', '.join(left)} (config/full.yaml runs all five)."]


def table1(cfg: Mapping[str, Any], r: Path, names: list[str], stamp: dict[str, str],
           sh: SharedRows | None = None) -> Table:
    sh = sh or SharedRows()
    labels = _labels(cfg)
    cnn = bool(cfg.get("experiments", {}).get("table1_cnn", False))  # CNN-Acc of every row (experiments.table1_cnn)
    rows = []
    for s in names:
        f, m = _load(cfg, r, sh, "metrics", s)
        note = _status_note(m) if sh.of(s) == s else f"shares {sh.of(s)}'s fine-tuning"
        row = [Cell(sh.label(s, labels[s], labels)), cell_from(m, f, "test.nf_acc", scale=PCT),
               cell_from(m, f, "val.nf_acc", scale=PCT), cell_from(m, f, "test.bpd_conditional", fmt="{:.3f}"),
               Cell(note)]
        if cnn:
            fc, mc = _load(cfg, r, sh, "cnn", s)
            row.insert(2, cell_from(mc, fc, "test.top1", scale=PCT))
        rows.append(row)
    columns = ["Model", "NF-Acc test (%)", "NF-Acc val (%)", "bits/dim test", "Gaussian solver"]
    if cnn:
        columns.insert(2, "CNN-Acc test (%)")
    return Table("table1", f"Table 1: NF-Acc of the baselines and NFPI ({_title(cfg)}, after fine-tuning)",
                 columns, rows,
                 ["Every setting's Gaussians are solved on the same pretrained flow's training latents, then the "
                  "flow is fine-tuned on them (fixed; the joint Baseline 2 rows train them with the flow) and "
                  "evaluated with its EMA weights.",
                  "Baseline 2 uses the learning-rate policies defined in docs/method.md (the paper does not define "
                  "them). 'converged on fixed latents': GD minimises Eq. 4 on the pretrained flow's latents to "
                  "convergence, then the flow is fine-tuned on the result; 'joint with the flow' (the paper's "
                  "reading): the Gaussians take a GD step of Eq. 4 at every fine-tuning step (docs/method.md)."]
                 + _gd_subset_note(cfg) + sh.note(names), stamp)


def table2(cfg: Mapping[str, Any], r: Path, stamp: dict[str, str], sh: SharedRows | None = None) -> Table:
    sh = sh or SharedRows()
    names = table_settings(cfg)["table2"]  # the sweep, then (fpi.lam: auto) the lambda path's choice
    labels = [f"{float(lam):g}" for lam in cfg["experiments"]["lambdas"]]
    labels += [_path_label(r)] * (len(names) - len(labels))
    metrics = []
    for s, label in zip(names, labels, strict=True):
        f, m = _load(cfg, r, sh, "metrics", s)
        fc, mc = _load(cfg, r, sh, "cnn", s)
        metrics.append((label, f, m, fc, mc))
    best = max(range(len(metrics)), key=lambda i: lookup(metrics[i][2], "val.nf_acc") or -1.0)
    rows = [[Cell(label + (" (best val)" if i == best else "")), cell_from(m, f, "test.nf_acc", scale=PCT),
             cell_from(mc, fc, "test.top1", scale=PCT), cell_from(m, f, "val.nf_acc", scale=PCT), Cell(_status_note(m))]
            for i, (label, f, m, fc, mc) in enumerate(metrics)]
    return Table("table2", f"Table 2: NF-Acc and CNN-Acc for increasing lambda ({_title(cfg)})",
                 ["lambda", "NF-Acc test (%)", "CNN-Acc test (%)", "NF-Acc val (%)", "FPI"], rows,
                 ["CNN-Acc: a ResNet18 trained only on images sampled from the fine-tuned flow "
                  f"({cfg['sample']['per_class']} per class, T = {cfg['sample']['temperature']}), tested on the real "
                  "test split.", "lambda is selected on the validation split (marked); test numbers are only reported."]
                 + sh.note(names), stamp)


def _path_label(r: Path) -> str:
    """Table 2's lambda cell for the lambda path's row: the lambda it chose (the NFPI solve record)."""
    f = r / "gaussians" / "nfpi.json"
    lam = json.loads(f.read_text()).get("lam") if f.is_file() else None
    return f"{lam:.4g} (lambda path)" if isinstance(lam, (int, float)) else "auto (lambda path; not run)"


def _ablation_lam(cfg: Mapping[str, Any]) -> float | str:
    lam = cfg.get("experiments", {}).get("ablation_lam")
    lam = cfg["fpi"]["lam"] if lam is None else lam
    return "auto (each row's own lambda path)" if lam == "auto" else float(lam)


def table3(cfg: Mapping[str, Any], r: Path, stamp: dict[str, str], sh: SharedRows | None = None) -> Table:
    sh = sh or SharedRows()
    rows = []
    for label, s in ablation_rows(cfg):
        label = f"{label} (the NFPI setting)" if s == "nfpi" else label  # same spec: one setting, one run
        f, m = _load(cfg, r, sh, "metrics", s)
        fc, mc = _load(cfg, r, sh, "cnn", s)
        rows.append([Cell(label), cell_from(m, f, "test.nf_acc", scale=PCT), cell_from(mc, fc, "test.top1", scale=PCT)])
    return Table("table3", f"Table 3: ablation of the KLD components ({_title(cfg)})",
                 ["Setting", "NF-Acc test (%)", "CNN-Acc test (%)"], rows,
                 [f"lambda = {_ablation_lam(cfg)} for rows #2-#4. All rows initialise from the class data statistics except "
                  "#2 (identity covariance, kept fixed)."] + sh.note([s for _, s in ablation_rows(cfg)]),
                 stamp)


def table4(cfg: Mapping[str, Any], r: Path, stamp: dict[str, str], sh: SharedRows | None = None) -> Table:
    sh = sh or SharedRows()
    labels = _labels(cfg)
    rows = []
    ref = resources.files("nfpi").joinpath("resources/related_work.csv")
    with ref.open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            rows.append([Cell(row["method"]), Cell(row["cifar10"] or None, note="not reported"),
                         Cell(row["cifar100"] or None, note="not reported"), Cell(row["model"]), Cell(row["goa"]),
                         Cell(f"published: {row['citation']}")])
    ds = cfg["data"]["name"]  # which published column a measured row may fill; messages name the data by _title
    gd = "gdjoint_" if cfg["experiments"].get("gd_joint", False) else "gd_"  # the paper's reading when it ran
    for s, label, goa in (("nfpi", "NF^pi (this implementation)", "FPI"),
                          (gd + cfg["experiments"].get("gd_policies", ["linear"])[0], "NF^GD (this implementation)",
                           "GD")):
        if not (r / "metrics" / f"{sh.of(s)}.json").exists():
            continue
        f, m = _load(cfg, r, sh, "metrics", s)
        label = sh.label(s, label, labels)
        acc = cell_from(m, f, "test.nf_acc", scale=PCT)
        c10 = acc if ds == "cifar10" else Cell(None, note=f"measured on {_title(cfg)}: {acc.text()}")
        c100 = acc if ds == "cifar100" else Cell(None, note="-")
        rows.append([Cell(label), c10, c100, Cell("NF"), Cell(goa), Cell(f"measured: {f}")])
    return Table("table4", "Table 4: comparison with related work (accuracy, %)",
                 ["Method", "CIFAR10", "CIFAR100", "Model", "GOA", "Source"], rows,
                 ["Rows marked 'published' are the numbers the NFPI paper cites (Enescu & Sahbi 2024, Table 4); they "
                  "are not reproduced here. Rows marked 'measured' come from this run's metrics files.",
                  "GOA: Gaussian optimisation algorithm."], stamp)


def _aug_table(cfg: Mapping[str, Any], r: Path, which: str, stamp: dict[str, str]) -> Table:
    variants = aug_variants(cfg)
    sec = cfg[which]
    scratch = not sec.get("pretrained_file")
    arch = sec.get("arch", which)
    rows = []
    for key, label in variants:
        f = r / which / f"{key}.json"
        m = load_metrics(f, lineage_hash(cfg, "nfpi", "augment", which))
        params = lookup(m, "parameters")
        rows.append([Cell(label), Cell(params / 1e6 if params else None, fmt="{:.2f}"),
                     cell_from(m, f, "test.top1", scale=PCT), cell_from(m, f, "test.top5", scale=PCT),
                     cell_from(m, f, "train_size", fmt="{:.0f}")])
    num = "5" if which == "swin" else "6"
    origin = ("from scratch: no pretrained weights file configured (" + which + ".pretrained_file)") if scratch else \
        f"fine-tuned from {sec.get('pretrained_file')}"
    notes = [f"{arch} {origin}.",
             "NF augmentation: PCA-axis latent mixup of same-class pairs through the NFPI flow (docs/method.md)."]
    if len(variants) < 4:
        notes.append("The rows with the standard augmentation set (SA) were not run (experiments.standard_aug: "
                     "false, the default run's choice; config/full.yaml runs them).")
    if which == "eva02" and scratch:
        notes.append("The paper's Table 6 fine-tunes an ImageNet-21k-pretrained EVA02 on ImageNet; without a local "
                     "weights file this row set is a small EVA02-style model trained from scratch, not that setting.")
    return Table(f"table{num}", f"Table {num}: NF augmentation for {arch} ({_title(cfg)})",
                 ["Training set", "Params (M)", "Top-1 test (%)", "Top-5 test (%)", "Train images"], rows, notes, stamp)


def not_run(cfg: Mapping[str, Any], which: Mapping[str, list[str]]) -> str:
    """The paper's tables this config does not run (so that a missing table is a stated choice, not a loss)."""
    exp = cfg.get("experiments", {})
    off = [(t, title, key) for t, title, key in (("table1", "Table 1 (baselines and NFPI)", "table1"),
                                                   ("table2", "Table 2 (the lambda sweep)", "lambdas"),
                                                   ("table3", "Table 3 (the KLD ablation)", "ablation"))
           if t not in which]
    off += [(m, title, m) for m, title in (("swin", "Table 5 (Swin)"), ("eva02", "Table 6 (EVA02)"))
            if not exp.get(m, True)]
    if not off:
        return ""
    lines = [f"- {title}: off (experiments.{key})" for _, title, key in off]
    return "\n## Not run in this config\n\n" + "\n".join(lines) + "\n\nconfig/full.yaml runs every table on the " \
        "default's data (docs/benchmarks.md, \"What the default runs\").\n"


def headline(cfg: Mapping[str, Any], r: Path, which: Mapping[str, list[str]]) -> list[tuple[str, Cell]]:
    """The run's headline numbers: NF-Acc (test) of Baseline 1 and NFPI, NFPI's gain, and a CNN-Acc.

    Read from the same metrics files as the tables (lineage-checked); a number whose experiment the
    config turns off is left out.
    """
    rows: list[tuple[str, Cell]] = []
    evaluated = {s for t in which.values() for s in t}
    acc: dict[str, Any] = {}
    for s, label in (("baseline1", "NF-Acc test, Baseline 1 (%)"), ("nfpi", "NF-Acc test, NFPI (%)")):
        if s in evaluated:
            f = r / "metrics" / f"{s}.json"
            cell = cell_from(load_metrics(f, lineage_hash(cfg, s, "evaluate")), f, "test.nf_acc", scale=PCT)
            acc[s] = cell.value
            rows.append((label, cell))
    if isinstance(acc.get("baseline1"), float) and isinstance(acc.get("nfpi"), float):
        rows.append(("NFPI - Baseline 1 (points)", Cell(acc["nfpi"] - acc["baseline1"], fmt="{:+.2f}")))
    # CNN-Acc (a classifier trained on samples only) exists for the settings of Tables 2-3: NFPI's own,
    # else that of Table 2's lambda selected on validation NF-Acc
    cnn_settings = set(which.get("table2", [])) | set(which.get("table3", []))
    pick, label = ("nfpi", "CNN-Acc test, NFPI (%)") if "nfpi" in cnn_settings else (None, "")
    if pick is None and which.get("table2"):
        lams = list(cfg["experiments"]["lambdas"])
        val = [lookup(load_metrics(r / "metrics" / f"{s}.json", lineage_hash(cfg, s, "evaluate")), "val.nf_acc")
               for s in which["table2"]]
        best = max(range(len(lams)), key=lambda i: val[i] if val[i] is not None else -1.0)
        pick, label = which["table2"][best], f"CNN-Acc test, NFPI lambda={lams[best]:g} (best val, Table 2) (%)"
    if pick is not None:
        f = r / "cnn" / f"{pick}.json"
        rows.append((label, cell_from(load_metrics(f, lineage_hash(cfg, pick, "sample", "cnn")), f, "test.top1",
                                      scale=PCT)))
    return rows


def summary_page(cfg: Mapping[str, Any], head: list[tuple[str, Cell]], stamp: Mapping[str, str],
                 tables: list[Table]) -> str:
    """The report's results summary: headline numbers, the run's config hash and git revision, the tables."""
    from nfpi.report.tables import html_page, html_table

    body = "<h3>Headline numbers</h3>\n" + html_table(["Quantity", "Value", "Source"],
                                                       [[q, c.text(), c.source or "-"] for q, c in head])
    run = [["run", str(cfg.get("run"))], ["dataset", _title(cfg)], ["source", str(cfg["data"]["name"])],
           ["config hash", stamp["config hash"]], ["git revision", stamp["git"]], ["nfpi", stamp["nfpi"]]]
    body += "<h3>Run</h3>\n" + html_table(["", ""], run)
    body += "<h3>Tables</h3>\n<ul>" + "".join(f"<li>{html.escape(t.title)}</li>" for t in tables) + "</ul>\n"
    return html_page(f"Results summary: {cfg.get('run')} ({_title(cfg)})", body)


def paper_tables(cfg: Mapping[str, Any], r: Path, stamp: dict[str, str],
                 sh: SharedRows | None = None) -> list[Table]:
    """Tables 1-6 as the run's config selects them: 1-3 per ``experiments``, 4 always, 5-6 per classifier.
    ``sh``: the settings that share a fine-tuning (:mod:`nfpi.share`; none by default)."""
    sh = sh or SharedRows()
    which = table_settings(cfg)
    tables: list[Table] = []
    if "table1" in which:
        tables.append(table1(cfg, r, which["table1"], stamp, sh))
    if "table2" in which:
        tables.append(table2(cfg, r, stamp, sh))
    if "table3" in which:
        tables.append(table3(cfg, r, stamp, sh))
    tables.append(table4(cfg, r, stamp, sh))
    for sec in ("swin", "eva02"):
        if cfg["experiments"].get(sec, True):
            tables.append(_aug_table(cfg, r, sec, stamp))
    return tables
