"""An RBF SVC on raw pixels, on exactly the split the workflow uses: the yardstick of issue 14.

Reads a prepared folder (``results/<run>/data``, written by the workflow's ``prepare`` job; make it
alone with ``snakemake --profile profiles/local --config run=<run> ... -- results/<run>/data/meta.json``),
so train / val / test are the workflow's own carves, byte for byte.  Pixels are scaled to [0, 1]
(C*H*W features, the padded border included, as the flow sees them).  Two SVCs, both fitted on
``train`` only:

- ``default``: scikit-learn's defaults (``C=1``, ``gamma="scale"``);
- ``val``: ``C`` in {1, 3, 10, 30} x ``gamma`` in {1/3, 1, 3} x ``"scale"``, the pair with the best
  ``val`` accuracy (ties: the earlier in that order), refitted on ``train``.  ``test`` is scored
  once per SVC and never used to choose.

Prints one JSON line (also written to ``--out`` if given)::

    python benchmarks/svc_baseline.py results/glyphs16/data --out results/glyphs16/svc.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nfpi.data import PreparedData  # noqa: E402

C_GRID = (1.0, 3.0, 10.0, 30.0)
GAMMA_FACTORS = (1 / 3, 1.0, 3.0)  # times sklearn's "scale" gamma, 1 / (d * var(X_train))


def pixels(data: PreparedData, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C*H*W]`` float64 pixels in [0, 1] and int64 labels of ``split``."""
    x = np.asarray(data.images(split), np.float64).reshape(len(data.labels(split)), -1) / 255.0
    return x, np.asarray(data.labels(split))


def svc_report(root: str | Path) -> dict[str, Any]:
    """Test (and val) accuracy of the default SVC and of the val-chosen one on ``root``'s split."""
    data = PreparedData(root)
    xtr, ytr = pixels(data, "train")
    xva, yva = pixels(data, "val")
    xte, yte = pixels(data, "test")
    scale = 1.0 / (xtr.shape[1] * xtr.var())
    default = SVC().fit(xtr, ytr)
    out: dict[str, Any] = {"data": str(root), "name": data.meta.get("name"), "counts": data.meta.get("counts"),
                           "image_shape": list(data.image_shape),
                           "default": {"C": 1.0, "gamma": "scale", "val": default.score(xva, yva) if len(yva) else None,
                                       "test": default.score(xte, yte)}}
    if len(yva):
        grid = [(c, f) for c in C_GRID for f in GAMMA_FACTORS]
        scores = [SVC(C=c, gamma=f * scale).fit(xtr, ytr).score(xva, yva) for c, f in grid]
        c, f = grid[int(np.argmax(scores))]  # argmax: the first of equal scores
        best = SVC(C=c, gamma=f * scale).fit(xtr, ytr)
        out["val"] = {"C": c, "gamma_factor": f, "val": max(scores), "test": best.score(xte, yte)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="a prepared folder (results/<run>/data)")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)
    rep = svc_report(a.data)
    line = json.dumps(rep)
    print(line)
    if a.out:
        Path(a.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
