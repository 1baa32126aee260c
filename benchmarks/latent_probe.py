"""How well a trained flow's latent space separates the classes, before any fine-tuning (issue 14).

For a flow checkpoint and its prepared data folder: an RBF SVC (sklearn defaults) fitted on the
training latents (dequantised, as the solve stage sees them) and scored on the val / test latents
(bin centres, as NF-Acc is scored); and the NF-Acc of two sets of class Gaussians solved on the
training latents: Baseline 1 (class means and variances, lambda 0) and the default's NFPI setting
(lambda 1000, means only, identity covariance).  Compare the SVC on latents with
``benchmarks/svc_baseline.py`` (the SVC on pixels): a flow whose latents separate the classes worse
than its pixels has spent itself elsewhere (on dequantisation noise, at a high bit depth).

    python benchmarks/latent_probe.py results/glyphs16/data results/glyphs16/flows/pretrain.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nfpi.data import PreparedData  # noqa: E402
from nfpi.density import ClassGaussianPrior  # noqa: E402
from nfpi.evaluation import extract_latents  # noqa: E402
from nfpi.fpi import ClassStats, FPIConfig, solve  # noqa: E402
from nfpi.training import load_trained_flow  # noqa: E402

SETTINGS = {"baseline1": FPIConfig(lam=0.0, learn="both", init="data"),
            "nfpi_lam1000": FPIConfig(lam=1000.0, learn="mean", init="identity", pi="mean", max_iter=500)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="prepared folder (results/<run>/data)")
    p.add_argument("flow", help="flow checkpoint (results/<run>/flows/pretrain.pt)")
    a = p.parse_args(argv)
    warnings.filterwarnings("ignore")  # sklearn convergence chatter
    torch.set_num_threads(1)
    data, tf = PreparedData(a.data), load_trained_flow(a.flow)

    def latents(split: str, dequantize: bool) -> tuple[np.ndarray, np.ndarray]:
        zs, ys = zip(*extract_latents(tf.flow, data.dataset(split), batch_size=512, dequantize=dequantize,
                                      n_bits=tf.n_bits))
        return np.concatenate(zs), np.concatenate(ys)

    ztr, ytr = latents("train", True)
    held = {s: latents(s, False) for s in ("val", "test")}
    svc = SVC().fit(ztr, ytr)
    out: dict[str, float | int] = {"n_bits": tf.n_bits, "dim": int(ztr.shape[1])}
    out.update({f"svc_latents_{s}": float(svc.score(z, y)) for s, (z, y) in held.items()})
    stats = ClassStats.from_latents(torch.as_tensor(ztr, dtype=torch.float64), torch.as_tensor(ytr), data.num_classes)
    for name, cfg in SETTINGS.items():
        r = solve(stats, cfg)
        prior = ClassGaussianPrior(r.means.float(), r.variances.float())
        for s, (z, y) in held.items():
            out[f"{name}_nf_acc_{s}"] = float((prior.classify(torch.as_tensor(z)).numpy() == y).mean())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
