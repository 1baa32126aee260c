"""nfpi.paired: NFPI minus each Table 1 row, seed by seed."""

from __future__ import annotations

import math

import pytest

from nfpi.paired import paired_differences, paired_table


def _summary() -> dict:
    return {
        "baseline1": {"NF-Acc": {"values": [90.0, 92.0, 91.0], "seeds": [0, 1, 2]},
                      "CNN-Acc": {"values": [80.0, 85.0, 82.0], "seeds": [0, 1, 2]}},
        "gd_linear": {"NF-Acc": {"values": [98.0, 97.0, 99.0], "seeds": [0, 1, 2]}},
        "nfpi": {"NF-Acc": {"values": [98.0, 98.0, 98.5], "seeds": [0, 1, 2]}},
    }


def test_differences_are_per_seed_and_skip_missing_metrics() -> None:
    d = paired_differences(_summary())
    assert set(d) == {"baseline1", "gd_linear"}
    assert "CNN-Acc" not in d["baseline1"]  # the reference has no CNN-Acc
    b = d["baseline1"]["NF-Acc"]
    assert b["diffs"] == [8.0, 6.0, 7.5] and b["mean"] == pytest.approx(7.1666666) and b["wins"] == 3
    g = d["gd_linear"]["NF-Acc"]
    assert g["diffs"] == [0.0, 1.0, -0.5] and (g["wins"], g["ties"], g["losses"]) == (1, 1, 1)
    assert math.isclose(g["sd"], 0.7637626, rel_tol=1e-6)  # sd of the differences, not of either row


def test_table_has_one_row_per_baseline_and_metric() -> None:
    t = paired_table(_summary(), {"nfpi": "NFPI"}, [0, 1, 2], {})
    assert [r[0].text() for r in t.rows] == ["baseline1", "gd_linear"]
    assert t.rows[1][4].text() == "1/1/1" and "NFPI" in t.title


def test_seed_counts_must_match() -> None:
    s = _summary()
    s["gd_linear"]["NF-Acc"]["values"] = [1.0]
    with pytest.raises(ValueError):
        paired_differences(s)
