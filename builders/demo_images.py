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

The ``hard`` set (``--set hard``) adds five classes that share colours and textures with the
five above, and draws every tile with a random exposure, contrast and colour cast
(``variation``), so neither the mean colour nor the texture alone names the class:

- ``river``: a winding band of water across grass and soil (water and land, like ``beach``).
- ``meadow``: smooth light-green grass with a few scattered trees (green, like ``forest``).
- ``parking_lot``: asphalt with painted bays and rows of cars (grey grid, like ``urban``).
- ``desert``: sand dunes in parallel ripples (sand, like ``beach``).
- ``residential``: small houses on lawns along a coarse road grid (roofs, like ``urban``).

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
HARD_CLASSES = CLASSES + ("river", "meadow", "parking_lot", "desert", "residential")
# name -> (classes, variation): what ``--set`` draws
SETS = {"basic": (CLASSES, 0.0), "hard": (HARD_CLASSES, 1.0)}
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
    roofs = [(170, 170, 168), (225, 225, 220), (165, 85, 60), (95, 95, 100)]
    return _road_grid(_fill(size, (120, 120, 118)), rng, block=max(size // 4, 8), road=max(size // 16, 2),
                      roofs=roofs, houses=2, side=(4, 2), road_rgb=(70, 70, 72))


def _road_grid(img: np.ndarray, rng, *, block: int, road: int, roofs: list, houses: int | tuple[int, int],
               side: tuple[int, int], road_rgb: tuple[int, int, int]) -> np.ndarray:
    """Roofs in every ``block`` x ``block`` cell of a road grid: ``houses`` per cell (an int, or a
    [lo, hi) range drawn per cell), each side between block // side[0] and block // side[1]."""
    size = img.shape[0]
    for by in range(0, size, block):
        for bx in range(0, size, block):
            n = houses if isinstance(houses, int) else int(rng.integers(*houses))
            for _ in range(n):
                w, h = rng.integers(block // side[0], block // side[1] + 1, size=2)
                x = bx + road + int(rng.integers(0, max(block - road - w, 1)))
                y = by + road + int(rng.integers(0, max(block - road - h, 1)))
                img[y:y + h, x:x + w] = roofs[int(rng.integers(len(roofs)))]
        img[by:by + road, :] = road_rgb
    for bx in range(0, size, block):
        img[:, bx:bx + road] = road_rgb
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


def draw_river(rng, size):
    img = draw_meadow(rng, size, trees=0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    across, along = (yy, xx) if rng.random() < 0.5 else (xx, yy)
    centre = 0.5 + 0.18 * np.sin(along * 2 * np.pi * rng.uniform(0.6, 1.4) + rng.uniform(0, 6))
    width = rng.uniform(0.07, 0.14)
    bank = np.abs(across - centre) < width + 0.03
    img[bank] = (120, 105, 75)  # a muddy bank either side of the water
    wet = np.abs(across - centre) < width
    img[wet] = draw_water(rng, size)[wet]
    return img


def draw_meadow(rng, size, trees: int | None = None):
    img = _fill(size, (110, 150, 70))
    img += (_smooth_noise(rng, size, 3)[..., None] - 0.5) * np.array([40, 40, 25], np.float32)
    img += (_smooth_noise(rng, size, max(size // 4, 2))[..., None] - 0.5) * 12
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(2, 7)) if trees is None else trees):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.03, 0.06) * size
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (30, 62, 30)
    return img


def draw_parking_lot(rng, size):
    img = _fill(size, (88, 88, 90)) + (_smooth_noise(rng, size, 4)[..., None] - 0.5) * 10
    bay = max(size // 16, 3)
    row = max(size // 5, 8)
    cars = [(200, 30, 30), (230, 230, 230), (30, 30, 35), (40, 70, 160), (170, 170, 175)]
    for top in range(bay, size - 2 * bay, row):
        img[top:top + 1, :] = (235, 235, 225)  # the painted line between two rows of bays
        for x in range(0, size - bay, bay):
            img[top:top + 2 * bay, x:x + 1] = (235, 235, 225)
            if rng.random() < 0.7:
                img[top + 2:top + 2 * bay - 1, x + 1:x + bay - 1] = cars[int(rng.integers(len(cars)))]
    return img


def draw_desert(rng, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, np.pi)
    warp = _smooth_noise(rng, size, 3) * rng.uniform(0.5, 1.5)
    phase = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(4, 9) + warp
    ridges = (np.sin(phase * 2 * np.pi) + 1) / 2
    return _fill(size, (200, 170, 120)) + (ridges[..., None] - 0.5) * np.array([50, 45, 35], np.float32)


def draw_residential(rng, size):
    img = draw_meadow(rng, size, trees=int(rng.integers(3, 9)))
    roofs = [(165, 85, 60), (140, 60, 50), (120, 120, 125), (200, 190, 170)]
    return _road_grid(img, rng, block=max(size // 3, 10), road=max(size // 20, 2), roofs=roofs,
                      houses=(2, 5), side=(6, 3), road_rgb=(105, 105, 105))


def _vary(arr: np.ndarray, rng: np.random.Generator, variation: float) -> np.ndarray:
    """Exposure, contrast and colour cast of one tile (different sensors, light, haze)."""
    if variation <= 0:
        return arr
    mean = arr.mean(axis=(0, 1), keepdims=True)
    contrast = 1 + variation * rng.uniform(-0.35, 0.25)
    exposure = 1 + variation * rng.uniform(-0.3, 0.3)
    cast = variation * rng.uniform(-18, 18, size=3).astype(np.float32)
    return (mean + (arr - mean) * contrast) * exposure + cast


_DRAW = {"water": draw_water, "forest": draw_forest, "urban": draw_urban, "river": draw_river,
         "meadow": draw_meadow, "parking_lot": draw_parking_lot, "desert": draw_desert,
         "residential": draw_residential}


def draw_tile(cls: str, index: int, *, size: int = 64, seed: int = 0, variation: float = 0.0) -> Image.Image:
    """One tile of class ``cls``; ``index`` picks the variant (and the beach's water side);
    ``variation`` in [0, 1] scales the random exposure, contrast and colour cast."""
    if cls not in HARD_CLASSES:
        raise ValueError(f"unknown demo class {cls!r}; choose from {HARD_CLASSES}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"tile size must be in {MIN_SIZE}..{MAX_SIZE} px, got {size}")
    if not 0.0 <= variation <= 1.0:
        raise ValueError(f"variation must be in [0, 1], got {variation}")
    rng = _rng(seed, cls, index)
    if cls == "beach":
        arr = draw_beach(rng, size, WATER_SIDES[index % len(WATER_SIDES)])
    elif cls == "farmland":
        arr = draw_farmland(rng, size, POND_QUADRANTS[index % len(POND_QUADRANTS)])
    else:
        arr = _DRAW[cls](rng, size)
    arr = arr + rng.normal(0, 3 + 3 * variation, arr.shape[:2])[..., None]
    arr = _vary(arr, _rng(seed, cls, index, "vary"), variation)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_demo_tree(out_dir: str | Path, *, per_class: int = 4, size: int = 64, seed: int = 0,
                   classes: tuple[str, ...] = CLASSES, variation: float = 0.0) -> Path:
    """Write ``out_dir/<class>/<class>_<i>.png`` tiles and return ``out_dir`` (see :func:`draw_tile`)."""
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
            draw_tile(cls, i, size=size, seed=seed, variation=variation).save(tmp, format="PNG")
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
    ap.add_argument("--set", choices=sorted(SETS), default="basic",
                    help="basic: 5 plain classes; hard: 10 classes that share colours, with varied exposure")
    args = ap.parse_args(argv)
    classes, variation = SETS[args.set]
    # a bad value or an output path that is a file: one line and exit status 2 (run_main)
    out = make_demo_tree(args.output, per_class=args.per_class, size=args.size, seed=args.seed,
                         classes=classes, variation=variation)
    print(f"wrote {args.per_class * len(classes)} tiles under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
