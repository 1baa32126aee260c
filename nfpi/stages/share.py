"""Stage ``share`` (rule ``share``, a checkpoint): which settings share one fine-tuning (:mod:`nfpi.share`).

    python -m nfpi share --config '{"share": {"tol": 1e-3, "order": [...], "objective": {...}}}' \
        --gaussians gaussians/nfpi.pt gaussians/gd_linear.pt ... --out gaussians/shared.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nfpi.cli import provenance, stage_parser, start_stage
from nfpi.config import ConfigError
from nfpi.io import atomic_write_json
from nfpi.share import group_settings

log = logging.getLogger("nfpi.stages.share")


def _read(path: str) -> tuple[Any, Any]:
    from nfpi.density import load_gaussians

    prior, _ = load_gaussians(path)
    return prior.means, prior.variances


def main(argv: list[str] | None = None) -> None:
    import json

    p = stage_parser(__doc__ or "", out=True)
    p.add_argument("--gaussians", nargs="+", required=True, help="gaussians/<setting>.pt of every candidate")
    args = p.parse_args(argv)
    start_stage(args, "share")
    cfg = json.loads(args.config).get("share")
    if not isinstance(cfg, dict) or not {"tol", "order", "objective"} <= set(cfg):
        raise ConfigError("share needs --config '{\"share\": {\"tol\": ..., \"order\": [...], \"objective\": {...}}}'")
    files = {Path(f).stem: f for f in args.gaussians}
    missing = [s for s in cfg["order"] if s not in files]
    if missing:
        raise ConfigError(f"share: no --gaussians file for {', '.join(missing)}")
    groups = group_settings({s: _read(files[s]) for s in cfg["order"]}, cfg["order"], cfg["objective"],
                            float(cfg["tol"]))
    for s, (r, d) in groups.items():
        if r != s:
            log.info("%s: Gaussians within %.3g of %s's (tol %g): shares its fine-tuning", s, d, r, cfg["tol"])
    atomic_write_json(args.out, {
        "tol": float(cfg["tol"]),
        "distance": "max over classes, dims of max(|mu_a - mu_b| / sigma, |v_a - v_b| / v), v = min(v_a, v_b); "
                    "same objective (lam, alpha, pi, learn, init) required",
        "representative": {s: r for s, (r, _) in groups.items()},
        "distance_to_representative": {s: d for s, (_, d) in groups.items()},
        "provenance": provenance(args.config_hash),
    })


if __name__ == "__main__":
    main()
