"""Paired differences over seeds: NFPI minus each other Table 1 row, seed by seed (``nfpi.stages.spread`` writes them).

Replicate runs share everything but the seed, and within one seed every setting starts from the same
pretrained flow; so the difference ``NFPI - baseline`` of the same seed removes the part of the
seed-to-seed spread that the rows share (the pretrained flow's quality), and its standard deviation
is the spread that matters for "is NFPI better than this baseline".
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from nfpi.report.tables import Cell, Table

__all__ = ["paired_differences", "paired_table"]


def paired_differences(summary: Mapping[str, Mapping[str, Any]], reference: str = "nfpi") -> dict[str, dict[str, Any]]:
    """``{setting: {metric: {diffs, mean, sd, wins, ties, losses}}}`` of ``reference - setting`` per seed.

    ``summary`` is :func:`nfpi.stages.spread.spread_table`'s (``values`` in seed order for each setting and
    metric).  A metric missing for the reference or the setting is left out.
    """
    out: dict[str, dict[str, Any]] = {}
    ref = summary.get(reference, {})
    for setting, metrics in summary.items():
        if setting == reference:
            continue
        for metric, rec in metrics.items():
            if metric not in ref:
                continue
            diffs = [a - b for a, b in zip(ref[metric]["values"], rec["values"], strict=True)]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            out.setdefault(setting, {})[metric] = {
                "diffs": diffs, "mean": statistics.fmean(diffs), "sd": sd,
                "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
                "losses": sum(d < 0 for d in diffs),
            }
    return out


def paired_table(summary: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], seeds: list[int],
                 stamp: dict[str, str], reference: str = "nfpi") -> Table:
    """The paired differences as a table: one row per (baseline, metric)."""
    rows = []
    for setting, metrics in paired_differences(summary, reference).items():
        for metric, d in metrics.items():
            rows.append([Cell(labels.get(setting, setting)), Cell(metric), Cell(d["mean"]), Cell(d["sd"]),
                         Cell(f"{d['wins']}/{d['ties']}/{d['losses']}"),
                         Cell(", ".join(f"{v:+.2f}" for v in d["diffs"]))])
    return Table("seeds_paired", f"Paired differences {labels.get(reference, reference)} minus each row, over "
                 f"{len(seeds)} seeds ({', '.join(map(str, seeds))})",
                 ["Baseline", "Metric", "mean diff (points)", "sd", "NFPI better / tie / worse", "per seed"], rows,
                 ["Per seed: the NFPI row's accuracy minus the baseline's, both from the same run (same pretrained "
                  "flow); sd is the sample standard deviation of those differences."], stamp)
