"""Procedurally drawn aerial-like tiles in a class-folder tree, for demos and tests.

``python -m builders.demo_images --output DIR --per-class N [--size 64] [--seed 0]`` writes
``DIR/<class>/<class>_<i>.png`` for the classes below. Layouts are known by construction:

- ``water``: rippled blue water over the whole tile.
- ``forest``: dense dark-green tree crowns with shadow gaps.
- ``urban``: grey road grid with rectangular roofs (grey, white, terracotta) between roads.
- ``farmland``: parallel field parcels in greens and browns, with a round farm pond in one
  quadrant, cycled upper left, upper right, lower right, lower left by tile index.
- ``beach``: sand on one side, water on the other, along a wavy shoreline; the water side
  is cycled bottom, right, top, left by tile index.

The content is deterministic from (seed, class, index).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("water", "forest", "urban", "farmland", "beach")
# farmland needs room for three parcel edges 4 px from the sides; above the maximum one tile
# alone would take gigabytes while it is drawn
MIN_SIZE, MAX_SIZE = 16, 4096
WATER_SIDES = ("bottom", "right", "top", "left")


def _rng(seed: int, *parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.random((cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255.0


def _fill(size: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.float32), (size, size, 3)).copy()


def draw_water(rng, size):
    img = _fill(size, (38, 72, 128))
    ripple = _smooth_noise(rng, size, max(size // 6, 2))
    return img + (ripple[..., None] - 0.5) * np.array([14, 20, 30], np.float32)


def draw_forest(rng, size):
    img = _fill(size, (22, 48, 24))
    crowns = _smooth_noise(rng, size, max(size // 3, 2))
    img += crowns[..., None] * np.array([45, 100, 40], np.float32)
    gaps = _smooth_noise(rng, size, max(size // 2, 2)) < 0.2
    img[gaps] *= 0.5
    return img


def draw_urban(rng, size):
    img = _fill(size, (120, 120, 118))
    block = max(size // 4, 8)
    road = max(size // 16, 2)
    roofs = [(170, 170, 168), (225, 225, 220), (165, 85, 60), (95, 95, 100)]
    for by in range(0, size, block):
        for bx in range(0, size, block):
            for _ in range(2):
                w, h = rng.integers(block // 4, block // 2 + 1, size=2)
                x = bx + road + int(rng.integers(0, max(block - road - w, 1)))
                y = by + road + int(rng.integers(0, max(block - road - h, 1)))
                img[y:y + h, x:x + w] = roofs[int(rng.integers(len(roofs)))]
        img[by:by + road, :] = (70, 70, 72)
    for bx in range(0, size, block):
        img[:, bx:bx + road] = (70, 70, 72)
    return img


POND_QUADRANTS = ("upper left", "upper right", "lower right", "lower left")


def draw_farmland(rng, size, pond: str | None = None):
    img = np.zeros((size, size, 3), np.float32)
    palette = [(95, 140, 60), (130, 160, 70), (150, 120, 80), (120, 95, 60)]
    edges = np.sort(rng.choice(np.arange(4, size - 4), size=3, replace=False))
    bounds = [0, *edges.tolist(), size]
    for i in range(len(bounds) - 1):
        img[:, bounds[i]:bounds[i + 1]] = palette[int(rng.integers(len(palette)))]
    rows = (np.arange(size) % 4 < 1)[:, None, None]
    img = img * np.where(rows, 0.9, 1.0)
    if pond is not None:
        # A farm pond centred in one quadrant: a local object for M2B boxes and zoom crops.
        cy = 0.27 if pond.startswith("upper") else 0.73
        cx = 0.27 if pond.endswith("left") else 0.73
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.17 ** 2
        img[inside] = draw_water(rng, size)[inside]
    return img


def draw_beach(rng, size, side: str):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    coord = {"bottom": yy, "top": 1 - yy, "right": xx, "left": 1 - xx}[side]
    along = {"bottom": xx, "top": xx, "right": yy, "left": yy}[side]
    shore = 0.5 + 0.06 * np.sin(along * 2 * np.pi * rng.uniform(1, 2) + rng.uniform(0, 6))
    img = draw_water(rng, size)
    sand = _fill(size, (215, 200, 160)) + (_smooth_noise(rng, size, 8)[..., None] - 0.5) * 16
    land = coord < shore
    img[land] = sand[land]
    return img


def draw_tile(cls: str, index: int, *, size: int = 64, seed: int = 0) -> Image.Image:
    """One tile of class ``cls``; ``index`` picks the variant (and the beach's water side)."""
    if cls not in CLASSES:
        raise ValueError(f"unknown demo class {cls!r}; choose from {CLASSES}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"tile size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    rng = _rng(seed, cls, index)
    if cls == "beach":
        arr = draw_beach(rng, size, WATER_SIDES[index % len(WATER_SIDES)])
    elif cls == "farmland":
        arr = draw_farmland(rng, size, POND_QUADRANTS[index % len(POND_QUADRANTS)])
    else:
        arr = {"water": draw_water, "forest": draw_forest, "urban": draw_urban}[cls](rng, size)
    arr = arr + rng.normal(0, 3, arr.shape[:2])[..., None]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_demo_tree(out_dir: str | Path, *, per_class: int = 4, size: int = 64, seed: int = 0,
                   classes: tuple[str, ...] = CLASSES) -> Path:
    """Write ``out_dir/<class>/<class>_<i>.png`` tiles and return ``out_dir``."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"tile size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a folder path")
    for cls in classes:
        (out / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = out / cls / f"{cls}_{i:03d}.png"
            tmp = path.with_name(path.name + ".tmp-demo")
            draw_tile(cls, i, size=size, seed=seed).save(tmp, format="PNG")
            tmp.replace(path)
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``remoteclip-demo-images``): a user error is one line and exit status 2."""
    from wds_tools.config import prog_name, run_main

    return run_main(_main, argv, prog=prog_name("builders.demo_images"))


def _main(argv: list[str] | None) -> int:
    from wds_tools.config import prog_name

    ap = argparse.ArgumentParser(prog=prog_name("builders.demo_images"),
                                 description="Write a class-folder tree of synthetic aerial tiles.")
    ap.add_argument("--output", required=True)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # a bad value or an output path that is a file: one line and exit status 2 (run_main)
    out = make_demo_tree(args.output, per_class=args.per_class, size=args.size, seed=args.seed)
    print(f"wrote {args.per_class * len(CLASSES)} tiles under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
