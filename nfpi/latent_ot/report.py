"""The latent OT comparison's table and sample grid (docs/latent_ot.md).

    >>> write_table(comparison_table(methods, real_test, cfg, fit_seconds=12.0, samples_per_class=100,
    ...                              source="latent_ot/metrics.json", stamp={}), "tables")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfpi.latent_ot.prior import LatentOTConfig
from nfpi.report.tables import Cell, Table

__all__ = ["METHODS", "comparison_table", "grid_figure"]

# The methods compared, in table order, and their row labels.
METHODS: dict[str, str] = {
    "nfpi": "NFPI Gaussians",
    "ot_map": "Latent OT (map)",
    "ot_semi_discrete": "Latent OT (semi-discrete)",
    "real_train": "Real training data (reference)",
}


def comparison_table(methods: dict[str, Any], real_test: dict[str, Any], cfg: LatentOTConfig, *, fit_seconds: float,
                     samples_per_class: int, source: str, stamp: dict[str, str]) -> Table:
    """The ``latent_ot`` table: one row per method (metrics of :mod:`nfpi.latent_ot.metrics`), real test images last;
    every number sourced from ``source`` (the stage's metrics.json)."""
    src = source
    cols = ["Method", "latent W2 (test) ↓", "MMD² (test) ↓", "Mode coverage ↑", "Classifier acc. (%) ↑",
            "NN dist. to train", "Exact copies (%)"]
    rows = []
    for name, m in methods.items():
        rows.append([Cell(m["label"]),
                     Cell(m["w2"], src, f"methods.{name}.w2", "{:.3f}"),
                     Cell(m["mmd2"], src, f"methods.{name}.mmd2", "{:.4f}"),
                     Cell(m["mode_coverage"], src, f"methods.{name}.mode_coverage", "{:.2f}"),
                     Cell(100 * m["classifier_acc"], src, f"methods.{name}.classifier_acc", "{:.1f}"),
                     Cell(m["nn_train_mean"], src, f"methods.{name}.nn_train_mean", "{:.3f}"),
                     Cell(100 * m["copy_fraction"], src, f"methods.{name}.copy_fraction", "{:.1f}")])
    rows.append([Cell("Real test images (reference)"), Cell(None, note="-"), Cell(None, note="-"),
                 Cell(None, note="-"),
                 Cell(100 * real_test["classifier_acc"], src, "real_test.classifier_acc", "{:.1f}"),
                 Cell(real_test["nn_train_mean"], src, "real_test.nn_train_mean", "{:.3f}"),
                 Cell(100 * real_test["copy_fraction"], src, "real_test.copy_fraction", "{:.1f}")])
    n = samples_per_class
    return Table(
        name="latent_ot",
        title="Latent OT prior (Liu et al. 2018) vs NFPI Gaussians on the NFPI flow's latents",
        columns=cols,
        rows=rows,
        notes=[
            f"{n} samples per class; W2 / MMD² against the held-out (test) latents of the same class (at most "
            f"{cfg.eval_points} per class), averaged over classes; MMD² with a Gaussian kernel of median-heuristic width.",
            f"Mode coverage: {cfg.mode_clusters} k-means modes per class on the training latents; covered when the "
            f"generated share is >= {cfg.mode_min_share:g} x the training share.",
            "Classifier: logistic regression on real training pixels (independent of the flow); NN distance: "
            "pixel L2 in [0, 1] to the closest training image.",
            f"NFPI sampled at T={cfg.temperature:g}; OT source: {cfg.source}; fit {fit_seconds:.1f}s.",
        ],
        stamp=stamp,
    )


def grid_figure(panels: dict[str, np.ndarray], labels: np.ndarray, per_class: int, path: str | Path,
                title: str) -> None:
    """One panel per method, one row per class, ``per_class`` images each (side by side, one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nfpi.report.figures import save_figure

    classes = np.unique(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * per_class * 0.45, len(classes) * 0.45 + 0.6),
                             squeeze=False, layout="constrained")
    for ax, (name, images) in zip(axes[0], panels.items()):
        c, h, w = images.shape[1:]
        canvas = np.full((len(classes) * (h + 1), per_class * (w + 1), c), 255, np.uint8)
        for r, k in enumerate(classes):
            idx = np.flatnonzero(labels == k)[:per_class]
            for j, i in enumerate(idx):
                canvas[r * (h + 1): r * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = images[i].transpose(1, 2, 0)
        ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([(h + 1) * r + h / 2 for r in range(len(classes))])
        ax.set_yticklabels([str(int(k)) for k in classes], fontsize=6)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
