"""Benchmark: the lambda path (continuation) against independent cold solves of the same grid, and the
solve stage's wall time with ``fpi.lam: auto`` against a fixed lambda.

    python benchmarks/bench_lampath.py results/digits --repeats 5

``RESULTS`` is a run's folder (``latents/pretrain/{train,val}.parquet``, ``data/meta.json``).  The grid
and the solver options are those of the run's ``config.resolved.yaml`` ``fpi`` section (or of its
``gaussians/nfpi.json`` spec) with ``lam: auto`` (its ``path`` or the defaults).  Prints a Markdown report:
the lambda each rule (``fpi.path.rule``) chooses; per lambda of the whole grid the path's and the cold
solve's iterations and objectives, separation ratio and validation NF-Acc; totals of the path as it runs
(the default rule, stopping early) and of the whole grid against cold solves, seconds (median of
``--repeats``); and the solve stage run as a process (``python -m nfpi solve``), fixed lambda vs auto,
alternating, median wall time and CPU seconds, with the load average before and after (``--compare-with
CHECKOUT``: that checkout's stage as well, interleaved, for a before/after of a change).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
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
from nfpi.lampath import RULES, cold_grid, solve_path
from nfpi.latents import class_stats, open_latents


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fixed-lam", type=float, default=None, help="the fixed lambda of the A/B (default: the run's fpi.lam)")
    p.add_argument("--compare-with", type=Path, default=None,
                   help="another checkout (e.g. a worktree of the previous commit): its solve stage runs interleaved too")
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

    full_cfg = dataclasses.replace(cfg, path=dataclasses.replace(cfg.path, stop_early=False))
    print(f"## Lambda path on `{r}` (K={k}, d={stats.dim}, {int(stats.counts.sum())} training latents, "
          f"{len(yv)} validation latents)\n")
    print(f"fpi: learn={cfg.learn}, init={cfg.init}, pi={cfg.pi}, alpha={cfg.alpha}, tol={cfg.tol:g}, "
          f"max_iter={cfg.max_iter}; grid {cfg.path.lam_min:g}..{cfg.path.lam_max:g}, {cfg.path.points} points; "
          f"tie_tol={cfg.path.tie_tol}, separation={cfg.path.separation:g}\n")
    print("| rule | chosen lambda | points solved | path iterations | why |")
    print("|---|---|---|---|---|")
    for rule in RULES:
        rc = dataclasses.replace(cfg, path=dataclasses.replace(cfg.path, rule=rule))
        pr = solve_path(stats, rc, zv, yv)
        print(f"| {rule}{' (this config)' if rule == cfg.path.rule else ''} | {pr.chosen:.4g} | {len(pr.points)} | "
              f"{pr.total_iterations} | {pr.reason} |")
    print()

    t_path, t_full, t_cold = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        path = solve_path(stats, cfg, zv, yv)
        t_path.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full = solve_path(stats, full_cfg, zv, yv)
        t_full.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cold = cold_grid(stats, cfg, full.grid)
        t_cold.append(time.perf_counter() - t0)
    print("The whole grid (`stop_early: false`):\n")
    print("| lambda | path status | path iterations (map evaluations) | cold status | cold iterations | objective path "
          "| objective cold | val NF-Acc (%) | min KL | separation ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pt, c in zip(full.points, cold):
        co = c.history[-1]["objective"] if c.history else float("nan")
        mark = " **chosen**" if pt.lam == path.chosen else ""
        print(f"| {pt.lam:.4g}{mark} | {pt.status} | {pt.iterations} ({pt.evaluations}) | {c.status} | {c.iterations} "
              f"| {pt.objective:.8g} "
              f"| {co:.8g} | {100 * pt.val_acc:.2f} | {pt.min_kl:.3g} | {pt.sep_ratio:.3g} |")
    n = len(path.points)
    ci = sum(c.iterations for c in cold[:len(full.points)])
    cp = sum(c.iterations for c in cold[:n])
    print(f"\nThe path as configured (rule {cfg.path.rule}, stop_early {cfg.path.stop_early}): {n} of {len(full.grid)} "
          f"points, {path.total_iterations} iterations, against {cp} for cold solves of the same {n} points "
          f"({path.total_iterations / max(cp, 1):.2f}x) and {ci} for cold solves of the whole grid "
          f"({path.total_iterations / max(ci, 1):.2f}x); {sum(q.evaluations for q in path.points)} map evaluations "
          f"(Anderson memory {path.anderson}); then one cold check solve at the chosen lambda "
          f"({path.cold['iterations']} iterations, {path.cold['evaluations']} map evaluations, Anderson memory "
          f"{path.cold.get('anderson', 0)}). Stopped at: {path.stop}.")
    print(f"The whole grid by continuation: {full.total_iterations} iterations "
          f"({sum(q.evaluations for q in full.points)} map evaluations) vs cold {ci} "
          f"({full.total_iterations / max(ci, 1):.2f}x).")
    print(f"Seconds (median of {args.repeats}, each including the validation NF-Acc of every point and the cold "
          f"check): path as configured {statistics.median(t_path):.3f}, whole grid by continuation "
          f"{statistics.median(t_full):.3f}; cold solves of the whole grid {statistics.median(t_cold):.3f}.")
    print(f"Boundary: {path.boundary}; chosen lambda {path.chosen:g}: {path.reason}.\n")

    # The solve stage as a process: fixed lambda vs lam: auto, alternating (with --compare-with, the other
    # checkout's stage too, interleaved, the order reversed every other round).
    trees = {"": Path.cwd()} if args.compare_with is None else {"": Path.cwd(), "base ": args.compare_with.resolve()}
    kinds = [(t, k) for t in trees for k in ("fixed", "auto")]
    walls: dict[str, list[float]] = {f"{t}{k}": [] for t, k in kinds}
    cpus: dict[str, list[float]] = {f"{t}{k}": [] for t, k in kinds}
    solves: dict[str, list[float]] = {f"{t}{k}": [] for t, k in kinds}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for tree, kind in kinds if rep % 2 == 0 else kinds[::-1]:
                spec = {**fpi, "lam": fixed} if kind == "fixed" else {**fpi, "lam": "auto"}
                cmd = [sys.executable, "-m", "nfpi", "solve", "--config", json.dumps({"setting": spec}), "--threads", "1",
                       "--latents", str(train.resolve()), "--data-dir", str((r / "data").resolve()),
                       "--out", f"{tmp}/{kind}.pt", "--out-json", f"{tmp}/{kind}.json"]
                if kind == "auto":
                    cmd += ["--val-latents", str(val.resolve())]
                env = {**os.environ, "PYTHONPATH": str(trees[tree])}
                r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=trees[tree], env=env)
                walls[tree + kind].append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU seconds: less sensitive to the load
                cpus[tree + kind].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
                solves[tree + kind].append(json.loads(Path(f"{tmp}/{kind}.json").read_text())["seconds"]["solve"])
    load1 = os.getloadavg()
    for tree in trees:
        where = f" ({trees[tree]})" if args.compare_with is not None else ""
        fw, aw, fc, ac = (walls[tree + "fixed"], walls[tree + "auto"], cpus[tree + "fixed"], cpus[tree + "auto"])
        f, a = statistics.median(fw), statistics.median(aw)
        print(f"{tree}Solve stage{where} wall time (process, median of {args.repeats}, alternating): lambda={fixed:g} "
              f"{f:.2f} s, lam: auto {a:.2f} s: {100 * (a - f) / f:+.1f}%; median of the paired ratios auto/fixed "
              f"{statistics.median([y / x for x, y in zip(fw, aw)]):.3f}. Runs: fixed {[round(x, 2) for x in fw]}, "
              f"auto {[round(x, 2) for x in aw]}.")
        f, a = statistics.median(fc), statistics.median(ac)
        print(f"{tree}Solve stage CPU seconds (user + system, same runs): lambda={fixed:g} {f:.2f} s, lam: auto {a:.2f} s: "
              f"{100 * (a - f) / f:+.1f}%; median of the paired ratios {statistics.median([y / x for x, y in zip(fc, ac)]):.3f}. "
              f"Runs: fixed {[round(x, 2) for x in fc]}, auto {[round(x, 2) for x in ac]}.")
        fs, as_ = solves[tree + "fixed"], solves[tree + "auto"]
        d = statistics.median([y - x for x, y in zip(fs, as_)])
        print(f"{tree}The stage's own solve seconds (its record's seconds.solve, wall: the solve, or the validation latents "
              f"read and the path): lambda={fixed:g} {statistics.median(fs):.3f} s, lam: auto {statistics.median(as_):.3f} s; "
              f"median paired difference {d:.3f} s = {100 * d / statistics.median(fw):.1f}% of the fixed stage's median wall "
              "time.")
    print(f"Load average (1/5/15 min) before {'/'.join(f'{x:.1f}' for x in load0)}, after "
          f"{'/'.join(f'{x:.1f}' for x in load1)}; niceness {os.nice(0)}.")

if __name__ == "__main__":
    main()
