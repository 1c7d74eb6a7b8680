"""Deterministic augmentations for aerial tiles and caption position rewriting.

Each augmentation is one of the seven non-identity elements of the square's symmetry group
(horizontal flip, then ``rot90`` quarter turns counter-clockwise: aerial images have no "up"),
a crop of ``crop_scale`` of the area, and a colour jitter. Parameters depend only on
(seed, key, index) and are recorded in the sample's ``aug`` meta. Position words in captions
("left", "upper right", "north", "horizontal") are rewritten to match the flip and rotation by
``wds_tools.caption_geometry.rewrite_positions``.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
from PIL import Image, ImageEnhance

# The caption rewrite lives with the shared position vocabulary; re-exported for the recipe.
from wds_tools.caption_geometry import rewrite_positions

__all__ = ["apply_aug", "aug_params", "center_square", "resize_square", "rewrite_positions", "rng_for",
           "transform_box"]


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A generator seeded from (seed, parts) via sha256: stable across processes and runs."""
    digest = hashlib.sha256(repr((int(seed), *map(str, parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def center_square(img: Image.Image) -> Image.Image:
    """Largest centred square crop."""
    w, h = img.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    return img.crop((x0, y0, x0 + s, y0 + s))


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Resize a square image to size x size (high-quality downscale, bicubic upscale)."""
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BICUBIC, reducing_gap=3.0)


def aug_params(*, seed: int, key: str, count: int, crop_scale: tuple[float, float] = (0.6, 1.0),
               brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2) -> list[dict]:
    """``count`` parameter dicts for ``key``; geometric elements are distinct while count <= 7."""
    if count < 0:
        raise ValueError(f"augmentation count must be >= 0, got {count}")
    lo, hi = crop_scale
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")
    rng = rng_for(seed, key, "aug")
    elements = (rng.permutation(7) + 1).tolist()
    out = []
    for i in range(count):
        e = elements[i % 7]
        scale = float(rng.uniform(lo, hi))
        side = math.sqrt(scale)
        x0, y0 = (float(v) for v in rng.uniform(0, 1 - side, size=2)) if side < 1 else (0.0, 0.0)
        out.append({
            "flip": bool(e >= 4), "rot90": int(e % 4),
            "crop": [round(x0, 4), round(y0, 4), round(x0 + side, 4), round(y0 + side, 4)],
            "brightness": round(float(rng.uniform(1 - brightness, 1 + brightness)), 4),
            "contrast": round(float(rng.uniform(1 - contrast, 1 + contrast)), 4),
            "saturation": round(float(rng.uniform(1 - saturation, 1 + saturation)), 4),
        })
    return out


def apply_aug(square: Image.Image, params: dict, size: int) -> Image.Image:
    """Apply one parameter dict to a square source image; output is size x size."""
    w, h = square.size
    x0, y0, x1, y1 = params["crop"]
    img = square.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
    img = resize_square(img, size)
    if params["flip"]:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if params["rot90"]:
        img = img.transpose((None, Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[params["rot90"]])
    for enhancer, name in ((ImageEnhance.Brightness, "brightness"),
                           (ImageEnhance.Contrast, "contrast"), (ImageEnhance.Color, "saturation")):
        if params[name] != 1.0:
            img = enhancer(img).enhance(params[name])
    return img


def transform_box(box: list[float], params: dict, *, min_keep: float = 0.3) -> list[float] | None:
    """Map a normalised box through crop, flip and rotation; None when mostly cropped away."""
    cx0, cy0, cx1, cy1 = params["crop"]
    cw, ch = cx1 - cx0, cy1 - cy0
    x0, y0, x1, y1 = box
    area = max(x1 - x0, 0) * max(y1 - y0, 0)
    nx0, ny0 = max((x0 - cx0) / cw, 0.0), max((y0 - cy0) / ch, 0.0)
    nx1, ny1 = min((x1 - cx0) / cw, 1.0), min((y1 - cy0) / ch, 1.0)
    if nx1 <= nx0 or ny1 <= ny0 or (nx1 - nx0) * (ny1 - ny0) * cw * ch < min_keep * area:
        return None
    if params["flip"]:
        nx0, nx1 = 1 - nx1, 1 - nx0
    for _ in range(params["rot90"] % 4):
        # Counter-clockwise quarter turn: (x, y) -> (y, 1 - x).
        nx0, ny0, nx1, ny1 = ny0, 1 - nx1, ny1, 1 - nx0
    return [round(v, 4) for v in (nx0, ny0, nx1, ny1)]
