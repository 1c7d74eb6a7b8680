"""M2B ("mask to box"): find land-cover regions in an aerial RGB tile with plain numpy.

Every pixel gets a colour class from chromaticity margins (green leads -> vegetation, blue
leads and smooth -> water, warm and bright -> sand, warm -> bare soil, very dark -> shadow,
otherwise grey). Grey pixels are split into ``urban`` (busy, many edges: roofs, cars) and ``road``
(smooth pavement) by the local density of Sobel/Laplacian edges. The tile is cut into a
``grid x grid`` lattice; a label that covers at least ``min_cell_fraction`` of a cell claims the
cell, and 4-connected cells claiming the same label merge into one region. A region's box is the
robust (percentile) extent of its label's pixels inside its cells, so a lower-half lake gets a
box starting at y = 0.5, not at the cell edge.

Everything is vectorised; a 256 px tile takes a few milliseconds.
"""
from __future__ import annotations

import numpy as np

LABELS = ("water", "vegetation", "urban", "road", "bare soil", "sand", "shadow")
_UNLABELLED = -1


def _box_mean(a: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window via an integral image, edge-padded."""
    k = 2 * radius + 1
    p = np.pad(a, radius + 1, mode="edge").astype(np.float64)
    ii = p.cumsum(0).cumsum(1)
    s = ii[k:, k:] - ii[:-k, k:] - ii[k:, :-k] + ii[:-k, :-k]
    return (s[: a.shape[0], : a.shape[1]] / (k * k)).astype(np.float32)


def edge_map(gray: np.ndarray) -> np.ndarray:
    """Edge strength in [0, ~1]: Sobel gradient magnitude plus |Laplacian|, gray in [0, 1]."""
    p = np.pad(gray, 1, mode="edge")
    tl, tc, tr = p[:-2, :-2], p[:-2, 1:-1], p[:-2, 2:]
    ml, mc, mr = p[1:-1, :-2], p[1:-1, 1:-1], p[1:-1, 2:]
    bl, bc, br = p[2:, :-2], p[2:, 1:-1], p[2:, 2:]
    gx = (tr + 2 * mr + br) - (tl + 2 * ml + bl)
    gy = (bl + 2 * bc + br) - (tl + 2 * tc + tr)
    lap = tc + bc + ml + mr - 4 * mc
    return np.sqrt(gx * gx + gy * gy) / 4.0 + np.abs(lap) / 4.0


def classify_pixels(rgb: np.ndarray, *, edge_radius: int = 3,
                    urban_edge_threshold: float = 0.09) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel label index into LABELS (-1: no-data) and the local edge density map."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8 HxWx3 RGB, got dtype={rgb.dtype} shape={rgb.shape}")
    x = rgb.astype(np.float32) / 255.0
    # Contiguous channel planes: reductions over the last axis of HxWx3 are strided and slow.
    r, g, b = (np.ascontiguousarray(x[..., i]) for i in range(3))
    val = np.maximum(np.maximum(r, g), b)
    total = np.maximum(r + g + b, 1e-3)
    # Chromaticity differences: aerial colours are muted (a forest is only a few percent
    # greener than grey), so small, brightness-independent margins separate the classes.
    gr, gb, br = (g - r) / total, (g - b) / total, (b - r) / total
    warm = (r - b) / total
    gray = 0.299 * r + 0.587 * g + 0.114 * b
    density = _box_mean(edge_map(gray), edge_radius)

    lab = np.full(rgb.shape[:2], _UNLABELLED, dtype=np.int8)
    # Order matters: later rules only fill pixels still unlabelled.
    busy = density >= urban_edge_threshold
    conds = [
        (LABELS.index("shadow"), val < 0.12),
        (LABELS.index("vegetation"), (gr >= 0.02) & (gb >= -0.005)),
        # Water is blue-to-teal (green not below red: purple-grey asphalt is not water) and
        # smooth; busy bluish pixels are canopy shadows, cars or roofs unless strongly blue
        # and not dark (dark pixels have noisy chromaticity).
        (LABELS.index("water"), (br >= 0.035) & (b >= g * 0.98) & (g >= r * 0.97)
         & (~busy | ((br >= 0.12) & (val >= 0.3)))),
        # Bright and a little warm; pale concrete is barely warm, so the margin stays above it.
        (LABELS.index("sand"), (warm >= 0.02) & (warm < 0.15) & (val >= 0.70) & (g >= b)),
        (LABELS.index("bare soil"), (warm >= 0.03) & (g < r * 1.02)),
        # Dark, busy and greener than red: canopy with its own shadows.
        (LABELS.index("vegetation"), busy & (((gr >= 0.01) & (g >= b)) | ((val < 0.35) & (g > r * 1.03)))),
        (LABELS.index("urban"), busy),
        (LABELS.index("road"), ~busy),
    ]
    for idx, cond in conds:
        lab[(lab == _UNLABELLED) & cond] = idx
    # Pure black is no-data (rotated-tile borders); its sharp edge would also fake texture
    # in the pixels next to it, so those stay unlabelled too.
    chroma = val - np.minimum(np.minimum(r, g), b)
    nodata = (val < 0.04) | ((val < 0.2) & (chroma < 0.04) & (density < 0.01))
    if nodata.any():
        lab[_box_mean(nodata.astype(np.float32), edge_radius + 1) > 0] = _UNLABELLED
    return lab, density


def _components(claims: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of True cells in a small boolean grid (row-major order)."""
    seen = np.zeros_like(claims, dtype=bool)
    comps = []
    rows, cols = claims.shape
    for r0 in range(rows):
        for c0 in range(cols):
            if not claims[r0, c0] or seen[r0, c0]:
                continue
            stack, comp = [(r0, c0)], []
            seen[r0, c0] = True
            while stack:
                r, c = stack.pop()
                comp.append((r, c))
                for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if 0 <= rr < rows and 0 <= cc < cols and claims[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            comps.append(sorted(comp))
    return comps


def _cell_edges(n: int, grid: int) -> np.ndarray:
    return np.linspace(0, n, grid + 1).round().astype(int)


def detect_regions(rgb: np.ndarray, *, grid: int = 3, **kw) -> list[dict]:
    """Find labelled regions in ``rgb`` (uint8 HxWx3); see :func:`analyse` for the fields."""
    return analyse(rgb, grid=grid, **kw)[0]


def analyse(rgb: np.ndarray, *, grid: int = 3, min_cell_fraction: float = 0.25,
            min_area: float = 0.02, ignore: tuple[str, ...] = ("shadow",),
            edge_radius: int = 3, urban_edge_threshold: float = 0.09
            ) -> tuple[list[dict], dict[str, float]]:
    """Regions of ``rgb`` (uint8 HxWx3) and whole-image label shares, from one pixel pass.

    Returns (regions, fractions). Regions are dicts ``{"box": [x0, y0, x1, y1] (0..1),
    "label", "score", "source": "m2b", "area", "cell": [row, col], "cells": [[row, col], ...],
    "edge_density"}`` sorted by area, largest first. ``score`` is the mean share of the label in the
    region's cells; ``area`` the share of the whole image covered by the label inside the region;
    ``cell`` the grid cell holding the region's pixel centroid.
    """
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    lab, density = classify_pixels(rgb, edge_radius=edge_radius,
                                   urban_edge_threshold=urban_edge_threshold)
    h, w = lab.shape
    ys, xs = _cell_edges(h, grid), _cell_edges(w, grid)
    n_labels = len(LABELS)
    # Cell x label fractions, vectorised per cell with bincount.
    frac = np.zeros((grid, grid, n_labels), dtype=np.float32)
    for r in range(grid):
        for c in range(grid):
            cell = lab[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].ravel()
            counts = np.bincount(cell[cell >= 0].astype(np.int64), minlength=n_labels)
            frac[r, c] = counts / max(cell.size, 1)
    regions = []
    for li, label in enumerate(LABELS):
        if label in ignore:
            continue
        for comp in _components(frac[:, :, li] >= min_cell_fraction):
            cell_mask = np.zeros((h, w), dtype=bool)
            for r, c in comp:
                cell_mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = True
            mask = cell_mask & (lab == li)
            n = int(mask.sum())
            area = n / float(h * w)
            if area < min_area:
                continue
            py, px = np.nonzero(mask)
            x0, x1 = np.percentile(px, [1, 99])
            y0, y1 = np.percentile(py, [1, 99])
            cy, cx = py.mean(), px.mean()
            cell_rc = [int(np.searchsorted(ys, cy, side="right") - 1),
                       int(np.searchsorted(xs, cx, side="right") - 1)]
            regions.append({
                "box": [round(float(x0) / w, 4), round(float(y0) / h, 4),
                        round(float(x1 + 1) / w, 4), round(float(y1 + 1) / h, 4)],
                "label": label,
                "score": round(float(np.mean([frac[r, c, li] for r, c in comp])), 4),
                "source": "m2b",
                "area": round(area, 4),
                "cell": [min(cell_rc[0], grid - 1), min(cell_rc[1], grid - 1)],
                "cells": [[r, c] for r, c in comp],
                "edge_density": round(float(density[mask].mean()), 4),
            })
    regions.sort(key=lambda d: -d["area"])
    valid = lab[lab >= 0].astype(np.int64)
    total = np.bincount(valid, minlength=n_labels) / float(max(valid.size, 1))
    return regions, {name: float(total[i]) for i, name in enumerate(LABELS)}


def label_fractions(rgb: np.ndarray, **kw) -> dict[str, float]:
    """Share of the valid (not no-data) pixels per label, for scene typing."""
    return analyse(rgb, **kw)[1]
