"""Stage ``extract``: map every image of each split to its latent z = f(x) and store it.

    python -m nfpi extract --config '{"extract": {...}}' --checkpoint flows/<flow>.pt --data-dir D \
        --out-dir latents/<flow>

Writes ``{train,val,test}.parquet`` (float32 fixed-size-list ``z``, ``label``, ``split``; row groups
for streaming) or ``.npy`` memmaps for large d.  The flow runs with its EMA weights in inference
mode.  By default each image is dequantised with seeded uniform noise, as in training: the flow
models the density of the continuous ``x + u``, and the class Gaussians the FPI fits must match the
distribution the flow is trained against.  Without noise, pixels that are constant within a class
(the blank border of every digit) give latent coordinates of zero class variance, where the
likelihood term is unbounded below (v -> 0) and the solver rightly reports divergence.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from nfpi.cli import parse_slices, provenance, stage_parser, start_stage
from nfpi.evaluation import ExtractConfig
from nfpi.io import atomic_write_json

log = logging.getLogger("nfpi.stages.extract")


def main(argv: list[str] | None = None) -> None:
    p = stage_parser(__doc__ or "", checkpoint=True, data_dir=True, out_dir=True)
    p.add_argument("--splits", default="train,val,test")
    args = p.parse_args(argv)
    start_stage(args, "extract")
    cfg: ExtractConfig = parse_slices(args.config, extract=ExtractConfig)["extract"]

    from nfpi.cli import load_flow_for_stage
    from nfpi.data import PreparedData
    from nfpi.evaluation import extract_latents
    from nfpi.latents import write_latents

    trained, device = load_flow_for_stage(args.checkpoint, cfg.device, need_prior=False)
    flow = trained.flow.to(device)
    data = PreparedData(args.data_dir)
    out = Path(args.out_dir)
    summary = {}
    for split in args.splits.split(","):
        t0 = time.perf_counter()
        n = len(data.labels(split))
        path = out / f"{split}.{cfg.format}"
        rows = write_latents(
            path, extract_latents(flow, data.dataset(split), batch_size=cfg.batch_size, device=device,
                                  dequantize=cfg.dequantize, seed=cfg.seed, n_bits=trained.n_bits,
                                  desc=f"extract {split}"),
            dim=flow.latent_dim, split=split, num_rows=n, row_group_size=cfg.row_group_size,
        )
        dt = time.perf_counter() - t0
        summary[split] = {"rows": rows, "seconds": dt, "images_per_sec": rows / max(dt, 1e-9), "path": str(path)}
        log.info("%s: %d latents (d=%d) in %.1fs (%.0f images/s) -> %s", split, rows, flow.latent_dim, dt,
                 rows / max(dt, 1e-9), path)
    atomic_write_json(out / "extract.json", {"splits": summary, "config": cfg, "provenance": provenance(args.config_hash)})


if __name__ == "__main__":
    main()
