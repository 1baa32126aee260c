"""Benchmark the flow: training-step and latent-extraction throughput, peak memory (RSS).

A training step is what the trainer does per batch: uniform dequantisation, forward, class-Gaussian
NLL (``nfpi.density.flow_nll``), backward, Adamax step.  Extraction is forward-only under
``torch.inference_mode`` with bin-centre preprocessing.  Each (preset, batch, mode) runs in its own
process so ``ru_maxrss`` is that configuration's peak.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flow.py --preset digits --batch 64 256
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flow.py --preset cifar --batch 16 64 --steps 3
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_flow.py --preset cifar --batch 16 64 --mode train --precision bf16

Prints one JSON line per configuration and a Markdown table (``--out FILE`` writes the table).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {"digits": (1, 8, 8), "cifar": (3, 32, 32), "imagenet32": (3, 32, 32), "imagenet64": (3, 64, 64)}


def run_one(preset: str, arch: str, batch: int, mode: str, steps: int, warmup: int, threads: int,
            precision: str = "fp32", device: str = "cpu", flow_overrides: dict | None = None) -> dict:
    """Time ``steps`` iterations (after ``warmup``) in this process; return images/s stats and peak memory.

    ``device`` "cuda" times with ``torch.cuda.synchronize`` and adds the peak GPU memory
    (``torch.cuda.max_memory_allocated``, reset before the warm-up); ``flow_overrides`` are
    ``FlowConfig`` fields on top of the preset (``scripts/gpu-check --smoke`` shrinks the flow).
    """
    import torch

    from nfpi.density import ClassGaussianPrior, preprocess
    from nfpi.flows import FlowConfig, build_flow

    if threads:
        torch.set_num_threads(threads)
    nthreads = torch.get_num_threads()
    torch.manual_seed(0)
    shape = SHAPES[preset]
    from nfpi.runtime import autocast, flush_denormals, keep_freed_memory

    flush_denormals()  # as every stage process does (nfpi.cli.start_stage)
    keep_freed_memory()
    dev = torch.device(device)
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:  # kernels run asynchronously: time what ran, not what was queued
            torch.cuda.synchronize(dev)

    flow = build_flow(FlowConfig(arch=arch, preset=preset, **(flow_overrides or {})), shape)
    n_params = sum(p.numel() for p in flow.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    flow.data_init(preprocess(x[: min(batch, 64)], generator=g))
    flow = flow.to(dev)
    x, y = x.to(dev), y.to(dev)
    g = torch.Generator(device=dev).manual_seed(0)  # preprocess draws its noise on x's device
    prior = ClassGaussianPrior.standard(10, flow.latent_dim).to(dev)
    if mode == "train":
        opt = torch.optim.Adamax(flow.parameters(), lr=1e-3, foreach=True)
        flow.train()

        def step() -> None:
            with autocast(dev, precision):  # as nfpi.training.train_flow
                z, logdet = flow(preprocess(x, generator=g))
            loss = -(prior.log_prob(z.float(), y) + logdet.float()).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    else:
        flow.eval()

        def step() -> None:
            with torch.inference_mode():
                z, _ = flow(preprocess(x, dequantize=False))
                prior.classify(z)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(warmup):
        step()
    sync()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    cpu_med = statistics.median(cpu)
    return {
        "device": str(dev),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else None,
        "preset": preset,
        "arch": arch,
        "mode": mode,
        "batch": batch,
        "threads": nthreads,
        "precision": precision,
        "params": n_params,
        "step_s_median": med,
        "step_s_all": times,
        "images_per_s": batch / med,
        # CPU seconds this process got per step (all threads): on a shared, oversubscribed machine
        # batch / (cpu / threads) estimates the throughput with `threads` cores to itself
        "cpu_s_median": cpu_med,
        "images_per_s_cpu_adjusted": batch / (cpu_med / nthreads),
        "load_avg_1min": os.getloadavg()[0],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="digits", choices=sorted(SHAPES))
    ap.add_argument("--arch", default="matexp_glow")
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--mode", nargs="+", default=["train", "extract"], choices=["train", "extract"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="training steps under nfpi.runtime.autocast (bf16: coupling networks in bf16 on a CPU with native bf16)")
    ap.add_argument("--steps", type=int, default=5, help="timed iterations per configuration (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)  # child process
    ap.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    args = ap.parse_args()
    if args.single:
        print(json.dumps(run_one(args.preset, args.arch, args.batch[0], args.mode[0], args.steps, args.warmup, args.threads,
                                 args.precision)))
        return
    rows = []
    for mode in args.mode:
        for batch in args.batch:
            cmd = [sys.executable, __file__, "--single", "--preset", args.preset, "--arch", args.arch, "--batch", str(batch),
                   "--mode", mode, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--precision", args.precision]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            row = json.loads(out)
            print(json.dumps(row), flush=True)
            rows.append(row)
    lines = [
        "| preset | arch | params | mode | precision | batch | threads | images/s (wall, median) | images/s (CPU-time adjusted) | step s (median; all) | load avg | peak RSS GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['arch']} | {r['params'] / 1e6:.3f}M | {r['mode']} | {r['precision']} | {r['batch']} | {r['threads']} | "
            f"{r['images_per_s']:.2f} | {r['images_per_s_cpu_adjusted']:.2f} | {r['step_s_median']:.3f}; "
            f"{', '.join(f'{t:.3f}' for t in r['step_s_all'])} | {r['load_avg_1min']:.1f} | {r['peak_rss_gb']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out is not None:
        from nfpi.io import atomic_write_text

        prev = args.out.read_text() if args.out.exists() else ""
        atomic_write_text(args.out, prev + table + "\n")


if __name__ == "__main__":
    main()
