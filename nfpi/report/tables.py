"""Table assembly: every cell traceable to a metrics file, every table stamped with its provenance.

A :class:`Table` holds :class:`Cell` values that remember the metrics file and the dotted key they
came from.  :func:`write_table` writes Markdown, CSV, LaTeX and HTML (the report's page), plus ``<name>.sources.json``
mapping each cell to its source.  :func:`load_metrics` refuses a metrics file whose lineage config
hash differs from the one the current config implies (a stale or foreign result), naming the file,
both hashes and the fix.
"""

from __future__ import annotations

import csv
import html
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfpi.io import atomic_write_json, atomic_write_text, read_json

__all__ = ["Cell", "Table", "ProvenanceError", "load_metrics", "lookup", "cell_from", "write_table", "html_page",
           "html_table"]


class ProvenanceError(ValueError):
    """A metrics file was produced under a different config than the one the table is built for."""


@dataclass(frozen=True)
class Cell:
    """One table value and where it came from (``source`` file, dotted ``key``)."""

    value: Any
    source: str | None = None
    key: str | None = None
    fmt: str = "{:.2f}"
    note: str | None = None  # shown instead of a number when the value is missing (explains the empty cell)

    def text(self) -> str:
        if self.value is None:
            return self.note or "n/a"
        if isinstance(self.value, (int, float)) and not isinstance(self.value, bool):
            return self.fmt.format(self.value)
        return str(self.value)


@dataclass(frozen=True)
class Table:
    """A titled table; ``stamp`` (config hash, versions) is printed under it in every format."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    stamp: dict[str, str] = field(default_factory=dict)


def load_metrics(path: str | os.PathLike[str], expected_hash: str | None = None) -> dict[str, Any]:
    """Read a metrics JSON; with ``expected_hash``, refuse one from a different config lineage."""
    m = read_json(path)
    if expected_hash is not None:
        got = (m.get("provenance") or {}).get("config_hash")
        if got != expected_hash:
            raise ProvenanceError(
                f"{path}: produced under config hash {got!r}, but the current config implies {expected_hash!r}. "
                "It is stale or from another run: rerun the stage that writes it (snakemake regenerates it when "
                "its inputs or parameters changed; delete the file to force it)."
            )
    return m


def lookup(m: Mapping[str, Any], key: str) -> Any:
    """``lookup(m, "test.nf_acc")`` -> ``m["test"]["nf_acc"]``; ``None`` when any part is missing."""
    cur: Any = m
    for part in key.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def cell_from(m: Mapping[str, Any], source: str, key: str, *, scale: float = 1.0, fmt: str = "{:.2f}",
              note: str | None = None) -> Cell:
    """A cell holding ``scale * m[key]`` (e.g. accuracies as percentages), traceable to ``source``."""
    v = lookup(m, key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = v * scale
    return Cell(v, source=str(source), key=key, fmt=fmt, note=note)


def _markdown(t: Table) -> str:
    out = io.StringIO()
    out.write(f"### {t.title}\n\n")
    out.write("| " + " | ".join(t.columns) + " |\n")
    out.write("|" + "|".join(["---"] * len(t.columns)) + "|\n")
    for row in t.rows:
        out.write("| " + " | ".join(c.text().replace("|", "/") for c in row) + " |\n")
    out.write("\n")
    for n in t.notes:
        out.write(f"- {n}\n")
    if t.stamp:
        out.write("\n" + "_" + ", ".join(f"{k}: {v}" for k, v in t.stamp.items()) + "_\n")
    return out.getvalue()


def _csv(t: Table) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(t.columns)
    for row in t.rows:
        w.writerow([c.text() if not isinstance(c.value, (int, float)) or isinstance(c.value, bool) else c.value
                    for c in row])
    for k, v in t.stamp.items():
        w.writerow([f"# {k}", v])
    return out.getvalue()


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("$", r"\$"), ("{", r"\{"), ("}", r"\}")):
        s = s.replace(a, b)
    return s


def _latex(t: Table) -> str:
    out = io.StringIO()
    out.write("\\begin{table}[t]\n\\centering\n")
    out.write(f"\\caption{{{_latex_escape(t.title)}}}\n")
    out.write("\\begin{tabular}{l" + "c" * (len(t.columns) - 1) + "}\n\\toprule\n")
    out.write(" & ".join(_latex_escape(c) for c in t.columns) + " \\\\\n\\midrule\n")
    for row in t.rows:
        out.write(" & ".join(_latex_escape(c.text()) for c in row) + " \\\\\n")
    out.write("\\bottomrule\n\\end{tabular}\n")
    if t.stamp:
        out.write("\\\\[2pt]{\\scriptsize " + _latex_escape(", ".join(f"{k}: {v}" for k, v in t.stamp.items())) + "}\n")
    out.write("\\end{table}\n")
    return out.getvalue()


#: Style of the HTML pages (Snakemake's report shows them in a frame, so they carry their own).
_CSS = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.8em 0}"
        "th,td{border:1px solid #bbb;padding:.3em .7em;text-align:right}th{background:#eef}"
        "td:first-child,th:first-child{text-align:left}p.stamp,li{color:#555;font-size:.9em}")


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page (escaped ``title``, ``body`` already HTML)."""
    t = html.escape(title)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n<h2>{t}</h2>\n{body}</body></html>\n")


def html_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML ``<table>`` of already formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def _html(t: Table) -> str:
    body = html_table(t.columns, [[c.text() for c in row] for row in t.rows])
    if t.notes:
        body += "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in t.notes) + "</ul>\n"
    if t.stamp:
        body += f"<p class=\"stamp\">{html.escape(', '.join(f'{k}: {v}' for k, v in t.stamp.items()))}</p>\n"
    return html_page(t.title, body)


def write_table(t: Table, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``<name>.md``, ``.csv``, ``.tex``, ``.html`` and ``.sources.json`` under ``out_dir``; return the paths."""
    d = Path(out_dir)
    paths = [d / f"{t.name}.md", d / f"{t.name}.csv", d / f"{t.name}.tex", d / f"{t.name}.sources.json",
             d / f"{t.name}.html"]
    atomic_write_text(paths[0], _markdown(t))
    atomic_write_text(paths[1], _csv(t))
    atomic_write_text(paths[2], _latex(t))
    atomic_write_text(paths[4], _html(t))  # the page of the Snakemake report
    sources = [
        {"row": i, "column": t.columns[j], "value": c.value, "source": c.source, "key": c.key}
        for i, row in enumerate(t.rows) for j, c in enumerate(row) if c.source
    ]
    atomic_write_json(paths[3], {"table": t.name, "stamp": t.stamp, "cells": sources})
    return paths


def rows_markdown(tables: Sequence[Table]) -> str:
    """All tables as one Markdown document (the run's ``tables/README.md``)."""
    return "\n".join(_markdown(t) for t in tables)
