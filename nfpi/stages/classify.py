"""Stage ``classify``: train an image classifier and test it on the real test split.

Two uses (Section 5):
- CNN-Acc (Tables 2-3): a ResNet18 trained *only* on images sampled from a flow
  (``--train-npz samples/<setting>.npz``), tested on the real test set;
- augmentation (Tables 5-6): Swin / EVA02 trained on the real training split (``--real-train``),
  optionally enlarged with NF-augmented images (``--extra-npz augment/nf_train.npz``), with or without
  the standard augmentations (the ``standard_aug`` key of the classifier slice).

    python -m nfpi classify --section cnn --config '{"classifier": {...}}' --data-dir D --train-npz S \\
        --out cnn/<setting>.json

The ``classifier`` slice is parsed on the preset of its config section (``--section``: ``cnn`` ResNet18,
``swin``, ``eva02``; ``nfpi.classifiers.PRESETS``), so keys a config leaves out keep that recipe.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.io import atomic_write_json

log = logging.getLogger("nfpi.stages.classify")


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path) as f:
            return np.asarray(f["images"], dtype=np.uint8), np.asarray(f["labels"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: expected an .npz with 'images' (uint8 N,C,H,W) and 'labels' ({exc})") from None


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", data_dir=True, out=True, name=True)
    p.add_argument("--section", required=True, choices=("cnn", "swin", "eva02"),
                   help="config section of the classifier slice: its preset fills the keys not given")
    p.add_argument("--train-npz", default=None, help="train only on these images (generated samples)")
    p.add_argument("--real-train", action="store_true", help="train on the real training split")
    p.add_argument("--extra-npz", default=None, help="add these images (NF augmentation) to the training set")
    args = p.parse_args(argv)
    start_stage(args, "classify")

    from nfpi.classifiers import ClassifierConfig, classifier_config, evaluate_classifier, train_classifier
    from nfpi.data import PreparedData

    cfg: ClassifierConfig = classifier_config(args.section, parse_slices(args.config).get("classifier"))
    data = PreparedData(args.data_dir)
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if args.train_npz:
        parts.append(_load_npz(args.train_npz))
    if args.real_train:
        parts.append((np.asarray(data.images("train")), np.asarray(data.labels("train"))))
    if args.extra_npz:
        parts.append(_load_npz(args.extra_npz))
    if not parts:
        raise SystemExit("classify: give --train-npz and/or --real-train")
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    t0 = time.perf_counter()
    model, history = train_classifier(cfg, images, labels, image_shape=tuple(data.image_shape),
                                      num_classes=data.num_classes)
    wall = time.perf_counter() - t0
    from nfpi import distributed as ddp

    info = ddp.init_distributed(cfg.device)  # already initialised by train_classifier under torchrun
    if not info.is_main:  # rank 0 evaluates and writes; the other ranks are done
        ddp.cleanup()
        return
    out = {"setting": args.name, "train_size": int(len(labels)), "train_seconds": wall, "history": history,
           "config": cfg, "parameters": sum(p.numel() for p in model.parameters()),
           "pretrained": bool(getattr(model, "pretrained", False))}
    for split in ("val", "test"):
        out[split] = evaluate_classifier(model, np.asarray(data.images(split)), np.asarray(data.labels(split)))
        log.info("%s %s: top-1 %.2f%% top-5 %.2f%%", args.name, split, 100 * out[split]["top1"],
                 100 * out[split]["top5"])
    out["provenance"] = provenance(args.config_hash)
    atomic_write_json(args.out, out)
    ddp.cleanup()


if __name__ == "__main__":
    main()
