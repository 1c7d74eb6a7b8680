"""Source readers for the real-set builder and RGB image loading.

Inputs (``read_items``):

- a folder tree of images: class = name of the image's parent folder (None for files directly
  in the root); no captions, the builder adds a class-template caption;
- a Karpathy JSON (RSICD / UCM style): ``images[].filename`` (+ optional ``filepath``),
  ``images[].sentences[].raw``, ``images[].split`` ("restval" counts as train);
- a JSON list of records or a JSONL file: ``{"image", "caption" | "captions", "class",
  "split", "boxes"}``;
- a CSV / TSV with a header: an image column (image/filepath/path/filename/file), caption
  columns (caption, captions, title, or caption_1..caption_N), optional class/label and split.
  Several rows for one image merge their captions in file order.

Relative image paths resolve against ``image_root`` (default: the caption file's folder).
Every caption of an image is kept, in input order.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")
CAPTION_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "restval": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test"}
_IMAGE_COLUMNS = ("image", "filepath", "path", "filename", "file", "image_path")
_CLASS_COLUMNS = ("class", "label", "category")


class UnreadableImage(ValueError):
    """An input image that cannot be decoded; ``reason`` is a short counter name."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason} {detail}".strip())
        self.reason = reason


@dataclass
class SourceItem:
    """One source image and what the input says about it."""

    rel: str                      # path relative to the input root, '/'-separated; key source
    path: str                     # absolute path on disk
    captions: list[str] = field(default_factory=list)
    cls: str | None = None
    split: str | None = None      # None: assigned later from the configured fractions
    boxes: list[dict] = field(default_factory=list)


def normalise_split(value: str | None, *, where: str) -> str | None:
    """Map split spellings onto train/val/test; ValueError naming the value otherwise."""
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: unknown split {value!r}; expected one of "
                         f"{sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[key]


def _blank(ch: str) -> bool:
    # zero-width spaces, joiners and BOMs are format characters (Cf), not whitespace to str.split()
    return ch.isspace() or unicodedata.category(ch) == "Cf"


def clean_text(value: object) -> str:
    """Whitespace runs collapsed to one space, and whitespace and invisible format characters
    (zero-width space U+200B, U+FEFF, ...) cut from both ends: a caption of only those is empty.
    Inner ones stay (a zero-width non-joiner spells Persian words)."""
    text = " ".join(str(value).split())
    start, end = 0, len(text)
    while start < end and _blank(text[start]):
        start += 1
    while end > start and _blank(text[end - 1]):
        end -= 1
    return text[start:end]


def _clean_captions(values) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [c for c in (clean_text(v) for v in values if v is not None) if c]


def _item(root: Path, image: str, *, captions=(), cls=None, split=None, boxes=(),
          where: str) -> SourceItem:
    if not image or not str(image).strip():
        raise ValueError(f"{where}: empty image path")
    p = Path(image)
    path = p if p.is_absolute() else root / p
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = p.as_posix().lstrip("/")
    return SourceItem(rel=rel, path=str(path), captions=_clean_captions(captions),
                      cls=(clean_text(cls) or None) if cls is not None else None,
                      split=normalise_split(split, where=where), boxes=list(boxes or []))


def read_folder(root: str | Path) -> list[SourceItem]:
    """Every image under ``root``, sorted by relative path; the parent folder names the class."""
    root = Path(root)
    items = []
    # os.walk types entries from the directory listing itself: no stat per file, which is most
    # of a scan's time with pathlib on folders of millions of images
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        cls = None if rel_dir == "." else os.path.basename(dirpath)
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                items.append(SourceItem(rel=rel, path=os.path.join(dirpath, name), cls=cls))
    if not items:
        raise ValueError(f"no images with suffixes {IMAGE_SUFFIXES} under {root}")
    items.sort(key=lambda it: it.rel.split("/"))  # path order, as earlier builds planned it
    return items


def read_karpathy(data: dict, root: Path, where: str) -> list[SourceItem]:
    items = []
    for i, img in enumerate(data["images"]):
        name = img.get("filename")
        if not name:
            raise ValueError(f"{where}: images[{i}] has no 'filename'")
        rel = Path(img.get("filepath") or "") / name
        caps = [s.get("raw") or " ".join(s.get("tokens", [])) for s in img.get("sentences", [])]
        items.append(_item(root, rel.as_posix(), captions=caps, cls=img.get("class"),
                           split=img.get("split"), where=f"{where} images[{i}]"))
    return items


def _from_record(rec: dict, root: Path, where: str) -> SourceItem:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
    image = next((rec[k] for k in _IMAGE_COLUMNS if rec.get(k)), None)
    if image is None:
        raise ValueError(f"{where}: no image field; expected one of {_IMAGE_COLUMNS}")
    caps = rec.get("captions", rec.get("caption", rec.get("text")))
    cls = next((rec[k] for k in _CLASS_COLUMNS if rec.get(k) is not None), None)
    return _item(root, image, captions=caps, cls=cls, split=rec.get("split"),
                 boxes=rec.get("boxes"), where=where)


def read_json(path: Path, root: Path) -> list[SourceItem]:
    data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a leading BOM is dropped
    if isinstance(data, dict) and "images" in data:
        return read_karpathy(data, root, str(path))
    if isinstance(data, list):
        return [_from_record(r, root, f"{path} [{i}]") for i, r in enumerate(data)]
    raise ValueError(f"{path}: JSON must be a Karpathy object with 'images' or a list of records")


def read_jsonl(path: Path, root: Path) -> list[SourceItem]:
    items = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: a leading BOM is dropped
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from e
                items.append(_from_record(rec, root, f"{path}:{n}"))
    return items


def read_table(path: Path, root: Path, *, delimiter: str) -> list[SourceItem]:
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM would join the first column name
        reader = csv.DictReader(f, delimiter=delimiter)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        image_col = next((c for c in _IMAGE_COLUMNS if c in cols), None)
        if image_col is None:
            raise ValueError(f"{path}: no image column in header {cols}; "
                             f"expected one of {_IMAGE_COLUMNS}")
        cap_cols = [c for c in cols if c in ("caption", "captions", "title", "text")
                    or c.startswith("caption_")]
        if not cap_cols:
            raise ValueError(f"{path}: no caption column in header {cols}")
        cls_col = next((c for c in _CLASS_COLUMNS if c in cols), None)
        merged: dict[str, SourceItem] = {}
        for n, raw in enumerate(reader, 2):
            row = {(k or "").strip().lower(): (v or "") for k, v in raw.items()}
            caps = [row[c] for c in cap_cols]
            it = _item(root, row[image_col], captions=caps, cls=row.get(cls_col) if cls_col else None,
                       split=row.get("split"), where=f"{path}:{n}")
            prev = merged.get(it.rel)
            if prev is None:
                merged[it.rel] = it
            else:
                prev.captions.extend(it.captions)
                if it.cls and prev.cls and it.cls != prev.cls:
                    raise ValueError(f"{path}:{n}: {it.rel} has classes {prev.cls!r} and {it.cls!r}")
    return list(merged.values())


def read_items(source: str | Path, *, image_root: str | Path | None = None) -> list[SourceItem]:
    """Items from a folder tree or a caption file (see the module docstring)."""
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"input not found: {src}")
    if src.is_dir():
        return read_folder(src)
    root = Path(image_root) if image_root else src.parent
    try:
        return _read_caption_file(src, root)
    except UnicodeDecodeError as e:
        raise ValueError(f"{src} is not UTF-8 text ({_first_bad_byte(src)}); save it as UTF-8") from e


def _first_bad_byte(path: Path) -> str:
    """Where a file stops being UTF-8 (the reader's own offset is relative to its buffer)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return f"byte {data[e.start:e.start + 1]!r} at offset {e.start}, line {line}"
    return "undecodable bytes"


def _read_caption_file(src: Path, root: Path) -> list[SourceItem]:
    suffix = src.suffix.lower()
    if suffix == ".json":
        return read_json(src, root)
    if suffix == ".jsonl":
        return read_jsonl(src, root)
    if suffix in (".csv", ".tsv"):
        return read_table(src, root, delimiter="\t" if suffix == ".tsv" else ",")
    raise ValueError(f"unsupported input {src}: expected a folder or one of {CAPTION_SUFFIXES}")


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale >8-bit data by its 99.9th percentile: 12-bit sensors would read near black at /257."""
    a = arr.astype(np.float32)
    hi = float(np.percentile(a, 99.9)) if a.size else 0.0
    if hi <= 0:
        return np.zeros(a.shape, np.uint8)
    return np.clip(a * (255.0 / hi), 0, 255).astype(np.uint8)


def _high_depth_tiff(path: str) -> np.ndarray | None:
    """Multi-band TIFF with >8 bits per sample, read at full depth (PIL keeps only the top byte)."""
    try:
        import tifffile
    except ImportError:
        return None
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        if page.bitspersample <= 8 or page.samplesperpixel < 3:
            return None
        arr = page.asarray()
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar storage
    return _stretch_to_uint8(arr[..., :3])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: 16-bit/float gray stretched, alpha composited over black."""
    if img.getexif().get(0x0112, 1) != 1:  # orientation tag; transposing copies the image
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img)
        arr8 = arr.astype(np.uint8) if arr.max(initial=0) <= 255 and mode != "F" else _stretch_to_uint8(arr)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas in aerial tiles are no-data; black matches the usual no-data border.
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_rgb(path: str | Path, *, draft_size: int | None = None) -> Image.Image:
    """Decode ``path`` to an RGB image or raise UnreadableImage with a reason."""
    path = str(path)
    try:
        if path.lower().endswith((".tif", ".tiff")):
            arr = _high_depth_tiff(path)
            if arr is not None:
                return Image.fromarray(arr, "RGB")
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                # DCT-domain downscale: decoding a 4k JPEG for a 256 px tile is wasted work.
                im.draft(im.mode, (draft_size, draft_size))
            im.load()
            return to_rgb(im)
    except FileNotFoundError as e:
        raise UnreadableImage(path, "missing_file") from e
    except Image.DecompressionBombError as e:
        raise UnreadableImage(path, "too_large", str(e)) from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, UnreadableImage):
            raise
        raise UnreadableImage(path, "decode_error", f"{type(e).__name__}: {e}") from e
