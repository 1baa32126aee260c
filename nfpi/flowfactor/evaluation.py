"""What the flowfactor experiment measures beyond the fields' own errors (docs/flowfactor.md): which potential
explains a held-out sequence, held-out bits/dim under a codec, and a classifier trained with each augmentation.

    >>> identification(bank, heldout_latents, cfg)["accuracy"]            # doctest: +SKIP
    >>> flow_bpd(codec, test_images, cfg)["transformed"]                  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nfpi.flowfactor.fields import (
    FlowFactorConfig,
    LatentCodec,
    PotentialBank,
    augment_along_fields,
    images_to_unit,
    infer_transformation,
    pixel_augment,
)
from nfpi.seeds import stream_seed

__all__ = ["classifier_comparison", "identification", "codec_bits_per_dim", "flow_bpd"]


class _CodecFlow:
    """``forward``/``inverse`` view of a codec, for :func:`nfpi.augment.nf_augment`."""

    def __init__(self, codec: LatentCodec) -> None:
        self.codec = codec

    def eval(self) -> _CodecFlow:
        return self

    def to(self, *_: Any, **__: Any) -> _CodecFlow:
        return self

    def parameters(self) -> Any:
        return iter([torch.zeros(1)])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.codec.encode(x), torch.zeros(x.shape[0])

    __call__ = forward

    def inverse(self, z: Tensor) -> Tensor:
        return self.codec.decode(z)


def _stratified_subset(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices with (as near as possible) equal counts per class."""
    classes = np.unique(labels)
    per = int(np.ceil(n / len(classes)))
    idx = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes])
    return np.sort(rng.permutation(idx)[:n])


def _logreg_acc(x_tr: Tensor, y_tr: Tensor, tests: dict[str, tuple[Tensor, Tensor]], seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
    clf.fit(x_tr.reshape(x_tr.shape[0], -1).numpy() / 255.0, y_tr.numpy())
    return {k: float(clf.score(x.reshape(x.shape[0], -1).numpy() / 255.0, y.numpy())) for k, (x, y) in tests.items()}


def classifier_comparison(codec: LatentCodec, bank: PotentialBank, train_x: Tensor, train_y: Tensor,
                          test_x: Tensor, test_y: Tensor, cfg: FlowFactorConfig, *, repeats: int = 3
                          ) -> dict[str, dict[str, float]]:
    """Accuracy of a logistic regression trained on real images + each augmentation (mean/std over repeats)."""
    from nfpi.augment import class_principal_axes, nf_augment

    num_classes = int(train_y.max()) + 1
    z_all = codec.encode(images_to_unit(train_x))
    axes = class_principal_axes(z_all, train_y, num_classes, min(cfg.pca_axes, z_all.shape[1]), seed=cfg.seed)
    g = torch.Generator().manual_seed(stream_seed(cfg.seed, "flowfactor.test"))
    # a transformed test set: every test image under one random transformation for a random 1..T steps
    tx, ty = pixel_augment(test_x, test_y, cfg, per_image=1, generator=g)
    tests = {"clean": (test_x, test_y), "transformed": (tx, ty)}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("real", "pixel", "flowfactor", "pca_mixup")}
    for r in range(repeats):
        rng = np.random.default_rng(stream_seed(cfg.seed, "flowfactor.subset", r))
        idx = torch.from_numpy(_stratified_subset(train_y.numpy(), cfg.classifier_train_size, rng))
        x, y = train_x[idx], train_y[idx]
        gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "flowfactor.augment", r))
        per = cfg.augment_per_image
        aug = {
            "real": (x[:0], y[:0]),
            "pixel": pixel_augment(x, y, cfg, per_image=per, generator=gen),
            "flowfactor": augment_along_fields(codec, bank, x, y, cfg, per_image=per, generator=gen),
            "pca_mixup": nf_augment(_CodecFlow(codec), x, y, axes, copies=per, beta_max=cfg.pca_beta_max,
                                    generator=gen, device="cpu", latents=z_all[idx]),
        }
        for name, (ax, ay) in aug.items():
            runs[name].append(_logreg_acc(torch.cat([x, ax]), torch.cat([y, ay]), tests,
                                          stream_seed(cfg.seed, "flowfactor.classifier", r)))
    out: dict[str, dict[str, float]] = {}
    for name, rs in runs.items():
        out[name] = {}
        for key in ("clean", "transformed"):
            vals = np.array([v[key] for v in rs])
            out[name][f"{key}_mean"] = float(vals.mean())
            out[name][f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def identification(bank: PotentialBank, latents: Tensor, cfg: FlowFactorConfig) -> dict[str, Any]:
    """How often the best-matching potential is the true transformation of a held-out sequence.

    ``latents`` ``[K, N, T + 1, d]``.  The potentials are matched to transformations by the best
    permutation (needed in weak mode, where potential ``k`` has no name; the identity in supervised).
    """
    K, N = latents.shape[:2]
    pred = infer_transformation(bank, latents.reshape(K * N, *latents.shape[2:]), cfg).reshape(K, N)
    confusion = torch.stack([torch.bincount(pred[k], minlength=K) for k in range(K)]).numpy()  # [true, potential]
    best = max(itertools.permutations(range(K)), key=lambda p: sum(confusion[k, p[k]] for k in range(K)))
    acc = sum(confusion[k, best[k]] for k in range(K)) / (K * N)
    return {"accuracy": float(acc), "potential_of": [int(b) for b in best], "confusion": confusion.tolist()}


def codec_bits_per_dim(codec: LatentCodec, images: Tensor) -> Tensor:
    """Bits/dim of each uint8 image under ``codec`` ``[N]`` (label-free: the prior's equal-weight class
    mixture; mid-bin dequantisation, 8-bit data)."""
    from nfpi.density import bits_per_dim as bpd_of

    # 8 bits: images_to_unit (the codec's input) preprocesses uint8 images at 8 bits per channel
    return bpd_of(codec.log_prob(images_to_unit(images)).double(), images[0].numel(), n_bits=8)


def flow_bpd(codec: LatentCodec, images: Tensor, cfg: FlowFactorConfig) -> dict[str, float]:
    """Bits/dim of held-out images, plain and each under one random transformation for 1..T steps: the mean
    and the median over images (a few out-of-distribution images can dominate the mean)."""
    tx, _ = pixel_augment(images, torch.zeros(len(images), dtype=torch.long), cfg, per_image=1,
                             generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "flowfactor.bpd")))
    plain, trans = codec_bits_per_dim(codec, images), codec_bits_per_dim(codec, tx)
    return {"plain": float(plain.mean()), "transformed": float(trans.mean()),
            "plain_median": float(plain.median()), "transformed_median": float(trans.median())}
