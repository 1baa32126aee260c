"""Benchmark: the lambda path (continuation) against independent cold solves of the same grid, and the
solve stage's wall time with ``fpi.lam: auto`` against a fixed lambda.

    python benchmarks/bench_lampath.py results/digits --repeats 5

``RESULTS`` is a run's folder (``latents/pretrain/{train,val}.parquet``, ``data/meta.json``).  The grid
and the solver options are those of the run's ``config.resolved.yaml`` ``fpi`` section (or of its
``gaussians/nfpi.json`` spec) with ``lam: auto`` (its ``path`` or the defaults).  Prints a Markdown report: per lambda the path's and the
cold solve's iterations and objectives, totals, seconds (median of ``--repeats``), and the solve stage
run as a process (``python -m nfpi solve``), fixed lambda vs auto, alternating, median wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from nfpi.config import from_mapping
from nfpi.data import PreparedData
from nfpi.fpi import FPIConfig
from nfpi.lampath import cold_grid, solve_path
from nfpi.latents import class_stats, open_latents


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fixed-lam", type=float, default=None, help="the fixed lambda of the A/B (default: the run's fpi.lam)")
    args = p.parse_args()
    torch.set_num_threads(1)
    r = args.results
    resolved = r / "config.resolved.yaml"  # written by tabulate; else the nfpi solve record's spec
    if resolved.is_file():
        fpi = {**yaml.safe_load(resolved.read_text())["fpi"], "method": "fpi"}
    else:
        fpi = {**json.loads((r / "gaussians" / "nfpi.json").read_text())["spec"], "method": "fpi"}
    fixed = args.fixed_lam if args.fixed_lam is not None else float(fpi["lam"]) if fpi["lam"] != "auto" else 1000.0
    cfg = from_mapping(FPIConfig, {**fpi, "lam": "auto"}, where="fpi")
    ext = "parquet" if (r / "latents" / "pretrain" / "train.parquet").is_file() else "npy"
    train, val = r / "latents" / "pretrain" / f"train.{ext}", r / "latents" / "pretrain" / f"val.{ext}"
    k = PreparedData(r / "data").num_classes
    stats = class_stats(train, k)
    zv, yv = open_latents(val).read_all()
    zv, yv = torch.from_numpy(zv.astype("float64")), torch.from_numpy(yv)

    t_path, t_cold = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        path = solve_path(stats, cfg, zv, yv)
        t_path.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cold = cold_grid(stats, cfg, path.grid)
        t_cold.append(time.perf_counter() - t0)
    print(f"## Lambda path on `{r}` (K={k}, d={stats.dim}, {int(stats.counts.sum())} training latents, "
          f"{len(yv)} validation latents)\n")
    print(f"fpi: learn={cfg.learn}, init={cfg.init}, pi={cfg.pi}, alpha={cfg.alpha}, tol={cfg.tol:g}, "
          f"max_iter={cfg.max_iter}; grid {cfg.path.lam_min:g}..{cfg.path.lam_max:g}, {cfg.path.points} points\n")
    print("| lambda | path status | path iterations | cold status | cold iterations | objective path | objective cold "
          "| val NF-Acc (%) | min KL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pt, c in zip(path.points, cold):
        co = c.history[-1]["objective"] if c.history else float("nan")
        mark = " **chosen**" if pt.lam == path.chosen else ""
        print(f"| {pt.lam:.4g}{mark} | {pt.status} | {pt.iterations} | {c.status} | {c.iterations} | {pt.objective:.8g} "
              f"| {co:.8g} | {100 * pt.val_acc:.2f} | {pt.min_kl:.3g} |")
    ci = sum(c.iterations for c in cold[:len(path.points)])
    print(f"\nTotal iterations: path {path.total_iterations} vs cold {ci} "
          f"({path.total_iterations / max(ci, 1):.2f}x); the same {len(path.points)} points. "
          f"Seconds (median of {args.repeats}): path {statistics.median(t_path):.3f} "
          f"(includes the validation NF-Acc of every point and one cold check solve) vs cold solves "
          f"{statistics.median(t_cold):.3f}.")
    print(f"Boundary: {path.boundary}; chosen lambda {path.chosen:g}: {path.reason}.\n")

    # The solve stage as a process: fixed lambda vs lam: auto, alternating.
    walls: dict[str, list[float]] = {"fixed": [], "auto": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for kind in ("fixed", "auto"):
                spec = {**fpi, "lam": fixed} if kind == "fixed" else {**fpi, "lam": "auto"}
                cmd = [sys.executable, "-m", "nfpi", "solve", "--config", json.dumps({"setting": spec}), "--threads", "1",
                       "--latents", str(train), "--data-dir", str(r / "data"), "--out", f"{tmp}/{kind}.pt",
                       "--out-json", f"{tmp}/{kind}.json"]
                if kind == "auto":
                    cmd += ["--val-latents", str(val)]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                walls[kind].append(time.perf_counter() - t0)
    f, a = statistics.median(walls["fixed"]), statistics.median(walls["auto"])
    print(f"Solve stage wall time (process, median of {args.repeats}, alternating): lambda={fixed:g} {f:.2f} s, "
          f"lam: auto {a:.2f} s: +{100 * (a - f) / f:.1f}%. Runs: fixed {[round(x, 2) for x in walls['fixed']]}, "
          f"auto {[round(x, 2) for x in walls['auto']]}.")


if __name__ == "__main__":
    main()
