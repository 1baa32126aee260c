"""Overhead of nfpi.progress: an FPI solve with and without it, and the cost of one update.

A/B: the same digits-size statistics (K = 10 classes, d = 64, from sklearn's digits pixels) solved
by ``solve_fpi_from_stats`` of the current ``nfpi.fpi`` (progress in log mode, as under Snakemake)
and of ``nfpi/fpi.py`` at a git revision without progress (``--base``), alternating A, B, A, B ...
in one process; the median time of each.  Micro: ``update()`` + ``set(residual=...)`` per call in
log mode (the FPI's per-iteration cost), timed over 10^5 calls.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_progress.py --base 073a7d9 --repeats 41
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _module_at(rev: str, rel: str, name: str):  # noqa: ANN202 - a module object
    """Import ``rel`` as it was at git revision ``rev`` (under another module name)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="git revision whose nfpi/fpi.py has no progress")
    p.add_argument("--repeats", type=int, default=41)
    p.add_argument("--lam", type=float, default=10.0)
    args = p.parse_args()
    os.environ["NFPI_PROGRESS"] = "log"  # the Snakemake/SLURM path (stderr is a log file)

    import torch
    from sklearn.datasets import load_digits

    import nfpi.fpi as new
    from nfpi.progress import progress

    old = _module_at(args.base, "nfpi/fpi.py", "fpi_base")
    x, y = load_digits(return_X_y=True)
    z = torch.tensor(x, dtype=torch.float64) / 16 + torch.rand(x.shape, generator=torch.Generator().manual_seed(0),
                                                              dtype=torch.float64) / 16
    stats_new = new.ClassStats.from_latents(z, torch.tensor(y), 10)
    stats_old = old.ClassStats(stats_new.counts, stats_new.mean, stats_new.sq)
    kw = {"lam": args.lam, "tol": 1e-12, "max_iter": 500}
    iters = new.solve_fpi_from_stats(stats_new, **kw).iterations
    assert iters == old.solve_fpi_from_stats(stats_old, **kw).iterations, "the two versions disagree"
    t_new, t_old = [], []
    for _ in range(args.repeats):
        for fn, st, out in ((new.solve_fpi_from_stats, stats_new, t_new), (old.solve_fpi_from_stats, stats_old, t_old)):
            t0 = time.perf_counter()
            fn(st, **kw)
            out.append(time.perf_counter() - t0)
    m_new, m_old = statistics.median(t_new), statistics.median(t_old)
    print(f"FPI solve (K=10, d=64, lam={args.lam:g}, {iters} iterations), median of {args.repeats} alternating runs:")
    print(f"  with progress (log mode)  {1e3 * m_new:8.3f} ms")
    print(f"  without ({args.base})     {1e3 * m_old:8.3f} ms")
    print(f"  ratio with/without        {m_new / m_old:8.4f}")

    bar = progress(total=10**9, desc="bench", mode="log", interval=1e9, delay=1e9)
    n = 100_000
    per = []
    for _ in range(5):
        t0 = time.perf_counter()
        for i in range(n):
            bar.update()
            bar.set(residual=1e-3)
        per.append((time.perf_counter() - t0) / n)
    print(f"  update()+set() in log mode: {1e9 * statistics.median(per):.0f} ns per call "
          f"(median of 5 x {n}); per FPI solve: {iters * statistics.median(per) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
