"""The user's own data (``data.name: npz`` and ``imagefolder``) through the whole workflow.

Small data sets are generated in the documented on-disk layouts (docs/data.md), at sizes the
digits flow (2 levels: H and W multiples of 4) cannot squeeze, and ``snakemake all`` runs on them
with the tiny CI settings (.test/config/config.yaml) plus .test/config/custom.yaml (no
transformers or side studies): prepare -> pretrain -> extract -> solve -> finetune -> evaluate /
sample -> cnn -> tabulate and the figures.  To keep each run near a minute on 2 cores, the npz run
makes Tables 2-3 and the ImageFolder run Tables 1-2 (every stage runs in both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / ".test" / "config" / "config.yaml"
CUSTOM = ROOT / ".test" / "config" / "custom.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
TRAIN_PER_CLASS, TEST_PER_CLASS = 24, 8

# ~100 s of CPU per run (20-30 short stage jobs); 1.5-2.5 min wall each on the busy 2-core box.
# Not `integration`: `make test` runs it.
pytestmark = pytest.mark.slow


def _pattern(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float [size, size] image in [0, 1]: vertical stripes, horizontal stripes or a centred blob,
    with a random phase / offset and noise (classes separable, images not identical)."""
    i, j = np.mgrid[0:size, 0:size]
    phase = int(rng.integers(0, 3))
    if cls == 0:
        img = ((j + phase) % 3 == 0).astype(float)
    elif cls == 1:
        img = ((i + phase) % 3 == 0).astype(float)
    else:
        c = (size - 1) / 2 + rng.uniform(-1, 1, size=2)
        img = np.exp(-((i - c[0]) ** 2 + (j - c[1]) ** 2) / (0.1 * size**2))
    return np.clip(0.15 + 0.7 * img + rng.normal(0.0, 0.08, img.shape), 0.0, 1.0)


def _rgb(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]: the class pattern in a class-tinted colour."""
    tint = np.eye(3)[cls] * 0.6 + 0.4
    return np.rint(_pattern(cls, size, rng)[..., None] * tint * 255).astype(np.uint8)


def _labelled(n_per_class: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(3), n_per_class)
    y = y[rng.permutation(len(y))]
    return np.stack([_rgb(int(c), size, rng) for c in y]), y


def _run(args: list[str], cwd: Path) -> None:
    """Snakemake in ``cwd`` (as tests/test_workflow.py); on failure, its stderr and the stage logs."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("results/*/logs/*.log")))
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-6000:]}\n{logs[-20000:]}")


def _workflow(wd: Path, run: str, data: dict, **overrides: dict) -> Path:
    """``snakemake all`` in ``wd`` with the tiny settings, custom.yaml and a ``run``/``data`` overlay."""
    overlay = wd / "data.yaml"
    overlay.write_text(yaml.safe_dump({"run": run, "data": data, **overrides}))
    _run(["all", "--cores", "2", "--configfile", str(TINY), str(CUSTOM), str(overlay)], wd)
    return wd / "results" / run


def _check_outputs(r: Path, tables: tuple[int, ...]) -> dict:
    """The outputs every custom-data run must have; returns the prepared data's meta.json."""
    m = json.loads((r / "metrics" / "nfpi.json").read_text())
    for split in ("val", "test"):
        assert 0.0 <= m[split]["nf_acc"] <= 1.0, m[split]
    assert m["provenance"]["config_hash"]
    for n in tables:
        for ext in ("md", "csv", "tex", "sources.json"):
            assert (r / "tables" / f"table{n}.{ext}").is_file(), f"table{n}.{ext}"
    summary = json.loads((r / "summary.json").read_text())
    assert set(summary["tables"]) >= {f"table{n}" for n in tables}
    assert not set(summary["tables"]) & {"table5", "table6"}  # the transformers are off
    for fig in ("samples_nfpi.png", "samples_baseline1.png", "fig1_tsne.png", "fig2_augment.png",
                "training_curves.png"):
        assert (r / "figures" / fig).stat().st_size > 1000, fig
    for n in tables:  # every accuracy cell filled, from a file that exists
        cells = json.loads((r / "tables" / f"table{n}.sources.json").read_text())["cells"]
        acc = [c for c in cells if "Acc" in c["column"]]
        assert acc, f"table{n}: no accuracy cells"
        for c in acc:
            assert c["value"] is not None and 0.0 <= c["value"] <= 100.0, (n, c)
            assert (r.parent.parent / c["source"]).is_file(), (n, c)
    return json.loads((r / "data" / "meta.json").read_text())


# ---- npz: RGB 10x10, labels {1, 2, 3} named through class_names, padded to 12x12 ----------


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the run's results folder, the generated data folder)."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("npz_data")
    names = np.array(["unused", "vertical", "horizontal", "blob"])  # indexed by label value
    x, y = _labelled(TRAIN_PER_CLASS, 10, rng)
    np.savez(root / "train.npz", images=x, labels=y + 1, class_names=names)
    x, y = _labelled(TEST_PER_CLASS, 10, rng)
    np.savez(root / "test.npz", images=x, labels=y + 1)
    r = _workflow(tmp_path_factory.mktemp("wf_npz"), "custom_npz",
                  {"name": "npz", "root": str(root), "val_fraction": 0.125},
                  experiments={"table1": False})  # Table 1 (+ a GD setting) is covered by folder_run
    return r, root


def test_npz_source_runs_end_to_end(npz_run: tuple[Path, Path]) -> None:
    r, root = npz_run
    meta = _check_outputs(r, tables=(2, 3))
    assert meta["name"] == "npz" and meta["num_classes"] == 3
    assert meta["n_bits"] == 8  # pretrain.n_bits: null models an 8-bit source at 8 bits (digits: 4)
    assert meta["class_names"] == ["vertical", "horizontal", "blob"]
    assert meta["source_image_shape"] == [3, 10, 10] and meta["image_shape"] == [3, 12, 12]
    assert any("zero-padded 10x10 -> 12x12" in n for n in meta["notes"]), meta["notes"]
    assert meta["source_splits"] == {"train": "train", "val": "train", "test": "test"}
    assert meta["counts"] == {"train": 63, "val": 9, "test": 3 * TEST_PER_CLASS}
    assert meta["class_counts"]["test"] == [TEST_PER_CLASS] * 3
    x = np.load(r / "data" / "train_images.npy")
    assert x.shape == (63, 3, 12, 12) and x.dtype == np.uint8
    # test.npz is the test split as it comes: same order, labels {1, 2, 3} -> {0, 1, 2}, centred 1-pixel border
    with np.load(root / "test.npz") as z:
        src_x, src_y = z["images"], z["labels"]
    np.testing.assert_array_equal(np.load(r / "data" / "test_labels.npy"), src_y - 1)
    expected = np.pad(src_x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    np.testing.assert_array_equal(np.load(r / "data" / "test_images.npy"), expected)
    assert "zero-padded 10x10 -> 12x12" in (r / "logs" / "prepare.log").read_text()


# ---- ImageFolder: RGB 6x6 PNGs, read as grey, resized up to 8x8 -----------------------------


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("folder_data")
    classes = ["stripes_v", "stripes_h", "blob"]  # sorted order differs: blob, stripes_h, stripes_v
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(_rgb(c, 6, rng)).save(root / split / name / f"{k:03d}.png")
    return _workflow(tmp_path_factory.mktemp("wf_folder"), "custom_folder",
                     {"name": "imagefolder", "root": str(root), "channels": 1, "resize_mode": "resize",
                      "val_fraction": 0.125},
                     experiments={"ablation": False})  # Table 3 (4 more fine-tunings) is covered by npz_run


def test_imagefolder_source_runs_end_to_end(folder_run: Path) -> None:
    meta = _check_outputs(folder_run, tables=(1, 2))
    assert meta["name"] == "imagefolder" and meta["num_classes"] == 3
    assert meta["class_names"] == ["blob", "stripes_h", "stripes_v"]  # torchvision's sorted folder names
    assert meta["source_image_shape"] == [1, 6, 6] and meta["image_shape"] == [1, 8, 8]
    assert "images decoded as L" in meta["notes"]
    # a user's data is titled by the run's name, not by its file format
    assert "### Table 1: NF-Acc of the baselines and NFPI (custom_folder, after fine-tuning)" in (
        folder_run / "tables" / "table1.md").read_text()
    assert any("resized 6x6 -> 8x8" in n for n in meta["notes"]), meta["notes"]
    assert meta["counts"] == {"train": 63, "val": 9, "test": 3 * TEST_PER_CLASS}
    assert meta["class_counts"]["test"] == [TEST_PER_CLASS] * 3
    x = np.load(folder_run / "data" / "test_images.npy")
    assert x.shape == (3 * TEST_PER_CLASS, 1, 8, 8) and x.dtype == np.uint8
    # test/ as it comes: ImageFolder order (sorted classes, then files), labels from the folder names
    np.testing.assert_array_equal(np.load(folder_run / "data" / "test_labels.npy"),
                                  np.repeat(np.arange(3), TEST_PER_CLASS))
