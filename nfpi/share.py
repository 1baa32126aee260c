"""Settings whose solved Gaussians are equal within a tolerance share one fine-tuning (stage ``share``).

    python -m nfpi share --config '{"share": {"tol": 1e-6, "order": [...], "objective": {...}}}' \
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

from collections.abc import Mapping, Sequence
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the workflow's DAG imports this module: torch only where a distance is computed
    import torch

__all__ = ["gaussian_distance", "group_settings", "share_slice", "shareable_settings", "SharedRows"]


def gaussian_distance(means_a: torch.Tensor, vars_a: torch.Tensor, means_b: torch.Tensor,
                      vars_b: torch.Tensor) -> float:
    """Largest difference of two sets of diagonal Gaussians in their own units.

    ``max over classes and dimensions of max(|mu_a - mu_b| / sigma, |v_a - v_b| / v)`` with
    ``sigma^2 = v = min(v_a, v_b)``: the mean shift in standard deviations and the relative variance
    change.  Scale-free (the same for latents in any unit), symmetric, and 0 only for identical
    Gaussians; ``inf`` for different shapes.
    """
    import torch

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

    def objective(spec: Mapping[str, Any]) -> dict[str, Any]:
        obj = {k: spec.get(k) for k in OBJECTIVE_KEYS}
        if spec.get("method") == "gd_joint":  # trains its Gaussians with the flow: its own fine-tuning, always
            obj["gd_joint"] = spec.get("policy")
        return obj

    return {"tol": float(tol), "order": list(names), "objective": {s: objective(settings[s].spec) for s in names}}


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
