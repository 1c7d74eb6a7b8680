"""A contact sheet of a built shard: each sample's image, kind, primary and last caption.

The builder writes ``OUT/preview.png`` from the first train shard so a person can check at a
glance that images, augmentations, crops and captions agree.
"""
from __future__ import annotations

import io
import json
import tarfile
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from wds_tools.atomic import atomic_open

_TILE = 160
_TEXT_H = 96


def read_samples(shard: str | Path, limit: int) -> list[tuple[str, Image.Image, dict, str]]:
    """First ``limit`` samples of a local shard as (key, image, meta, caption)."""
    groups: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for m in tar:
            if not m.isfile() or "." not in m.name:
                continue
            key, ext = m.name.split(".", 1)
            if key not in groups and len(groups) == limit:
                break
            groups.setdefault(key, {})[ext] = tar.extractfile(m).read()
    out = []
    for key, g in groups.items():
        ext = next((e for e in ("jpg", "png", "webp") if e in g), None)
        if ext is None or "json" not in g:
            continue
        img = Image.open(io.BytesIO(g[ext])).convert("RGB")
        out.append((key, img, json.loads(g["json"]), g.get("txt", b"").decode("utf-8")))
    return out


def write_preview(shard: str | Path, png: str | Path, *, limit: int = 18, cols: int = 6) -> Path:
    """Render up to ``limit`` samples of ``shard`` into a grid PNG (written atomically)."""
    samples = read_samples(shard, limit)
    rows = max((len(samples) + cols - 1) // cols, 1)
    sheet = Image.new("RGB", (cols * _TILE, rows * (_TILE + _TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (_key, img, meta, caption) in enumerate(samples):
        x, y = (i % cols) * _TILE, (i // cols) * (_TILE + _TEXT_H)
        sheet.paste(img.resize((_TILE - 4, _TILE - 4)), (x + 2, y + 2))
        aug = meta.get("aug") or {}
        tag = meta.get("kind", "?")
        if "rot90" in aug:
            tag += f" flip={int(aug['flip'])} rot={aug['rot90']}"
        lines = [tag] + textwrap.wrap(caption, 30)[:2]
        caps = meta.get("captions") or []
        if len(caps) > 1:  # the last caption is the generated one (M2B/B2C) when there are several
            lines += textwrap.wrap(f"+ {caps[-1]}", 30)[:3]
        draw.multiline_text((x + 3, y + _TILE), "\n".join(lines), fill="black", spacing=1)
    with atomic_open(png, "wb") as f:
        # a photo grid: zlib's default level takes twice as long for a 20% smaller file
        sheet.save(f, format="PNG", compress_level=1)
    return Path(png)
