"""The latent OT comparison's metrics on generated latents and images (docs/latent_ot.md, "Evaluation").

Per class: latent W2 (exact) and MMD^2 (Gaussian kernel, median-heuristic width) to the held-out latents
of the same class, mode coverage against k-means modes of the training latents, and nearest-neighbour
distances (latent and pixel) to the training set; over images: the accuracy of an independent classifier.

    >>> modes = class_modes(train_by_class, n_modes=10, seed=0)                           # doctest: +SKIP
    >>> latent_metrics(z, y, test_by_class, train_by_class, cfg, modes, bandwidth)["w2"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfpi.latent_ot.prior import LatentOTConfig, mmd2, mode_coverage, nearest_neighbour_distance, wasserstein2

__all__ = ["by_class", "class_modes", "latent_metrics", "image_metrics"]


def by_class(z: Tensor, y: Tensor, k: int) -> dict[int, Tensor]:
    """``{class: its rows of z}`` for classes ``0..k-1``."""
    return {c: z[y == c] for c in range(k)}


def class_modes(train: dict[int, Tensor], n_modes: int, seed: int) -> dict[int, tuple[Tensor, Tensor]]:
    """Per class, ``min(n_modes, n)`` k-means "modes" of its training latents: ``(centres, share of points)``."""
    from sklearn.cluster import KMeans

    modes: dict[int, tuple[Tensor, Tensor]] = {}
    for c, t in train.items():  # K small k-means fits: not a hot path
        n = min(n_modes, len(t))
        km = KMeans(n_clusters=n, n_init=4, random_state=seed).fit(t.numpy())
        share = torch.from_numpy(np.bincount(km.labels_, minlength=n) / len(t))
        modes[c] = (torch.from_numpy(km.cluster_centers_), share)
    return modes


def latent_metrics(z: Tensor, y: Tensor, test: dict[int, Tensor], train: dict[int, Tensor], cfg: LatentOTConfig,
                   modes: dict[int, tuple[Tensor, Tensor]], bandwidth: dict[int, float]) -> dict[str, Any]:
    """W2, MMD^2, mode coverage and latent nearest-neighbour distance per class and their means."""
    per: dict[str, list[float]] = {"w2": [], "mmd2": [], "mode_coverage": [], "latent_nn_train": []}
    for k in sorted(test):  # few classes, each an exact LP on <= eval_points points: not a hot path
        zk = z[y == k][: cfg.eval_points]
        tk = test[k][: cfg.eval_points]
        per["w2"].append(wasserstein2(zk, tk))
        per["mmd2"].append(mmd2(zk, tk, bandwidth[k]))
        centres, share = modes[k]
        covered, _ = mode_coverage(zk, centres, share, cfg.mode_min_share)
        per["mode_coverage"].append(float(covered.double().mean()))
        per["latent_nn_train"].append(float(nearest_neighbour_distance(zk, train[k]).median()))
    return {**{k: float(np.mean(v)) for k, v in per.items()}, "per_class": per}


def image_metrics(images: np.ndarray, labels: np.ndarray, clf: Any, train_flat: np.ndarray) -> dict[str, Any]:
    """Classifier accuracy (labels = the class generated for) and pixel NN distance to the training set."""
    flat = images.reshape(len(images), -1).astype(np.float64) / 255.0
    pred = clf.predict(flat)
    nn = nearest_neighbour_distance(torch.from_numpy(flat), torch.from_numpy(train_flat)).numpy()
    return {
        "classifier_acc": float((pred == labels).mean()),
        "classifier_acc_per_class": [float((pred[labels == k] == k).mean()) for k in np.unique(labels)],
        "nn_train_mean": float(nn.mean()),
        "nn_train_median": float(np.median(nn)),
        # exact uint8 copies of a training image (distinct images differ by >= 1/255 in some pixel)
        "copy_fraction": float((nn < 0.5 / 255).mean()),
    }
