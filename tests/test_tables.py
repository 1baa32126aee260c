"""nfpi.report.tables: every format written, cells traceable, foreign metrics refused."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nfpi.io import atomic_write_json
from nfpi.report.tables import Cell, ProvenanceError, Table, cell_from, load_metrics, write_table


def test_refuses_metrics_from_a_different_config(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    atomic_write_json(f, {"test": {"nf_acc": 0.9}, "provenance": {"config_hash": "aaa"}})
    assert load_metrics(f, "aaa")["test"]["nf_acc"] == 0.9
    with pytest.raises(ProvenanceError, match=r"m\.json.*'aaa'.*'bbb'"):
        load_metrics(f, "bbb")


def test_write_table_formats_and_sources(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    m = {"test": {"nf_acc": 0.5}}
    atomic_write_json(f, m)
    t = Table("t1", "A & B_1", ["Model", "Acc (%)", "Other"],
              [[Cell("x"), cell_from(m, str(f), "test.nf_acc", scale=100), Cell(None, note="not reported")]],
              notes=["a note"], stamp={"config hash": "abc"})
    paths = write_table(t, tmp_path / "out")
    md, csv_path, tex, src, page = (p.read_text() for p in paths)
    assert "| x | 50.00 | not reported |" in md and "config hash: abc" in md
    rows = list(csv.reader(csv_path.splitlines()))
    assert rows[0] == ["Model", "Acc (%)", "Other"] and float(rows[1][1]) == 50.0
    assert r"A \& B\_1" in tex
    # the report's page: escaped title, one row, the note and the stamp
    assert "<title>A &amp; B_1</title>" in page and "<td>x</td><td>50.00</td><td>not reported</td>" in page
    assert "<li>a note</li>" in page and "config hash: abc" in page
    cells = json.loads(src)["cells"]
    assert cells == [{"row": 0, "column": "Acc (%)", "value": 50.0, "source": str(f), "key": "test.nf_acc"}]


def test_missing_key_gives_explained_empty_cell() -> None:
    c = cell_from({}, "f.json", "test.top1", note="diverged")
    assert c.value is None and c.text() == "diverged"
