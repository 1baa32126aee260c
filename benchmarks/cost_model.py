"""Cost model of the paper configs: counted FLOPs per image, images, epochs, PFLOPs and GPU-hours per stage.

    .venv/bin/python benchmarks/cost_model.py                      # rewrite docs/cost-model.md
    .venv/bin/python benchmarks/cost_model.py --check              # exit 1 when the doc is stale
    .venv/bin/python benchmarks/cost_model.py --measured gpu-check.json   # add GPU-hours at measured images/s

Everything comes from the *resolved* configs (``config/config.yaml`` overlaid with the paper config and
the schema's defaults filled in, as Snakemake does), so the tables follow a config edit once this is
rerun; ``tests/test_cost_model.py`` fails while the doc's input digest differs from the configs'.

- FLOPs per image: ``torch.utils.flop_counter.FlopCounterMode`` on a real forward, forward+backward
  (training) and inverse (sampling) of the configured flow at the dataset's image size, on the CPU,
  batch 1; the same for the classifiers the config builds (ResNet18, Swin, EVA02; batch 2 for batch
  norm) and, on the meta device, for the paper's pretrained EVA02-B/14 at 448 px.  The counter counts
  matrix products and convolutions (2 FLOPs per multiply-add), not elementwise work, which is small
  next to them here but costs memory bandwidth.
- Images: the official split sizes (table ``SOURCES``) after the stratified ``val`` carve
  (``round(val_fraction * N)`` images, ``nfpi.data.stratified_carve``) and any per-class caps.
- Jobs per stage: Snakemake's own dry run of ``all`` for the config (the settings each table needs).
- GPU-hours: total FLOPs / (peak bf16 dense FLOP/s x assumed MFU); the peaks and the MFU are
  assumptions stated in the doc.  ``--measured`` replaces them for the flow stages by the images/s
  that ``scripts/gpu-check`` measured (its ``throughput`` section).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOC = ROOT / "docs" / "cost-model.md"
# the committed report of the run on an H200 (docs/benchmarks.md, "GPU"); --measured takes another
MEASURED = ROOT / "docs" / "bench" / "gpu-check-h200-run2.json"
PAPER_CONFIGS = ("cifar10", "cifar100", "mnist", "imagenet32", "imagenet64")


@dataclass(frozen=True)
class Source:
    """Official split sizes of a dataset source (before the val carve)."""

    train: int
    test: int
    classes: int
    shape: tuple[int, int, int]  # (C, H, W) as the source stores it


SOURCES: dict[str, Source] = {
    "cifar10": Source(50_000, 10_000, 10, (3, 32, 32)),
    "cifar100": Source(50_000, 10_000, 100, (3, 32, 32)),
    "mnist": Source(60_000, 10_000, 10, (1, 28, 28)),
    # Downsampled ImageNet: the ILSVRC-2012 training set and its validation set (the test split here)
    "imagenet32": Source(1_281_167, 50_000, 1000, (3, 32, 32)),
    "imagenet64": Source(1_281_167, 50_000, 1000, (3, 64, 64)),
}

# Assumed sustained throughput: dense bf16 tensor-core peaks from the vendors' data sheets (no
# sparsity) times an assumed model-FLOPs utilisation.  Small convolutions on 4x4-16x16 maps and the
# flows' long chains of small matrix products rarely reach more; gpu-check measures the real rate.
GPUS: dict[str, float] = {"A100": 312e12, "H100": 989e12}
MFU = 0.30
# Passes over each image of a split per job, besides training: evaluate computes NF-Acc on bin centres
# and bits/dim on dequantised images (2 forwards); extraction and classification 1.
EVAL_PASSES = 2


# ------------------------------------------------------------------------------------------------
# resolved configs


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Snakemake's ``--configfile`` overlay: nested mappings merge, everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolved_config(name: str) -> dict[str, Any]:
    """``config/config.yaml`` + ``config/<name>.yaml`` validated against the schema (defaults filled in)."""
    import yaml
    from snakemake.utils import validate

    from nfpi.schema import SCHEMA_PATH

    cfg = _merge(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
                 yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
    validate(cfg, str(SCHEMA_PATH))
    return cfg


def inputs_digest(configs: dict[str, dict[str, Any]]) -> str:
    """What the doc depends on: the resolved configs, the flow presets and this script."""
    h = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode())
    for path in (ROOT / "nfpi" / "flows" / "presets.py", Path(__file__).resolve(), MEASURED):
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def image_shape(cfg: dict[str, Any], levels: int) -> tuple[int, int, int]:
    """The prepared images' shape: channels / size overrides, then pad or resize to a multiple of 2**levels."""
    c, h, w = SOURCES[cfg["data"]["name"]].shape
    c = cfg["data"].get("channels") or c
    if cfg["data"].get("image_size"):
        h = w = int(cfg["data"]["image_size"])
    f = 2**levels
    return c, -(-h // f) * f, -(-w // f) * f


def split_sizes(cfg: dict[str, Any]) -> dict[str, int]:
    """Images per split: caps per class (balanced classes assumed), then the stratified val carve."""
    src, data = SOURCES[cfg["data"]["name"]], cfg["data"]
    train, test = src.train, src.test
    if data.get("max_train_per_class"):
        train = min(train, data["max_train_per_class"] * src.classes)
    if data.get("max_test_per_class"):
        test = min(test, data["max_test_per_class"] * src.classes)
    val = round(float(data.get("val_fraction", 0.1)) * train)
    return {"train": train - val, "val": val, "test": test, "classes": src.classes}


def job_counts(name: str) -> dict[str, int]:
    """Jobs per rule of ``snakemake all`` for the paper config (a dry run in a scratch directory)."""
    import tempfile

    with tempfile.TemporaryDirectory() as wd:
        # The workflow checks at start-up that the data folder and any pretrained weights file exist: stand
        # empty ones in (a dry run reads neither).
        paper = yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text())
        data = paper.get("data") or {}
        if data.get("root") and not data.get("download"):
            (Path(wd) / data["root"]).mkdir(parents=True, exist_ok=True)
        for sec in ("cnn", "swin", "eva02"):
            weights = (paper.get(sec) or {}).get("pretrained_file")
            if weights:
                (Path(wd) / weights).parent.mkdir(parents=True, exist_ok=True)
                (Path(wd) / weights).touch()
        # the target before --configfile, which takes several values
        cmd = [sys.executable, "-m", "snakemake", "all", "--dry-run", "--quiet", "rules", "--snakefile",
               str(ROOT / "Snakefile"), "--directory", wd, "--configfile", str(ROOT / "config" / f"{name}.yaml")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake dry run of config/{name}.yaml failed: {(proc.stdout + proc.stderr)[-2000:]}")
    counts = parse_job_stats(proc.stdout + proc.stderr)
    if not counts:
        raise RuntimeError(f"snakemake dry run of config/{name}.yaml printed no 'Job stats' table")
    return counts


def parse_job_stats(text: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> job count, with ``total``); empty when absent."""
    counts: dict[str, int] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            for row in lines[i + 3:]:  # after the header and its rule
                parts = row.split()
                if len(parts) != 2 or not parts[1].isdigit():
                    break
                counts[parts[0]] = int(parts[1])
            break
    return counts


# ------------------------------------------------------------------------------------------------
# FLOP counting


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matrix products and convolutions ``fn`` runs (``FlopCounterMode``; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def flow_flops(flow_cfg: dict[str, Any], shape: tuple[int, int, int], batch: int = 1) -> dict[str, float]:
    """Per image: forward (extraction), forward+backward (a training step) and inverse (sampling).

    Counted at ``batch`` images on the CPU (the layers' autocast guards need a real device); the
    data-dependent init runs on 2 images first, as a per-pixel actnorm needs more than one.
    """
    import torch

    from nfpi.config import from_mapping
    from nfpi.density import ClassGaussianPrior, preprocess
    from nfpi.flows import FlowConfig, build_flow

    torch.manual_seed(0)
    flow = build_flow(from_mapping(FlowConfig, flow_cfg, where="flow"), shape)
    x = preprocess(torch.randint(0, 256, (max(batch, 2), *shape), dtype=torch.uint8))
    flow.data_init(x)
    x = x[:batch]
    prior = ClassGaussianPrior.standard(2, flow.latent_dim)
    y = torch.zeros(batch, dtype=torch.int64)

    def forward() -> None:
        with torch.no_grad():
            flow(x)

    def train() -> None:
        z, ld = flow(x)
        (-(prior.log_prob(z, y) + ld).mean()).backward()

    with torch.no_grad():
        z = flow(x)[0]

    def inverse() -> None:
        with torch.no_grad():
            flow.inverse(z)

    return {"forward": count_flops(forward) / batch, "train": count_flops(train) / batch,
            "inverse": count_flops(inverse) / batch, "params": sum(p.numel() for p in flow.parameters())}


def classifier_flops(section: str, mapping: dict[str, Any], shape: tuple[int, int, int], classes: int,
                     batch: int = 2) -> dict[str, float]:
    """Per image: forward and forward+backward of the classifier the config section builds."""
    import torch

    from nfpi.classifiers import build_classifier, classifier_config

    torch.manual_seed(0)
    model = build_classifier(classifier_config(section, mapping), shape, classes).train()
    x = torch.rand(batch, *shape)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def train() -> None:
        model(x).float().sum().backward()

    return {"forward": count_flops(forward) / batch, "train": count_flops(train) / batch,
            "params": sum(p.numel() for p in model.parameters())}


def eva02_pretrained_flops(mapping: dict[str, Any], classes: int) -> dict[str, float]:
    """Per image: the paper's pretrained EVA02 (timm ``model_name``, default EVA02-B/14 at 448 px).

    Built and counted on the meta device (no weights, no memory): what ``eva02.pretrained_file``
    switches to.  Its input size is the architecture's pretrained one unless ``model_kwargs.img_size``.
    """
    import timm
    import torch

    from nfpi.classifiers import DEFAULT_EVA02_PRETRAINED

    kw = dict(mapping.get("model_kwargs") or {})
    name = kw.pop("model_name", DEFAULT_EVA02_PRETRAINED)
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False, num_classes=classes, **kw).train()
        size = kw.get("img_size") or model.pretrained_cfg["input_size"][-1]
        x = torch.rand(1, 3, size, size)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return {"forward": float(count_flops(forward)), "train": float(count_flops(lambda: model(x).sum().backward())),
            "params": sum(p.numel() for p in model.parameters()), "name": name, "size": size}


# ------------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class Stage:
    """One stage of a config: ``jobs`` jobs, each passing ``images`` images ``epochs`` times at ``flops`` per image."""

    name: str
    jobs: int
    images: int  # per pass of one job
    epochs: float  # passes per job
    flops: float  # per image and pass
    what: str  # forward / train / inverse, and of which model
    measured_images_per_s: float | None = None

    @property
    def total(self) -> float:
        return self.jobs * self.images * self.epochs * self.flops


def stages(cfg: dict[str, Any], jobs: dict[str, int], flops: dict[str, dict[str, float]], n: dict[str, int],
           measured: dict[str, float] | None = None) -> list[Stage]:
    """The GPU stages of ``snakemake all`` for ``cfg`` (CPU-only stages are left out; see the doc)."""
    f, m = flops["flow"], measured or {}
    out = []
    for key in ("pretrain", "finetune"):
        t = cfg[key]
        images = int(t["steps"]) * int(t["batch_size"])
        out.append(Stage(key, jobs.get(key, 0), n["train"], images / n["train"], f["train"], "flow fwd+bwd",
                         m.get("train")))
    out.append(Stage("extract", jobs.get("extract", 0), n["train"] + n["val"] + n["test"], 1, f["forward"],
                     "flow fwd", m.get("extract")))
    evaluate_splits = cfg.get("evaluate", {}).get("splits", ["val", "test"])
    out.append(Stage("evaluate", jobs.get("evaluate", 0), sum(n[s] for s in evaluate_splits), EVAL_PASSES, f["forward"],
                     "flow fwd", m.get("extract")))
    per_class = int(cfg["sample"]["per_class"])
    out.append(Stage("sample", jobs.get("sample", 0), per_class * n["classes"], 1, f["inverse"], "flow inverse"))
    copies = int(cfg.get("augment", {}).get("copies", 1))
    out.append(Stage("augment", jobs.get("augment", 0), n["train"] * copies, 1, f["inverse"], "flow inverse"))
    c = flops["cnn"]
    out.append(Stage("cnn", jobs.get("cnn", 0), per_class * n["classes"], float(cfg["cnn"]["epochs"]), c["train"],
                     "ResNet18 fwd+bwd"))
    for arch, label in (("swin", "Swin"), ("eva02", "EVA02")):
        if not jobs.get(arch):
            continue
        a = flops[arch]
        # half of the jobs train on the real images, half on real + NF-augmented copies (Tables 5-6)
        real = Stage(arch, jobs[arch] // 2, n["train"], float(cfg[arch]["epochs"]), a["train"], f"{label} fwd+bwd")
        aug = Stage(f"{arch} (+NF aug.)", jobs[arch] - jobs[arch] // 2, n["train"] * (1 + copies),
                    float(cfg[arch]["epochs"]), a["train"], f"{label} fwd+bwd")
        out += [real, aug]
    return [s for s in out if s.jobs > 0]


def gpu_hours(flops: float, peak: float) -> float:
    return flops / (peak * MFU) / 3600


def _fmt_flops(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g}"


def _fmt_epochs(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _fmt_h(v: float) -> str:
    return f"{v:,.1f}" if v >= 1 else f"{v:.2f}"


_FLOW_CACHE: dict[str, dict[str, float]] = {}


def analyse(name: str) -> dict[str, Any]:
    """Everything the doc says about one paper config."""
    from nfpi.config import from_mapping
    from nfpi.flows import FlowConfig, resolve_preset

    cfg = resolved_config(name)
    levels = resolve_preset(from_mapping(FlowConfig, cfg["flow"], where="flow")).levels
    shape = image_shape(cfg, levels)
    n = split_sizes(cfg)
    key = json.dumps([cfg["flow"], shape], sort_keys=True)  # CIFAR-10 / -100 / ImageNet32 share one flow
    if key not in _FLOW_CACHE:
        _FLOW_CACHE[key] = flow_flops(cfg["flow"], shape)
    flops = {"flow": _FLOW_CACHE[key]}
    for section in ("cnn", "swin", "eva02"):
        if section == "eva02" and cfg[section].get("pretrained_file"):  # the file need not exist here
            flops[section] = eva02_pretrained_flops(cfg[section], n["classes"])
        else:
            flops[section] = classifier_flops(section, cfg[section], shape, n["classes"])
    if not cfg["eva02"].get("pretrained_file"):  # what the paper's Table 6 would cost instead
        flops["eva02_paper"] = eva02_pretrained_flops(cfg["eva02"], n["classes"])
    return {"name": name, "config": cfg, "shape": shape, "splits": n, "flops": flops, "jobs": job_counts(name)}


def render(results: list[dict[str, Any]], digest: str, measured: dict[str, Any] | None) -> str:
    peaks = ", ".join(f"{g} {p / 1e12:.0f} TFLOP/s" for g, p in GPUS.items())
    lines = [
        "# Cost model of the paper configs",
        "",
        "<!-- generated by benchmarks/cost_model.py: do not edit; rerun it after changing config/*.yaml -->",
        f"<!-- inputs: {digest} -->",
        "",
        "Generated by `python benchmarks/cost_model.py` from the resolved configs (`config/config.yaml` overlaid",
        "with `config/<name>.yaml`, schema defaults filled in); `tests/test_cost_model.py` fails when a config,",
        "the flow presets or the script change without regenerating this file.",
        "",
        "**How the numbers are made.** FLOPs per image are *counted*, not estimated:",
        "`torch.utils.flop_counter.FlopCounterMode` around a real forward, forward+backward (one training step;",
        "the optimiser, EMA and elementwise work are not counted) and inverse of the configured flow at the",
        "prepared image size, and of the ResNet18 / Swin / EVA02 each config builds (the counter counts matrix",
        "products and convolutions at 2 FLOPs per multiply-add). Images per epoch are the official training",
        "split minus the stratified validation carve (`round(val_fraction * N)`, `nfpi.data`). Epochs are",
        "`steps x batch_size / train images` for the flow stages and the configured `epochs` for the classifiers.",
        "Jobs per stage are what `snakemake --dry-run all` schedules for the config (one fine-tuning per setting",
        "that a table needs, and so on).",
        "",
        "**Assumed throughput.** GPU-hours = FLOPs / (peak x MFU) with the dense bf16 tensor-core peaks of the",
        f"data sheets ({peaks}; no sparsity) and an **assumed MFU of {MFU:.0%}**. The flows' small convolutions",
        "(4x4 to 16x16 maps, 128 channels) and their chains of small matrix-exponential series may well run below",
        "that: treat these hours as a lower bound until `scripts/gpu-check` (docs/gpu-check.md) has measured the",
        "CIFAR preset's images/s on the cluster's GPU; `python benchmarks/cost_model.py --measured gpu-check.json`",
        "then adds a column of hours at the measured rate for the flow stages.",
        "",
        "Hours scale as 1 / MFU: at 3% MFU they are ten times the columns below. They are GPU-hours: a",
        "training rule given `resources.gpus: 4` (the ImageNet configs) runs as 4 DDP processes and takes a",
        "quarter of its hours in wall-clock time; extraction, evaluation and sampling use one GPU each.",
        "",
        "Not modelled (CPU or latent-space work, minutes): `prepare`, `solve` (the FPI / GD solvers on",
        "`D`-dimensional class statistics), `tsne`, `latent_ot`, `flowfactor`, `tabulate`, `curves`.",
    ]
    if measured:
        lines += ["", f"Measured rates ({measured['source']}): training {measured['train']:.1f} images/s (bf16), "
                  f"extraction {measured['extract']:.1f} images/s, at batch {measured['batch']} on {measured['gpu']}, "
                  "CIFAR preset. Other presets are charged the CIFAR rate scaled by their FLOPs per image."]
    for r in results:
        cfg, n, fl, shape = r["config"], r["splits"], r["flops"], r["shape"]
        lines += ["", f"## {r['name']} (`config/{r['name']}.yaml`)", "",
                  f"Images {shape[0]}x{shape[1]}x{shape[2]}, {n['classes']} classes; train {n['train']:,} / val "
                  f"{n['val']:,} / test {n['test']:,} images. Flow `{cfg['flow'].get('preset')}` "
                  f"({fl['flow']['params'] / 1e6:.1f}M parameters): {_fmt_flops(fl['flow']['forward'])}FLOP forward, "
                  f"{_fmt_flops(fl['flow']['train'])}FLOP forward+backward "
                  f"({fl['flow']['train'] / fl['flow']['forward']:.2f}x), {_fmt_flops(fl['flow']['inverse'])}FLOP inverse "
                  "per image. Classifiers: " + "; ".join(
                      f"{s} {fl[s]['params'] / 1e6:.1f}M params, {_fmt_flops(fl[s]['train'])}FLOP per training image"
                      for s in ("cnn", "swin", "eva02")) + ".",
                  ""]
        head = "| stage | jobs | images per pass | passes (epochs) per job | model | FLOPs / image | total PFLOP |"
        head += "".join(f" {g}-h @ {MFU:.0%} MFU |" for g in GPUS)
        if measured:
            head += " GPU-h at measured rate |"
        lines += [head, "|" + " --- |" * (head.count("|") - 1)]
        scaled = None
        if measured:
            # the rates were measured on the CIFAR preset: another flow runs at that rate times the ratio of
            # FLOPs per image (same kernels, a different size; an estimate, stated in the doc)
            ratio = {k: measured["cifar_flops"][k] / fl["flow"][k] for k in ("train", "forward")}
            scaled = {"train": measured["train"] * ratio["train"], "extract": measured["extract"] * ratio["forward"]}
        stage_list = stages(cfg, r["jobs"], fl, n, scaled)
        total = measured_h = 0.0
        for s in stage_list:
            total += s.total
            row = (f"| {s.name} | {s.jobs} | {s.images:,} | {_fmt_epochs(s.epochs)} | {s.what} | {_fmt_flops(s.flops)} | "
                   f"{s.total / 1e15:,.1f} |" + "".join(f" {_fmt_h(gpu_hours(s.total, p))} |" for p in GPUS.values()))
            if measured:
                rate = s.measured_images_per_s
                row += f" {_fmt_h(s.jobs * s.images * s.epochs / rate / 3600)} |" if rate else " |"
                measured_h += s.jobs * s.images * s.epochs / rate / 3600 if rate else 0.0
            lines.append(row)
        lines.append(f"| **all** | {sum(s.jobs for s in stage_list)} | | | | | **{total / 1e15:,.1f}** |"
                     + "".join(f" **{_fmt_h(gpu_hours(total, p))}** |" for p in GPUS.values())
                     + (f" **{_fmt_h(measured_h)}** (flow stages) |" if measured else ""))
        if "eva02_paper" in fl:
            e, ep = fl["eva02"], fl["eva02_paper"]
            eva = [s for s in stage_list if s.name.startswith("eva02")]
            paper_total = sum(s.total / s.flops * ep["train"] for s in eva)
            h100 = gpu_hours(paper_total, GPUS["H100"])
            lines += ["", f"`eva02.pretrained_file` is null, so the eva02 rows are the small EVA02 trained from scratch "
                      f"({e['params'] / 1e6:.1f}M parameters). The paper's Table 6 fine-tunes the pretrained {ep['name']} "
                      f"({ep['params'] / 1e6:.1f}M parameters, {ep['size']} px input; counted on the meta device): "
                      f"{_fmt_flops(ep['train'])}FLOP per training image, so the same eva02 jobs would cost "
                      f"{paper_total / 1e15:,.1f} PFLOP, {_fmt_h(h100)} H100-h at {MFU:.0%} MFU."]
    return "\n".join(lines) + "\n"


def measured_rates(path: Path) -> dict[str, Any]:
    """Flow training (bf16) and extraction images/s from a gpu-check report's ``throughput`` section."""
    rep = json.loads(path.read_text())
    sec = next(s for s in rep["sections"] if s["name"] == "throughput")
    if not sec["ok"] or rep.get("smoke"):
        raise SystemExit(f"{path}: the throughput section did not pass at full size (ok={sec['ok']}, smoke={rep.get('smoke')})")
    gpus = rep["environment"].get("gpus") or [{"name": rep["device"]}]
    met = sec["metrics"]
    # the rate at the paper's batch when the report has it (a flow of many small kernels is launch-bound at
    # batch 64 on a large GPU: 6x fewer images/s on an H200), else the batch-64 rows of older reports
    suffix = next((k[len("train_bf16"):] for k in met if k.startswith("train_bf16_b")), "")
    train, extract = met[f"train_bf16{suffix}"], met.get(f"extract_fp32{suffix}", met["extract_fp32"])
    return {"train": train["images_per_s"], "extract": extract["images_per_s"], "batch": train["batch"],
            "gpu": gpus[0]["name"], "source": path.name}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DOC)
    ap.add_argument("--check", action="store_true", help="exit 1 if --out was generated from other inputs")
    ap.add_argument("--measured", type=Path, default=MEASURED if MEASURED.exists() else None,
                    help=f"a scripts/gpu-check report (full size, on a GPU); default {MEASURED.relative_to(ROOT)}")
    ap.add_argument("--configs", nargs="+", default=list(PAPER_CONFIGS))
    args = ap.parse_args(argv)
    digest = inputs_digest({c: resolved_config(c) for c in args.configs})
    if args.check:
        text = args.out.read_text() if args.out.exists() else ""
        fresh = f"<!-- inputs: {digest} -->" in text
        print(f"{args.out}: {'fresh' if fresh else 'STALE: rerun python benchmarks/cost_model.py'}")
        return 0 if fresh else 1
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = [analyse(c) for c in args.configs]
    measured = None
    if args.measured:
        measured = measured_rates(args.measured)
        cifar = next((r for r in results if r["name"] == "cifar10"), None) or analyse("cifar10")
        measured["cifar_flops"] = {k: cifar["flops"]["flow"][k] for k in ("train", "forward")}
    from nfpi.io import atomic_write_text

    atomic_write_text(args.out, render(results, digest, measured))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
