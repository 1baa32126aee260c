"""Tool ``spread``: Table 1's numbers over replicate runs (seeds), as mean, standard deviation and range.

    python -m nfpi spread results/digits results/digits_seed1 results/digits_seed2 \
        --out results/digits/tables/seeds

A replicate run is the same config with another ``seed`` (every stage's seed is derived from it,
:func:`nfpi.seeds.replicate_seed`; the data split stays), run under its own name: ``make seeds`` runs them with ``config/replicate.yaml``
(Table 1 only) and then this tool.  Every run's ``config.resolved.yaml`` must agree with the first
one's except for ``run``, ``seed`` and ``experiments`` (a replicate of something else is refused,
naming the differing keys); every cell is traceable to the metrics files it averages.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nfpi.config import ConfigError
from nfpi.experiments import settings_from_config, table_settings
from nfpi.io import atomic_write_json
from nfpi.report.tables import Cell, Table, load_metrics, lookup, write_table
from nfpi.share import SharedRows

log = logging.getLogger("nfpi.stages.spread")

_FREE = ("run", "seed", "experiments")  # what may differ between replicates


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_run(path: Path) -> dict[str, Any]:
    """A run's resolved config (written by the ``tabulate`` stage)."""
    import yaml

    f = path / "config.resolved.yaml"
    if not f.is_file():
        raise FileNotFoundError(f"{f}: missing; finish the run first (snakemake ... tables) so its tables and "
                                "resolved config exist")
    return yaml.safe_load(f.read_text())


def _shared(run: Path) -> SharedRows:
    """The run's shared fine-tunings (``gaussians/shared.json``; none if the run shared none)."""
    f = run / "gaussians" / "shared.json"
    return SharedRows.read(str(f) if f.is_file() else None)


def check_replicates(configs: list[dict[str, Any]], runs: list[Path]) -> None:
    """Refuse runs whose configs differ in anything but ``run``, ``seed`` and ``experiments``."""
    base = {k: v for k, v in _flatten({k: v for k, v in configs[0].items() if k not in _FREE}).items()}
    for cfg, run in zip(configs[1:], runs[1:]):
        other = _flatten({k: v for k, v in cfg.items() if k not in _FREE})
        diff = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if diff:
            raise ConfigError(f"{run}: not a replicate of {runs[0]}: config keys differ: {', '.join(diff[:10])}"
                              " (replicates may differ only in run, seed and experiments)")
    seeds = [int(c.get("seed", 0)) for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"runs {', '.join(map(str, runs))} repeat a seed ({seeds}): a spread needs distinct seeds")


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.fmean(values), sd, min(values), max(values)


def spread_table(runs: list[Path]) -> tuple[Table, dict[str, Any]]:
    """Table 1 (NF-Acc test) and CNN-Acc (where the runs have it) over the runs: mean, sd, min, max."""
    configs = [load_run(r) for r in runs]
    check_replicates(configs, runs)
    base = configs[0]
    settings = settings_from_config(base)
    names = table_settings(base).get("table1") or []
    seeds = [int(c.get("seed", 0)) for c in configs]
    rows, summary = [], {}
    for s in names:
        for metric, sub, key in (("NF-Acc", "metrics", "test.nf_acc"), ("CNN-Acc", "cnn", "test.top1")):
            # a setting that shared another's fine-tuning in a run (nfpi.share) has the representative's files
            files = [r / sub / f"{_shared(r).of(s)}.json" for r in runs]
            if not all(f.is_file() for f in files):
                continue  # CNN-Acc exists only for the settings a table samples from
            vals = [100.0 * float(lookup(load_metrics(f), key)) for f in files]
            mean, sd, lo, hi = _stats(vals)
            summary.setdefault(s, {})[metric] = {"values": vals, "mean": mean, "sd": sd, "seeds": seeds,
                                                 "sources": [str(f) for f in files]}
            rows.append([Cell(settings[s].label), Cell(metric), Cell(mean, source=";".join(map(str, files)), key=key),
                         Cell(sd), Cell(lo), Cell(hi), Cell(", ".join(f"{v:.2f}" for v in vals))])
    table = Table(
        "seeds", f"Table 1 over {len(runs)} seeds ({base['data']['name']}; seeds {', '.join(map(str, seeds))})",
        ["Model", "Metric", "mean (%)", "sd", "min", "max", "per seed"], rows,
        [f"Runs: {', '.join(str(r) for r in runs)}. Every stage's own seed is derived from the run's seed (flow "
         "initialisation, data order, dequantisation noise, sampling, classifier); the data split is fixed.",
         "sd is the sample standard deviation over seeds."],
        {"runs": ", ".join(str(r) for r in runs)})
    return table, summary


def main(argv: list[str] | None = None) -> None:
    from nfpi.runtime import setup_logging

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="results/<run> folders of the replicates (first = reference)")
    p.add_argument("--out", required=True, type=Path, help="output stem folder: writes seeds.{md,csv,tex,...} here")
    args = p.parse_args(argv)
    setup_logging()
    if len(args.runs) < 2:
        raise SystemExit("spread: give at least two runs (the reference and one replicate)")
    table, summary = spread_table(args.runs)
    write_table(table, args.out)
    atomic_write_json(args.out / "seeds.json", summary)
    # NFPI minus each baseline, seed by seed (same run, same pretrained flow): nfpi.paired
    from nfpi.paired import paired_differences, paired_table

    labels = {name: s.label for name, s in settings_from_config(load_run(args.runs[0])).items()}
    seeds = next(iter(next(iter(summary.values())).values()))["seeds"] if summary else []
    write_table(paired_table(summary, labels, seeds, table.stamp), args.out)
    atomic_write_json(args.out / "seeds_paired.json", paired_differences(summary))
    log.info("wrote %s", args.out / "seeds.md")


if __name__ == "__main__":
    main()
