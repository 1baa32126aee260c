"""Figures: sample grids, the t-SNE panels of Fig. 1, the augmentation figure of Fig. 2, training curves.

All functions take arrays (no file formats of their own beyond the PNG they write atomically) so
they can be called from stage modules, notebooks and tests alike.  Matplotlib runs headless (Agg).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nfpi.io import atomic_path  # noqa: E402
from nfpi.progress import progress  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["FiguresConfig", "sample_grid", "tsne_embed", "tsne_panels", "augmentation_figure", "training_curves", "save_figure",
           "lambda_path_figure"]


def save_figure(fig: "plt.Figure", path: str | os.PathLike[str], dpi: int = 150) -> None:
    """Save ``fig`` to ``path`` atomically and close it."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def _to_display(img: np.ndarray) -> np.ndarray:
    """uint8 [C,H,W] -> [H,W] (grey) or [H,W,3] for imshow."""
    return img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))


def sample_grid(
    images: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    per_class: int = 10,
    class_names: Sequence[str] | None = None,
    title: str = "",
    max_classes: int = 20,
) -> None:
    """One row per class (up to ``max_classes``), ``per_class`` images each; rows labelled by class."""
    classes = np.unique(labels)[:max_classes]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.6, len(classes) * 0.6 + 0.4),
                             squeeze=False)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j in range(per_class):
            ax = axes[r, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(idx):
                ax.imshow(_to_display(images[idx[j]]), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        name = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(int(c))
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    save_figure(fig, path)


def tsne_embed(x: np.ndarray, *, seed: int = 0, perplexity: float = 30.0, n_jobs: int = 1,
               desc: str = "t-SNE") -> np.ndarray:
    """2-D openTSNE embedding of ``x`` [N, d] (PCA initialisation, deterministic given ``seed``).

    Progress (iterations of both optimisation phases, with the KL divergence) comes from openTSNE's
    callbacks every ``_TSNE_CALLBACK_EVERY`` iterations; a callback only reads, so the embedding is
    the same as without it.
    """
    from openTSNE import TSNE

    perplexity = float(min(perplexity, max(5.0, (len(x) - 1) / 3)))
    emb = TSNE(perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=n_jobs, verbose=False,
               callbacks_every_iters=_TSNE_CALLBACK_EVERY)
    with progress(total=int(emb.early_exaggeration_iter) + int(emb.n_iter), desc=desc, unit="it", logger=log) as bar:

        def report(iteration: int, error: float, embedding: object) -> bool:
            bar.update(_TSNE_CALLBACK_EVERY)
            bar.set(kl=float(error))
            return False  # never stop early

        emb.callbacks = [report]
        return np.asarray(emb.fit(np.asarray(x, dtype=np.float64)))


#: openTSNE evaluates the KL divergence at callback iterations only; every 25 of 750 keeps that cheap.
_TSNE_CALLBACK_EVERY = 25


def tsne_panels(
    panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Scatter each (title, 2-D points, labels) panel side by side, coloured by class, one legend."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.8), squeeze=False)
    all_labels = np.unique(np.concatenate([p[2] for p in panels]))
    cmap = plt.get_cmap("tab10" if len(all_labels) <= 10 else "tab20")
    colours = {int(c): cmap(i % cmap.N) for i, c in enumerate(all_labels)}
    for ax, (name, pts, lab) in zip(axes[0], panels):
        # One scatter per panel, points grouped by class in class order (the layering of one call per
        # class): with K = 1000 classes, 1000 collections a panel took minutes to draw.
        order = np.argsort(np.searchsorted(all_labels, lab), kind="stable")
        ax.scatter(pts[order, 0], pts[order, 1], s=6, c=[colours[int(c)] for c in lab[order]], alpha=0.7,
                   linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=colours[int(c)],
                   label=class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(int(c)))
        for c in all_labels[:20]
    ]
    fig.legend(handles=handles, loc="center right", fontsize=7, title="class", title_fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    save_figure(fig, path)


def augmentation_figure(
    originals: np.ndarray,
    variants: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """Fig. 2: each row an original image (left) and its NF-augmented variants (right).

    ``originals`` [R, C, H, W], ``variants`` [R, V, C, H, W], ``labels`` [R].
    """
    r, v = variants.shape[:2]
    fig, axes = plt.subplots(r, v + 1, figsize=((v + 1) * 0.9, r * 0.9 + 0.4), squeeze=False)
    for i in range(r):
        row = [originals[i]] + [variants[i, j] for j in range(v)]
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(_to_display(img), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        name = class_names[int(labels[i])] if class_names is not None else str(int(labels[i]))
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    for j in range(v):
        axes[0, j + 1].set_title(f"NF aug. {j + 1}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    save_figure(fig, path)


def _read_jsonl(path: str | os.PathLike[str]) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line from a killed job
    return rows


def training_curves(
    logs: dict[str, str | os.PathLike[str]], path: str | os.PathLike[str], *, key: str = "bpd", title: str = ""
) -> None:
    """Plot ``key`` (default bits/dim) against step for each named JSONL metrics log."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, p in logs.items():
        rows = [r for r in _read_jsonl(p) if key in r and r[key] is not None and "step" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=name, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if len(logs) > 1:
        ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def lambda_path_figure(path: dict, out: str | os.PathLike[str], *, title: str = "") -> None:
    """Validation NF-Acc, iterations and class separation against lambda (log scale), from a path record
    (:meth:`nfpi.lampath.LambdaPath.to_dict`); the chosen lambda and the divergence boundary are marked."""
    pts = [p for p in path["points"] if p["status"] != "diverged"]
    lam = np.array([p["lam"] for p in pts])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    series = [
        ("validation NF-Acc (%)", [[100 * p["val_acc"] for p in pts]], ["val NF-Acc"]),
        ("fixed-point iterations (warm-started)", [[p["iterations"] for p in pts]], ["iterations"]),
        ("pairwise KL between classes", [[p["min_kl"] for p in pts], [p["median_kl"] for p in pts]], ["min", "median"]),
    ]
    for ax, (ylabel, ys, labels) in zip(axes, series):
        for y, lab in zip(ys, labels):
            line, = ax.plot(lam, y, marker="o", ms=3, label=lab)
            # points that did not converge (max_iter) are not certified stationary: hollow markers
            bad = [i for i, p in enumerate(pts) if not p["certified"]]
            if bad:
                ax.plot(lam[bad], np.asarray(y)[bad], ls="none", marker="o", ms=7, mfc="white", mec=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("lambda")
        ax.set_ylabel(ylabel)
        ax.axvline(path["chosen"], color="tab:green", ls="-", lw=1.2, label=f"chosen {path['chosen']:.3g}")
        if path.get("boundary") is not None:
            ax.axvline(path["boundary"], color="tab:red", ls="--", lw=1.2, label=f"diverges at {path['boundary']:.3g}")
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7, loc="best")
    axes[2].legend(fontsize=7, loc="best")
    fig.suptitle(title or "Lambda path (chosen on validation)")
    save_figure(fig, out)


# The ``figures`` config slice (stage ``tsne``).


@dataclass(frozen=True)
class FiguresConfig:
    """The ``figures`` config slice."""

    tsne_per_class: int = 100  # points per class in each t-SNE panel
    perplexity: float = 30.0  # t-SNE perplexity (openTSNE)
    seed: int = 0  # seed of the point subsets, the Gaussian samples and the t-SNE
