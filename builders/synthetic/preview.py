"""Preview of a synthetic shard: per sample the source tile, the mask, the result and the caption.

Source tiles come from the work folder (the upscaled input of each parent), so the sheet shows
exactly what the generator started from.
"""
from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from builders.synthetic.work import unit_work
from wds_tools.atomic import atomic_open
from wds_tools.reader import iter_tar_samples

_TILE = 128
_TEXT_W = 300


def _find_source(work: Path, parent: str) -> Image.Image | None:
    for p in sorted(work.glob(f"chunk-*/upscale/{parent}.png")):
        with Image.open(p) as im:
            return im.convert("RGB")
    return None


def _tile(img: Image.Image | None, label: str) -> Image.Image:
    t = Image.new("RGB", (_TILE, _TILE), (235, 235, 235))
    if img is not None:
        t.paste(img.convert("RGB").resize((_TILE - 4, _TILE - 4)), (2, 2))
    else:
        ImageDraw.Draw(t).text((8, _TILE // 2), label, fill="gray")
    return t


def write_synthetic_preview(shard: str | Path, png: str | Path, *, work_dir: str | Path,
                            limit: int = 8) -> Path:
    """Rows of (source, mask, result, mode + captions + verify) for up to ``limit`` samples."""
    shard = Path(shard)
    work = unit_work(work_dir, shard.name)
    raws = list(iter_tar_samples(str(shard)))
    modes = [json.loads(r["json"])["mode"] for r in raws]
    # one sample of each mode first, so every mode's caption edit is on the sheet
    first = [modes.index(m) for m in dict.fromkeys(modes)]
    order = first + [i for i in range(len(raws)) if i not in first]
    rows = []
    for raw in (raws[i] for i in order[:limit]):
        meta = json.loads(raw["json"])
        ext = next(e for e in ("jpg", "png", "webp") if e in raw)
        result = Image.open(io.BytesIO(raw[ext])).convert("RGB")
        mask = Image.open(io.BytesIO(raw["mask.png"])).convert("RGB") if "mask.png" in raw else None
        rows.append((meta, _find_source(work, meta["parent"]), mask, result))
    height = max(len(rows), 1) * (_TILE + 6)
    sheet = Image.new("RGB", (3 * _TILE + _TEXT_W + 16, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (meta, src, mask, result) in enumerate(rows):
        y = i * (_TILE + 6) + 3
        for j, (img, label) in enumerate(((src, "no source"), (mask, "no mask"), (result, ""))):
            sheet.paste(_tile(img, label), (j * _TILE + 2, y))
        v = meta.get("verify")
        head = f"{meta['mode']}  seed {meta['seed']}"
        if meta.get("label"):
            head += f"  {meta['label']}" + (f" -> {meta['new_label']}" if meta.get("new_label") else "")
        if v:
            head += f"  verify: {'ok' if v['ok'] else 'not ok'}"
        lines = [head]
        for cap, src_name in list(zip(meta["captions"], meta["caption_sources"]))[:2]:
            lines += textwrap.wrap(f"[{src_name}] {cap}", 48)[:4]
        draw.multiline_text((3 * _TILE + 10, y + 2), "\n".join(lines[:9]), fill="black", spacing=2)
    with atomic_open(png, "wb") as f:
        sheet.save(f, format="PNG", compress_level=1)
    return Path(png)
