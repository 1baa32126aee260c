"""Stage ``share``: settings whose solved Gaussians are equal within a tolerance share one fine-tuning.

    python -m nfpi.share --config '{"share": {"tol": 1e-6, "order": [...], "objective": {...}}}' \
        --gaussians gaussians/nfpi.pt gaussians/gd_linear.pt ... --out gaussians/shared.json

Baseline 2 minimises the NFPI objective (Eq. 4) by gradient descent; on the default config every
learning-rate policy reaches the FPI's fixed point, so six settings would fine-tune the same flow
from the same Gaussians six times.  This stage compares the solved Gaussians: a setting whose
Gaussians are within ``tol`` of an earlier setting's (in ``order``, the NFPI setting first) *and*
whose objective is the same (lambda, alpha, pi, learn, init) is mapped to that representative; the
workflow then fine-tunes, evaluates, samples and trains CNNs for representatives only, and the
tables print a shared row with the representative's numbers and say so.

Distance (:func:`gaussian_distance`): the largest difference of a class mean in that class's
standard deviations, or of a variance relative to itself, over classes and dimensions.  The default
tolerance (``experiments.share_tol: 1e-3``) is a thousandth of a standard deviation.
The same objective matters because the fine-tuning's later rounds re-solve the Gaussians with the
representative's solver: two solvers of one objective that agree on the pretrained latents are
taken to agree on the fine-tuned ones (the FPI converges to its tolerance there; docs/bench/speed.md).
``experiments.share_tol: 0`` (or null) fine-tunes every setting, as the paper does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from nfpi.cli import provenance, stage_parser, start_stage
from nfpi.config import ConfigError
from nfpi.io import atomic_write_json

log = logging.getLogger("nfpi.share")

__all__ = ["gaussian_distance", "group_settings", "share_slice", "shareable_settings", "SharedRows", "main"]


def gaussian_distance(means_a: torch.Tensor, vars_a: torch.Tensor, means_b: torch.Tensor,
                      vars_b: torch.Tensor) -> float:
    """Largest difference of two sets of diagonal Gaussians in their own units.

    ``max over classes and dimensions of max(|mu_a - mu_b| / sigma, |v_a - v_b| / v)`` with
    ``sigma^2 = v = min(v_a, v_b)``: the mean shift in standard deviations and the relative variance
    change.  Scale-free (the same for latents in any unit), symmetric, and 0 only for identical
    Gaussians; ``inf`` for different shapes.
    """
    if means_a.shape != means_b.shape or vars_a.shape != vars_b.shape:
        return float("inf")
    ma, mb, va, vb = (t.detach().to(torch.float64) for t in (means_a, means_b, vars_a, vars_b))
    v = torch.minimum(va, vb)
    return max(float(((ma - mb).abs() / v.sqrt()).max()), float(((va - vb).abs() / v).max()))


def group_settings(gaussians: Mapping[str, tuple[torch.Tensor, torch.Tensor]], order: Sequence[str],
                   objective: Mapping[str, Any], tol: float) -> dict[str, tuple[str, float]]:
    """``{setting: (representative, distance)}``: each setting, in ``order``, joins the first earlier
    representative with the same objective whose Gaussians are within ``tol``; else it is its own.
    ``tol <= 0`` shares nothing."""
    reps: list[str] = []
    out: dict[str, tuple[str, float]] = {}
    for s in order:
        mu, v = gaussians[s]
        for r in reps if tol > 0 else []:
            if objective.get(r) != objective.get(s):
                continue
            d = gaussian_distance(mu, v, *gaussians[r])
            if d <= tol:
                out[s] = (r, d)
                break
        else:
            reps.append(s)
            out[s] = (s, 0.0)
    return out


def share_slice(config: Mapping[str, Any], names: Sequence[str], tol: float) -> dict[str, Any]:
    """The ``share`` stage's config slice: the tolerance, the candidates in preference order and each
    one's objective (the keys of Eq. 4; a solver's own options are not part of it)."""
    from nfpi.experiments import OBJECTIVE_KEYS, settings_from_config

    settings = settings_from_config(config)
    return {"tol": float(tol), "order": list(names),
            "objective": {s: {k: settings[s].spec.get(k) for k in OBJECTIVE_KEYS} for s in names}}


def shareable_settings(config: Mapping[str, Any], names: Sequence[str], tol: float) -> set[str]:
    """The candidates that *can* share: those whose objective an earlier candidate (in ``names``) has.

    Only they wait for the ``share`` checkpoint; the others are their own representatives whatever the
    Gaussians, so the workflow schedules their jobs from the start.  ``tol <= 0``: none.
    """
    if tol <= 0:
        return set()
    objective = share_slice(config, names, tol)["objective"]
    return {s for i, s in enumerate(names) if objective[s] in [objective[r] for r in names[:i]]}


class SharedRows:
    """How the tables print settings that share a fine-tuning (``gaussians/shared.json``; none: no sharing).

    A shared setting's row holds its representative's numbers (read from the representative's metrics
    files), its label ends in ``[= <representative's label>]``, and the table's notes name every pair
    with its distance and the tolerance.
    """

    def __init__(self, shared: Mapping[str, Any] | None = None) -> None:
        shared = shared or {}
        self.rep: dict[str, str] = dict(shared.get("representative", {}))
        self.dist: dict[str, float] = dict(shared.get("distance_to_representative", {}))
        self.tol = shared.get("tol")

    @classmethod
    def read(cls, path: str | None) -> "SharedRows":
        from nfpi.io import read_json

        return cls(read_json(path) if path else None)

    def of(self, setting: str) -> str:
        """The setting whose fine-tuned flow and metrics stand for ``setting``."""
        return self.rep.get(setting, setting)

    def label(self, setting: str, label: str, labels: Mapping[str, str]) -> str:
        r = self.of(setting)
        return label if r == setting else f"{label} [= {labels.get(r, r)}]"

    def pairs(self) -> dict[str, str]:
        return {s: r for s, r in self.rep.items() if r != s}

    def note(self, names: Sequence[str]) -> list[str]:
        shared = [s for s in names if self.of(s) != s]
        if not shared:
            return []
        pairs = ", ".join(f"{s} -> {self.of(s)} ({self.dist.get(s, 0.0):.2g})" for s in shared)
        return [f"Rows marked [= X] share X's fine-tuned flow and print X's numbers: their solved Gaussians are "
                f"within experiments.share_tol = {self.tol:g} of X's (largest class-mean shift in standard "
                f"deviations or relative variance change; same objective), so they are fine-tuned once "
                f"(gaussians/shared.json: {pairs})."]


def _read(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from nfpi.density import ClassGaussianPrior

    prior = ClassGaussianPrior.from_state_dict(torch.load(path, map_location="cpu", weights_only=True)["prior"])
    return prior.means, prior.variances


def main(argv: list[str] | None = None) -> None:
    import json

    p = stage_parser(__doc__ or "")
    p.add_argument("--gaussians", nargs="+", required=True, help="gaussians/<setting>.pt of every candidate")
    p.add_argument("--out", required=True)
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
