"""Stage ``solve``: class Gaussians from the pretrained flow's latents (NFPI, Baseline 1 or Baseline 2).

    python -m nfpi solve --config '{"setting": {"method": "fpi", "fpi": {...}}}' \
        --latents latents/pretrain/train.parquet --data-dir D --out gaussians/<setting>.pt --out-json ...

One streaming pass over the latent file accumulates the class statistics (n_y, m_y, q_y) in
float64 (memory O(K d), independent of the number of images); the solver then works on those
alone.  ``method: fpi`` runs the fixed-point iteration of Proposition 1 (``lam = 0`` is Baseline 1);
``method: gd`` runs Baseline 2 (NF^GD) under one learning-rate policy.

``lam: auto`` (``method: fpi``) runs the lambda path of :mod:`nfpi.lampath` instead of one solve: the
grid ``fpi.path`` solved by continuation, lambda chosen on the validation latents (``--val-latents``);
the record holds the whole path.  A GD setting under ``lam: auto`` takes the lambda that the NFPI
setting's path chose (``--lam-from``, that setting's solve record), so Baseline 2 minimises the same
objective as NFPI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from nfpi.cli import provenance, stage_parser, start_stage
from nfpi.config import ConfigError, from_mapping
from nfpi.io import atomic_write_json, read_json

log = logging.getLogger("nfpi.stages.solve")


def solve_setting(stats: Any, spec: dict[str, Any]) -> Any:
    """Run the solver a setting's spec (an ``FPIConfig`` mapping) names; returns an ``FPIResult``."""
    from nfpi.fpi import FPIConfig, solve

    if spec.get("method") == "gd_joint":  # Baseline 2 as the paper runs it: only its start here (nfpi.joint_gd)
        from nfpi.joint_gd import initial_gaussians

        return initial_gaussians(stats, spec)
    return solve(stats, from_mapping(FPIConfig, spec, where="setting"))


def main(argv: list[str] | None = None) -> None:
    import json

    p = stage_parser(__doc__ or "", data_dir=True, name=True,
                     out="Gaussians (.pt): a ClassGaussianPrior state and the solve record")
    p.add_argument("--latents", required=True, help="training-split latent file (.parquet or .npy)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--val-latents", default=None, help="validation latent file: lam: auto chooses lambda on it")
    p.add_argument("--lam-from", default=None, help="a solve record (.json) whose chosen lambda a lam: auto GD setting uses")
    args = p.parse_args(argv)
    start_stage(args, "solve")
    spec = json.loads(args.config).get("setting")
    if not isinstance(spec, dict):
        raise ConfigError("solve needs --config '{\"setting\": {<nfpi.fpi.FPIConfig keys>}}'")

    from nfpi.data import PreparedData
    from nfpi.density import ClassGaussianPrior, save_gaussians
    from nfpi.latents import class_stats

    data = PreparedData(args.data_dir)
    t0 = time.perf_counter()
    stats = class_stats(args.latents, data.num_classes)
    t_stats = time.perf_counter() - t0
    log.info("class statistics of %s: K=%d, d=%d, %d latents in %.2fs", args.latents, stats.num_classes, stats.dim,
             int(stats.counts.sum()), t_stats)
    t0 = time.perf_counter()
    path = None
    if spec.get("lam") == "auto" and spec.get("method", "fpi") == "fpi":
        from nfpi.fpi import FPIConfig
        from nfpi.lampath import solve_path
        from nfpi.latents import open_latents

        if not args.val_latents:
            raise ConfigError("fpi.lam: auto chooses lambda on the validation latents: pass --val-latents "
                              "(the workflow's solve rule does)")
        zv, yv = open_latents(args.val_latents).read_all()
        if len(yv) == 0:
            raise ConfigError(f"fpi.lam: auto needs validation latents, but {args.val_latents} is empty: "
                              "set data.val_fraction > 0")
        path = solve_path(stats, from_mapping(FPIConfig, spec, where="setting"), torch.from_numpy(zv.astype("float64")),
                          torch.from_numpy(yv.astype("int64")))
        result = path.result
        log.info("lambda path: chose lambda=%g (%s); boundary %s; %d iterations over %d points", path.chosen,
                 path.reason, "none" if path.boundary is None else f"{path.boundary:g}", path.total_iterations,
                 len(path.points))
    else:
        if spec.get("lam") == "auto":
            if not args.lam_from:
                raise ConfigError(f"setting {args.name or '?'}: fpi.lam: auto with method {spec.get('method')!r} takes "
                                  "the lambda the NFPI setting's path chose: pass --lam-from <gaussians/nfpi.json>")
            spec = {**spec, "lam": float(read_json(args.lam_from)["lam"])}
            log.info("lam: auto: lambda=%g, as chosen by the lambda path in %s", spec["lam"], args.lam_from)
        result = solve_setting(stats, spec)
    t_solve = time.perf_counter() - t0
    log.info("%s: %s after %d iterations in %.2fs (%s)", args.name or "setting", result.status, result.iterations,
             t_solve, spec.get("method"))
    prior = ClassGaussianPrior.from_solution(result.means, result.variances)
    record = {
        "setting": args.name,
        "spec": spec,
        "lam": result.settings.get("lam"),
        "result": result.to_dict(),
        "status": result.status,
        "seconds": {"stats": t_stats, "solve": t_solve},
        "provenance": provenance(args.config_hash),
    }
    if path is not None:
        record["path"] = path.to_dict()
    save_gaussians(args.out, prior, json.loads(json.dumps(record, default=str)))
    atomic_write_json(args.out_json, record)


if __name__ == "__main__":
    main()
