"""The flowfactor experiment's table and trajectory figure (docs/flowfactor.md).

    >>> write_table(build_table(metrics, source="flowfactor/metrics.json", stamp={}), "tables")  # doctest: +SKIP
    >>> trajectory_figure(Path("figures/flowfactor_trajectories.png"), codec, bank, images, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from nfpi.flowfactor.fields import FlowFactorConfig, LatentCodec, PotentialBank, apply_flow_images, transform_images
from nfpi.io import atomic_path
from nfpi.report.tables import Cell, Table, cell_from

__all__ = ["build_table", "trajectory_figure"]


def trajectory_figure(path: Path, codec: LatentCodec, bank: PotentialBank, images: Tensor,
                      cfg: FlowFactorConfig) -> None:
    """Per transformation: true ``T_k^n(x)`` above the learned flow's ``f^{-1}(flow_k^n(f(x)))``, n = 0..nmax;
    the last block composes the first two transformations.  Extrapolated steps are framed in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, nmax = cfg.steps, cfg.extrapolate_factor * cfg.steps
    params = cfg.params()
    rows: list[tuple[str, Tensor]] = []
    x = images[:1]
    for k, name in enumerate(cfg.transformations):
        truth = torch.stack([transform_images(x, name, float(n), params) for n in range(nmax + 1)], 1)[0]
        pred = apply_flow_images(codec, bank, x, [(k, nmax)], cfg)[0]
        rows += [(f"{name}: true", truth), (f"{name}: flow", pred)]
    if len(cfg.transformations) > 1:
        a, b = cfg.transformations[:2]
        half = nmax // 2
        truth = [transform_images(x, a, float(min(n, half)), params) for n in range(nmax + 1)]
        truth = [transform_images(t, b, float(max(0, n - half)), params) for n, t in enumerate(truth)]
        pred = apply_flow_images(codec, bank, x, [(0, half), (1, nmax - half)], cfg)[0]
        rows += [(f"{a} then {b}: true", torch.cat(truth)), (f"{a} then {b}: flow", pred)]
    c = images.shape[1]
    fig, axs = plt.subplots(len(rows), nmax + 1, figsize=(0.8 * (nmax + 1) + 1.6, 0.85 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for n in range(nmax + 1):
            ax = axs[r, n]
            img = frames[n].permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if n > T:
                for s in ax.spines.values():
                    s.set_edgecolor("red")
                    s.set_linewidth(1.5)
            if r == 0:
                ax.set_title(f"n={n}", fontsize=7)
        axs[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(f"Latent flows (trained on n <= {T}; red: extrapolated)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def build_table(metrics: dict[str, Any], *, source: str, stamp: dict[str, str]) -> Table:
    """The ``flowfactor`` table (pixel MSE in [0, 1] units; accuracies in %): every number sourced from ``source``
    (the stage's metrics.json, whose keys ``metrics`` holds), written like the paper's tables by
    :func:`nfpi.report.tables.write_table`."""
    src = source

    def num(key: str, fmt: str, scale: float = 1.0) -> Cell:
        return cell_from(metrics, src, key, scale=scale, fmt=fmt)

    rows: list[list[Cell]] = []  # section, item, flow, baseline(s), note
    eq = metrics["equivariance"]
    for name in eq:
        k = f"equivariance.{name}"
        rows.append([Cell("equivariance (steps 1..T)"), Cell(name), num(f"{k}.flow", "{:.5f}"),
                     num(f"{k}.noflow", "{:.5f}"), num(f"{k}.linear", "{:.5f}")])
    for name, m in eq.items():
        if m["flow_extrap"] is not None:
            k = f"equivariance.{name}"
            rows.append([Cell("extrapolation (steps T+1..2T)"), Cell(name), num(f"{k}.flow_extrap", "{:.5f}"),
                         num(f"{k}.noflow_extrap", "{:.5f}"), num(f"{k}.linear_extrap", "{:.5f}")])
    for name in metrics["composition"]:
        k = f"composition.{name}"
        rows.append([Cell("composition (T steps each)"), Cell(name), num(f"{k}.flow", "{:.5f}"),
                     num(f"{k}.noflow", "{:.5f}"), Cell("")])
    for name, m in metrics["likelihood"].items():
        k = f"likelihood.{name}"
        rows.append([Cell("bits/dim at step T"), Cell(name),
                     Cell(m["bpd_evolved"][-1], src, f"{k}.bpd_evolved", "{:.3f}"),
                     Cell(m["bpd_flow"][-1], src, f"{k}.bpd_flow", "{:.3f}"),
                     Cell(f"step 0: {m['bpd_flow'][0]:.3f}", src, f"{k}.bpd_flow")])
    ad = metrics.get("adaptation")
    if ad:
        for key in ("plain", "transformed"):
            after, before = ad["heldout_bpd_after"], ad["heldout_bpd_before"]
            rows.append([Cell("flow bits/dim, held-out " + key), Cell("adapted / input flow"),
                         num(f"adaptation.heldout_bpd_after.{key}", "{:.3f}"),
                         num(f"adaptation.heldout_bpd_before.{key}", "{:.3f}"),
                         Cell(f"medians {after[key + '_median']:.3f} / {before[key + '_median']:.3f}; "
                              f"{ad['steps']} adaptation steps", src, "adaptation")])
    rows.append([Cell("identification accuracy"), Cell(metrics["config"]["mode"]),
                 num("identification.accuracy", "{:.1f}", 100.0), Cell(100 / len(eq), fmt="{:.1f}"), Cell("chance")])
    for name, m in metrics["classifier"].items():
        rows.append([Cell("logreg accuracy % (clean / transformed test)"), Cell(name),
                     Cell(f"{100 * m['clean_mean']:.1f} ± {100 * m['clean_std']:.1f}", src, f"classifier.{name}"),
                     Cell(f"{100 * m['transformed_mean']:.1f} ± {100 * m['transformed_std']:.1f}", src,
                          f"classifier.{name}"),
                     Cell("")])
    flow = (f"Flow: `{metrics.get('flow_used') or metrics['inputs']['flow']}`"
            + (f" (adapted from `{metrics['inputs']['flow']}`)" if metrics.get("adaptation") else "")
            + f"; mode `{metrics['config']['mode']}`; T = {metrics['config']['steps']} steps; held-out test images: "
            f"{metrics['eval_images']}; training {metrics['train_seconds']:.1f} s.")
    return Table(
        name="flowfactor",
        title="Flow-factorized latent transformations (Song et al. 2023) on the NF latent space",
        columns=["section", "item", "learned flow", "no flow / flow prior", "linear shift / note"],
        rows=rows,
        notes=[flow, "Errors: pixel MSE in [0, 1] units (lower is better). Bits/dim: learned evolved prior vs the "
                     "flow's own density. Classifier rows: column 3 clean test, column 4 transformed test."],
        stamp=stamp,
    )
