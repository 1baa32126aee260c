"""Data sets the default config was NOT tuned on, generated on demand in the formats users pass.

The default config was chosen on scikit-learn's 8x8 digits; issue 14 asks that it hold on other
sizes, sources and image counts, judged against an RBF SVC on raw pixels of the same split
(``benchmarks/svc_baseline.py``).  Each generator is deterministic: the same ``seed`` writes
byte-identical arrays (PNG files: identical pixels), so anyone can rebuild the data a number in
docs/bench/generalise.md came from.  Nothing here is committed as binaries.

- ``glyphs16``: 16x16 grey, 10 classes (letters ``A C E H K M P R T X``) rendered with the TrueType
  font embedded in Pillow (``ImageFont.load_default(size)``, the same on every machine) at a random
  size, position, rotation and stroke width, anti-aliased by drawing at 4x and box-filtering down,
  with a random background/foreground grey and pixel noise; 1,500 images as an ImageFolder
  (``<root>/train/<class>/<i>.png``, no ``test/``: the workflow carves it).
- ``digits28``: 28x28 grey, 10 classes: scikit-learn's 8x8 digits upsampled to 20x20 (bicubic), then
  a random affine map (rotation, anisotropic scale, shear, shift) and an elastic distortion
  (Simard et al. 2003: a Gaussian-smoothed random displacement field), placed on a 28x28 canvas with
  pixel noise; 3,000 images as ``<root>/train.npz`` (``images`` uint8 [N, 28, 28], ``labels``,
  ``class_names``; no ``test.npz``: the workflow carves it).
- ``shapes24``: 24x24 RGB, 10 classes of filled/outlined geometric shapes (circle, ring, square,
  frame, triangle, cross, plus, star, diamond, bars) in one of three bright colours on a dark background,
  random size/position, rotation within +-15 degrees, pixel noise; 1,000 images in ``train.npz`` [N, 24, 24, 3].

Usage::

    python benchmarks/datasets.py glyphs16 /tmp/gen/glyphs16      # or digits28, shapes24, all <root>
    snakemake --profile profiles/local --config run=glyphs16 'data={name: imagefolder, root: /tmp/gen/glyphs16}'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["GENERATORS", "Spec", "glyphs16", "digits28", "shapes24", "write"]

GLYPHS = "ACEHKMPRTX"
PALETTE = np.array([[255, 230, 80], [90, 220, 255], [255, 120, 200]])
SHAPES = ["circle", "ring", "square", "frame", "triangle", "cross", "plus", "star", "diamond", "bars"]


@dataclass(frozen=True)
class Spec:
    """One generated data set: images uint8 ``[N, H, W]`` or ``[N, H, W, 3]``, labels int64 ``[N]``."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    layout: str  # "imagefolder" or "npz": how ``write`` stores it


def _balanced(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels, each class ``n // k`` or one more, shuffled."""
    return rng.permutation(np.arange(n) % k).astype(np.int64)


def _noise_u8(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.rint(x + rng.normal(0.0, sigma, x.shape)), 0, 255).astype(np.uint8)


def glyphs16(n: int = 1500, seed: int = 0) -> Spec:
    """16x16 grey letters (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = _balanced(n, len(GLYPHS), rng)
    s = 4  # supersampling factor: draw at 64x64, box-filter to 16x16 (anti-aliasing)
    fonts = {size: ImageFont.load_default(size=size) for size in range(40, 53, 2)}
    out = np.empty((n, 16, 16), np.uint8)
    for i, y in enumerate(labels):
        size = int(rng.choice(list(fonts)))
        stroke = int(rng.integers(0, 3))
        bg, fg = (float(rng.uniform(0, 50)), float(rng.uniform(190, 255)))
        canvas = Image.new("L", (16 * s, 16 * s), 0)
        d = ImageDraw.Draw(canvas)
        # centre the glyph's ink box, then shift it; rotation about the canvas centre
        x0, y0, x1, y1 = d.textbbox((0, 0), GLYPHS[y], font=fonts[size], stroke_width=stroke)
        cx, cy = (16 * s - (x1 - x0)) / 2 - x0, (16 * s - (y1 - y0)) / 2 - y0
        dx, dy = rng.uniform(-1.0, 1.0, 2) * s
        d.text((cx + dx, cy + dy), GLYPHS[y], fill=255, font=fonts[size], stroke_width=stroke, stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
        ink = np.asarray(canvas.resize((16, 16), Image.BOX), np.float64) / 255.0
        out[i] = _noise_u8(bg + (fg - bg) * ink, 12.0, rng)
    return Spec(out, labels, list(GLYPHS), "imagefolder")


def _smooth_field(shape: tuple[int, int], sigma: float, alpha: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return alpha * gaussian_filter(rng.uniform(-1, 1, shape), sigma, mode="constant")


def digits28(n: int = 3000, seed: int = 0) -> Spec:
    """28x28 grey transformed digits (see the module docstring)."""
    from scipy.ndimage import map_coordinates
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    d = load_digits()
    src = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((20, 20), Image.BICUBIC),
                               np.float64) for im in d.images])
    by_class = [np.flatnonzero(d.target == k) for k in range(10)]
    labels = _balanced(n, 10, rng)
    canvas = np.zeros((28, 28))
    yy, xx = np.meshgrid(np.arange(28, dtype=np.float64), np.arange(28, dtype=np.float64), indexing="ij")
    out = np.empty((n, 28, 28), np.uint8)
    for i, y in enumerate(labels):
        canvas[:] = 0.0
        canvas[4:24, 4:24] = src[rng.choice(by_class[y])]
        # output pixel p samples the source at c + A (p - c - t) + elastic displacement
        th, sh = np.deg2rad(rng.uniform(-12, 12)), rng.uniform(-0.15, 0.15)
        sx, sy = rng.uniform(0.9, 1.1, 2)
        a = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) @ np.array([[1.0, sh], [0.0, 1.0]])
        a = np.linalg.inv(a @ np.diag([sy, sx]))
        ty, tx = rng.uniform(-1.5, 1.5, 2)
        py, px = yy - 13.5 - ty, xx - 13.5 - tx
        sy_, sx_ = a[0, 0] * py + a[0, 1] * px + 13.5, a[1, 0] * py + a[1, 1] * px + 13.5
        sy_ = sy_ + _smooth_field((28, 28), 4.0, 15.0, rng)
        sx_ = sx_ + _smooth_field((28, 28), 4.0, 15.0, rng)
        warped = map_coordinates(canvas, [sy_, sx_], order=1, mode="constant", cval=0.0)
        out[i] = _noise_u8(warped * rng.uniform(0.7, 1.0), 10.0, rng)
    return Spec(out, labels, [str(k) for k in range(10)], "npz")


def _shape_polygon(kind: str, r: float) -> list[list[tuple[float, float]]]:
    """Polygons (unit-centred, radius ``r``) that make up shape ``kind``; [] for circle/ring."""
    def reg(m: int, rad: float, phase: float = 0.0) -> list[tuple[float, float]]:
        return [(rad * math.cos(phase + 2 * math.pi * j / m), rad * math.sin(phase + 2 * math.pi * j / m))
                for j in range(m)]
    w = r * 0.35
    if kind == "square":
        return [reg(4, r, math.pi / 4)]
    if kind == "triangle":
        return [reg(3, r, -math.pi / 2)]
    if kind == "diamond":
        return [[(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]]
    if kind == "star":
        return [[p for j in range(5) for p in (reg(5, r, -math.pi / 2)[j], reg(5, 0.4 * r, -math.pi / 2 + math.pi / 5)[j])]]
    if kind == "plus":
        return [[(-w, -r), (w, -r), (w, r), (-w, r)], [(-r, -w), (r, -w), (r, w), (-r, w)]]
    if kind == "cross":
        c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
        bars = [[(-w, -r), (w, -r), (w, r), (-w, r)], [(-r, -w), (r, -w), (r, w), (-r, w)]]
        return [[(x * c - y * s, x * s + y * c) for x, y in bar] for bar in bars]
    if kind == "bars":
        return [[(-r, y0 - 0.15 * r), (r, y0 - 0.15 * r), (r, y0 + 0.15 * r), (-r, y0 + 0.15 * r)]
                for y0 in (-0.6 * r, 0.0, 0.6 * r)]
    return []


def shapes24(n: int = 1000, seed: int = 0) -> Spec:
    """24x24 RGB shapes (see the module docstring)."""
    rng = np.random.default_rng(seed)
    labels = _balanced(n, len(SHAPES), rng)
    s = 4
    out = np.empty((n, 24, 24, 3), np.uint8)
    for i, y in enumerate(labels):
        kind = SHAPES[y]
        # a dark background and one of three bright foreground colours: colour is a nuisance, not the class
        bg = tuple(int(v) for v in rng.integers(0, 60, 3))
        fg = tuple(int(v) for v in PALETTE[int(rng.integers(len(PALETTE)))] - rng.integers(0, 40, 3))
        im = Image.new("RGB", (24 * s, 24 * s), bg)
        d = ImageDraw.Draw(im)
        r = float(rng.uniform(7.0, 9.5)) * s
        cx, cy = (12 + rng.uniform(-1.5, 1.5, 2)) * s
        # +-15 degrees: a free rotation would turn plus into cross and square into a tilted frame's twin
        th = float(rng.uniform(-0.26, 0.26))
        if kind in ("circle", "ring"):
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg if kind == "circle" else None, outline=fg,
                      width=int(0.35 * r) if kind == "ring" else 1)
        elif kind == "frame":
            d.regular_polygon((cx, cy, r), 4, rotation=float(np.rad2deg(th)), fill=None, outline=fg,
                              width=int(0.3 * r))
        else:
            c, sn = math.cos(th), math.sin(th)
            for poly in _shape_polygon(kind, r):
                d.polygon([(cx + x * c - yv * sn, cy + x * sn + yv * c) for x, yv in poly], fill=fg)
        x = np.asarray(im.resize((24, 24), Image.BOX), np.float64)
        out[i] = _noise_u8(x, 10.0, rng)
    return Spec(out, labels, list(SHAPES), "npz")


GENERATORS: dict[str, Callable[..., Spec]] = {"glyphs16": glyphs16, "digits28": digits28, "shapes24": shapes24}


def write(spec: Spec, root: str | Path) -> Path:
    """Store ``spec`` under ``root`` in its layout (``train.npz`` or ``train/<class>/<i>.png``)."""
    root = Path(root)
    if (root / "train.npz").exists() or (root / "train").exists():
        raise FileExistsError(f"{root}: already holds a data set (train.npz or train/); remove it or choose another root")
    root.mkdir(parents=True, exist_ok=True)
    if spec.layout == "npz":
        tmp = root / "train.tmp.npz"
        np.savez(tmp, images=spec.images, labels=spec.labels, class_names=np.array(spec.class_names))
        tmp.replace(root / "train.npz")
    else:
        tmp = root / "train.tmp"
        for k, name in enumerate(spec.class_names):
            (tmp / name).mkdir(parents=True, exist_ok=True)
        for i, (x, y) in enumerate(zip(spec.images, spec.labels)):
            Image.fromarray(x).save(tmp / spec.class_names[y] / f"{i:05d}.png")
        tmp.replace(root / "train")
    (root / "generator.json").write_text(json.dumps(
        {"shape": list(spec.images.shape[1:]), "count": int(len(spec.labels)), "classes": spec.class_names,
         "layout": spec.layout}) + "\n")
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=[*GENERATORS, "all"])
    p.add_argument("root", help="folder to write (for 'all': the parent of one folder per data set)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    names = list(GENERATORS) if a.name == "all" else [a.name]
    for name in names:
        root = Path(a.root) / name if a.name == "all" else Path(a.root)
        spec = GENERATORS[name](seed=a.seed)
        write(spec, root)
        print(f"{name}: {len(spec.labels)} images {spec.images.shape[1:]} -> {root} ({spec.layout})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
