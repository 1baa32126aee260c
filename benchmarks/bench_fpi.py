"""Benchmark the FPI (nfpi.fpi): seconds per iteration and peak memory, against a per-pair [K, K, d] version.

Usage (from the repository root; results go to docs/bench/fpi.md by hand, with the machine load):

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_fpi.py --threads 2 --reps 5

Each (K, d, implementation) runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) belongs to that case alone; ``base`` is the resident memory after torch is imported
and the inputs are built, so ``peak - base`` is what the solver itself added.

* ``step``: one application of the fixed-point map (:func:`nfpi.fpi.fpi_step`: all pairwise KLs,
  the kernel and Eqs. 5-6), median of ``--reps`` runs.
* ``solver``: :func:`nfpi.fpi.solve_fpi_from_stats` for 3 plain iterations (4 map evaluations,
  with residuals and objective), wall time / 4, median of runs.
* ``pairwise``: the same map written with ``[K, K, d]`` broadcasting (what the matrix products
  replace), only where ``K*K*d`` stays below ``--pairwise-limit`` elements; checked against ``step``.
* ``interleave``: ``step`` and ``pairwise`` alternately in one process (same load for both);
  reports both medians and the median of the per-run ratios (the fairest speed-up on a busy machine).
* ``matmul``: a float64 ``[K, 2d] @ [2d, K]`` product, to express an iteration in matmul units
  (one iteration is 12 K^2 d flops, i.e. three such products) and to read the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nfpi.fpi import ClassStats, fpi_step, solve_fpi_from_stats  # noqa: E402

F64 = torch.float64


def make_stats(k: int, d: int, seed: int = 0) -> ClassStats:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(k, d, generator=g, dtype=F64) * 0.3
    var = 0.5 + torch.rand(k, d, generator=g, dtype=F64)
    return ClassStats(torch.full((k,), 100.0, dtype=F64), mean, var + mean * mean)


def step_pairwise(mu: torch.Tensor, v: torch.Tensor, stats: ClassStats, lam: float, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Prop. 1 (paper split, pi="mean") with explicit [K, K, d] pair tensors: the baseline the matrix form replaces."""
    k, d = mu.shape
    c = lam / (k * (k - 1))
    delta = mu[:, None, :] - mu[None, :, :]  # [K, K, d]: Delta_yy'
    vy, vyp = v[:, None, :], v[None, :, :]
    kl = 0.5 * (vy / vyp + delta**2 / vyp - 1.0 + torch.log(vyp) - torch.log(vy)).sum(-1)
    kl.fill_diagonal_(0.0)
    pv = kl.sum() / (k * (k - 1))
    w = torch.exp(-kl / (pv * alpha)).fill_diagonal_(0.0) / (pv * alpha)
    wt = w.T
    g = ((w[:, :, None] / vyp + wt[:, :, None] / vy) * delta).sum(1)
    new_mu = stats.mean + c * v * g
    mterm = (wt[:, :, None] * (delta**2 + vyp)).sum(1)
    s = stats.var + (stats.mean - mu) ** 2
    a = (1.0 + c * (w.sum(1) - w.sum(0)))[:, None] / v + c * mterm / v**2
    b = s + c * v**2 * (w[:, :, None] / vyp).sum(1)
    return new_mu, torch.sqrt(b / a)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(k: int, d: int, impl: str, reps: int, threads: int) -> dict[str, float | int | str]:
    torch.set_num_threads(threads)
    st = make_stats(k, d)
    g = torch.Generator().manual_seed(1)
    mu = st.mean + 0.05 * torch.randn(k, d, generator=g, dtype=F64)
    v = st.var * (0.8 + 0.4 * torch.rand(k, d, generator=g, dtype=F64))
    lam, alpha = 100.0, 1.0
    base = rss_mb()
    times: list[float] = []
    a = torch.randn(k, 2 * d, dtype=F64) if impl == "matmul" else None
    extra: dict[str, Any] = {}
    warm = 1 if k * k * d < 1e9 else 0  # small cases: one untimed warm-up run (thread pool, allocator, BLAS)
    for rep in range(reps + warm):
        if rep == warm:
            times.clear()
        if impl == "step":
            t = time.perf_counter()
            fpi_step(mu, v, st, lam=lam, alpha=alpha, pi="mean", split="paper")
            times.append(time.perf_counter() - t)
        elif impl == "solver":
            t = time.perf_counter()
            r = solve_fpi_from_stats(st, lam=lam, alpha=alpha, pi="mean", max_iter=3, tol=0.0, step_control="none",
                                     on_divergence="flag", init_means=mu, init_variances=v)  # fmt: skip
            evals = len(r.history)
            times.append((time.perf_counter() - t) / evals)
        elif impl == "pairwise":
            t = time.perf_counter()
            pm, pvv = step_pairwise(mu, v, st, lam, alpha)
            times.append(time.perf_counter() - t)
            qm, qv, _ = fpi_step(mu, v, st, lam=lam, alpha=alpha, pi="mean", split="paper")
            extra["max_rel_diff_vs_matrix_form"] = float(
                max(((pm - qm).abs() / qm.abs().clamp_min(1e-12)).max(), ((pvv - qv).abs() / qv).max())
            )
        elif impl == "interleave":  # matrix form and per-pair alternately: both see the same machine load
            t = time.perf_counter()
            fpi_step(mu, v, st, lam=lam, alpha=alpha, pi="mean", split="paper")
            t1 = time.perf_counter()
            step_pairwise(mu, v, st, lam, alpha)
            t2 = time.perf_counter()
            times.append(t1 - t)
            extra.setdefault("_pair", []).append(t2 - t1)  # type: ignore[attr-defined]
        elif impl == "matmul":
            assert a is not None
            t = time.perf_counter()
            a @ a.T
            times.append(time.perf_counter() - t)
        else:
            raise ValueError(impl)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if impl == "interleave":
        pair = extra.pop("_pair")[-len(times):]  # type: ignore[index]
        extra["pairwise_median_s"] = statistics.median(pair)
        extra["median_ratio"] = statistics.median(p / q for p, q in zip(pair, times))
    return {"K": k, "d": d, "impl": impl, "threads": threads, "reps": reps, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "base_rss_mb": base, "peak_rss_mb": peak, **extra}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--ds", type=int, nargs="+", default=[64, 3072, 12288])
    ap.add_argument("--impls", nargs="+", default=["step", "solver", "pairwise", "matmul"])
    ap.add_argument("--reps", type=int, default=5, help="runs per case (median reported)")
    ap.add_argument("--big-reps", type=int, default=3, help="runs per case when K*K*d > 1e9 (no warm-up run)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairwise-limit", type=float, default=7e7, help="max K*K*d elements for the per-pair version")
    ap.add_argument("--one", nargs=3, metavar=("K", "D", "IMPL"), help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", type=Path, help="append raw results here")
    args = ap.parse_args()
    if args.one:
        k, d, impl = int(args.one[0]), int(args.one[1]), args.one[2]
        print(json.dumps(run_one(k, d, impl, args.reps, args.threads)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = []
    for k in args.ks:
        for d in args.ds:
            for impl in args.impls:
                if impl in ("pairwise", "interleave") and k * k * d > args.pairwise_limit:
                    continue
                reps = args.big_reps if k * k * d > 1e9 else args.reps
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, __file__, "--one", str(k), str(d), impl, "--reps", str(reps),
                     "--threads", str(args.threads)],
                    capture_output=True, text=True, env=env, check=True,
                )  # fmt: skip
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["loadavg_1min"] = load
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
    print()
    print("| K | d | step s/it | solver s/it | per-pair s/it | speed-up | matmul s | peak MB (solver) | peak MB (per-pair) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by = {(r["K"], r["d"], r["impl"]): r for r in rows}
    for k in args.ks:
        for d in args.ds:
            st, so, pp, mm = (by.get((k, d, i)) for i in ("step", "solver", "pairwise", "matmul"))
            f = lambda r, key="median_s": f"{r[key]:.4g}" if r else "-"  # noqa: E731
            sp = f"{pp['median_s'] / st['median_s']:.0f}x" if pp and st else "-"
            print(f"| {k} | {d} | {f(st)} | {f(so)} | {f(pp)} | {sp} | {f(mm)} | "
                  f"{f(so, 'peak_rss_mb')} | {f(pp, 'peak_rss_mb')} |")  # fmt: skip


if __name__ == "__main__":
    main()
