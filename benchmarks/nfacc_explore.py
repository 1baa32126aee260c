"""NF-Acc exploration on digits: pretrain -> FPI -> rounds of (fine-tune, re-solve) -> NF-Acc, in process.

The library calls the workflow's stages make, in one process, so that the choices behind the default
config (bits per channel, lambda, learn/init, rounds, steps) can be compared quickly; the results are
in docs/benchmarks.md ("How the default reached 98%").  Needs a prepared digits folder
(`snakemake --profile profiles/local results/digits/data/meta.json`).  Example:

    .venv/bin/python benchmarks/nfacc_explore.py --name lam1000 --n-bits 4 --learn mean --init identity \
        --lam 1000 --rounds 2 --ft-steps 400 --pre-steps 800

Each line of output (also appended to <out>/<name>/log.jsonl) is one measurement: the probe lines
give an RBF SVC's and a regularised QDA's test accuracy on the current flow's latents (how well the
latent space separates the classes); the round lines give the flow's NF-Acc (bin centres) per split.
Bits/dim are not computed here.
"""
import argparse
import json
import time
import warnings

import numpy as np
import torch
from pathlib import Path
from nfpi.data import PreparedData
from nfpi.flows import FlowConfig, build_flow
from nfpi.density import ClassGaussianPrior
from nfpi.training import TrainConfig, train_flow, load_trained_flow
from nfpi.evaluation import evaluate_flow, extract_latents
from nfpi.fpi import FPIConfig, solve, ClassStats
from nfpi.runtime import seed_everything, flush_denormals
from sklearn.svm import SVC
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis as QDA
warnings.filterwarnings("ignore")  # sklearn convergence chatter
p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--n-bits", type=int, default=8)
p.add_argument("--pre-steps", type=int, default=1500)
p.add_argument("--ft-steps", type=int, default=600)
p.add_argument("--ft-lr", type=float, default=0.005)
p.add_argument("--lam", type=float, default=10.0)
p.add_argument("--alpha", type=float, default=1.0)
p.add_argument("--learn", default="both")
p.add_argument("--init", default="data")
p.add_argument("--pi", default="mean")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--rounds", type=int, default=1)
p.add_argument("--pretrain-from", default=None, help="skip pretraining: start from this flow checkpoint")
p.add_argument("--data-dir", default="results/digits/data")
p.add_argument("--out", default="results/explore")
a = p.parse_args()
torch.set_num_threads(1); flush_denormals()
D = PreparedData(a.data_dir)
out = Path(a.out) / a.name; out.mkdir(parents=True, exist_ok=True)
def rec(**kw):
    print(json.dumps(kw), flush=True)
    with open(out / "log.jsonl", "a") as f: f.write(json.dumps(kw) + "\n")
fcfg = FlowConfig(arch="matexp_glow", preset="digits", actnorm_per_pixel=False)
record = {"flow": {"arch": "matexp_glow", "preset": "digits", "actnorm_per_pixel": False}, "image_shape": list(D.image_shape), "num_classes": 10}
K = D.num_classes
if a.pretrain_from:
    pre_path = Path(a.pretrain_from)
else:
    seed_everything(a.seed)
    flow = build_flow(fcfg, tuple(D.image_shape))
    pre_path = out / "pre.pt"
    tc = TrainConfig(steps=a.pre_steps, batch_size=64, lr=0.005, warmup_steps=100, ema_decay=0.995, checkpoint_every=10000, log_every=500, seed=a.seed, n_bits=a.n_bits)
    t0 = time.time()
    train_flow(flow, D.dataset("train"), ClassGaussianPrior.standard(K, flow.latent_dim), tc, out_path=pre_path, config_record=dict(record, train={}))
    rec(stage="pretrain", s=time.time() - t0)
def latents(path, split, dq=True):
    tf = load_trained_flow(path)
    zs, ys = zip(*extract_latents(tf.flow, D.dataset(split), batch_size=512, dequantize=dq, n_bits=a.n_bits))
    return np.concatenate(zs), np.concatenate(ys)
def probe(path, tag):
    ztr, ytr = latents(path, "train"); zte, yte = latents(path, "test", dq=False)
    rec(tag=tag, svc=SVC().fit(ztr, ytr).score(zte, yte), qda=QDA(reg_param=0.5).fit(ztr, ytr).score(zte, yte))
    return ztr, ytr
cur = pre_path
for r in range(a.rounds):
    ztr, ytr = probe(cur, f"probe{r}")
    stats = ClassStats.from_latents(torch.as_tensor(ztr, dtype=torch.float64), torch.as_tensor(ytr), K)
    res = solve(stats, FPIConfig(lam=a.lam, alpha=a.alpha, pi=a.pi, learn=a.learn, init=a.init, max_iter=500))
    prior = ClassGaussianPrior(res.means.float(), res.variances.float())
    tf = load_trained_flow(cur)
    seed_everything(a.seed)
    ft_path = out / f"ft{r}.pt"
    tc = TrainConfig(steps=a.ft_steps, batch_size=64, lr=a.ft_lr, warmup_steps=20, ema_decay=0.99, checkpoint_every=10000, log_every=500, seed=a.seed + r, n_bits=a.n_bits)
    t0 = time.time()
    train_flow(tf.flow, D.dataset("train"), prior, tc, out_path=ft_path, init_checkpoint=cur, config_record=dict(record, train={}))
    tf2 = load_trained_flow(ft_path)
    ev = {sp: evaluate_flow(tf2.flow, tf2.prior, D.dataset(sp), dequantize=False, n_bits=a.n_bits)["nf_acc"] for sp in ["train", "val", "test"]}
    rec(round=r, status=res.status, iters=res.iterations, ft_s=time.time() - t0, **ev)
    cur = ft_path
probe(cur, "probe_final")
