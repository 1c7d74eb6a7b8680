"""Deterministic augmentations for aerial tiles and caption position rewriting.

Each augmentation is one of the seven non-identity elements of the square's symmetry group
(horizontal flip, then ``rot90`` quarter turns counter-clockwise: aerial images have no "up"),
a crop of ``crop_scale`` of the area, and a colour jitter. Parameters depend only on
(seed, key, index) and are recorded in the sample's ``aug`` meta. Position words in captions
("left", "upper right", "north", "horizontal") are rewritten to match the flip and rotation.
"""
from __future__ import annotations

import hashlib
import math
import re

import numpy as np
from PIL import Image, ImageEnhance


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


# --- caption rewriting ---------------------------------------------------------------------
# Directions as (dx, dy) with x to the right and y downwards (image coordinates).
_FAMILIES = {
    "side": {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)},
    "adj": {"left": (-1, 0), "right": (1, 0), "upper": (0, -1), "lower": (0, 1)},
    "compass": {"west": (-1, 0), "east": (1, 0), "north": (0, -1), "south": (0, 1)},
    "rel": {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, -1), "below": (0, 1)},
}
_WORD_FAMILY = {"left": "side", "right": "side", "top": "side", "bottom": "side",
                "upper": "adj", "lower": "adj", "west": "compass", "east": "compass",
                "north": "compass", "south": "compass", "above": "rel", "below": "rel",
                "to the left of": "rel", "to the right of": "rel"}
_CORNER = re.compile(r"\b(upper|lower|top|bottom|north|south)([ -]?)(left|right|west|east)\b", re.I)
_SINGLE = re.compile(r"\b(to the left of|to the right of|left|right|top|bottom|upper|lower|"
                     r"north|south|east|west|above|below|horizontal|vertical|horizontally|"
                     r"vertically)\b", re.I)
_AXIS = {"horizontal": "vertical", "vertical": "horizontal",
         "horizontally": "vertically", "vertically": "horizontally"}


def _move(vec: tuple[int, int], flip: bool, rot90: int) -> tuple[int, int]:
    dx, dy = vec
    if flip:
        dx = -dx
    for _ in range(rot90 % 4):
        dx, dy = dy, -dx  # a quarter turn counter-clockwise: right -> top -> left -> bottom
    return dx, dy


def _word_for(vec: tuple[int, int], family: str) -> str:
    return next(w for w, v in _FAMILIES[family].items() if v == vec)


def _match_case(new: str, old: str) -> str:
    return new[0].upper() + new[1:] if old[:1].isupper() else new


def rewrite_positions(text: str, *, flip: bool, rot90: int) -> str:
    """Rewrite position words in ``text`` for a horizontal flip followed by ``rot90`` CCW turns."""
    if not flip and rot90 % 4 == 0:
        return text

    def corner(m: re.Match) -> str:
        vert, sep, hor = m.group(1).lower(), m.group(2), m.group(3).lower()
        compass = vert in ("north", "south")
        vfam = "compass" if compass else ("adj" if vert in ("upper", "lower") else "side")
        hfam = "compass" if compass else "side"
        vy = _FAMILIES[vfam][vert][1]
        hx = _FAMILIES["compass" if hor in ("west", "east") else "side"][hor][0]
        nx, ny = _move((hx, 0), flip, rot90)
        mx, my = _move((0, vy), flip, rot90)
        dx, dy = nx + mx, ny + my
        new_v = _word_for((0, dy), vfam)
        new_h = _word_for((dx, 0), hfam)
        return _match_case(f"{new_v}{sep}{new_h}", m.group(0))

    def single(m: re.Match) -> str:
        word = m.group(0).lower()
        if word in _AXIS:
            return _match_case(_AXIS[word] if rot90 % 2 else word, m.group(0))
        fam = _WORD_FAMILY[word]
        new = _word_for(_move(_FAMILIES[fam][word], flip, rot90), fam)
        return _match_case(new, m.group(0))

    # Corners first, protected from the single-word pass by a placeholder.
    corners: list[str] = []

    def stash(m: re.Match) -> str:
        corners.append(corner(m))
        return f"\x00{len(corners) - 1}\x00"

    out = _CORNER.sub(stash, text)
    out = _SINGLE.sub(single, out)
    out = re.sub("\x00(\\d+)\x00", lambda m: corners[int(m.group(1))], out)
    # Sides and ends take different prepositions: "on the left", "at the top".
    out = re.sub(r"\b([Aa])t the (left|right)\b",
                 lambda m: ("On" if m.group(1) == "A" else "on") + f" the {m.group(2)}", out)
    return re.sub(r"\b([Oo])n the (top|bottom)\b",
                  lambda m: ("At" if m.group(1) == "O" else "at") + f" the {m.group(2)}", out)


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
