"""The sample contract every stage reads and writes.

A sample is a group of tar members sharing one ``__key__``:

- ``jpg`` (or ``png``/``webp``): the image;
- ``txt``: the primary caption (what open_clip's own trainer reads);
- ``json``: metadata, see :data:`META_FIELDS`.

A sample may carry several captions: ``txt`` holds ``captions[0]`` and ``json["captions"]`` holds all
of them, with ``json["caption_sources"]`` saying where each came from.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from typing import Any

from PIL import Image

IMAGE_EXTS = ("jpg", "png", "webp")
SOURCES = ("real", "synthetic")
SPLITS = ("train", "val", "test")
# Documented metadata keys; extra keys are allowed and carried through untouched.
META_FIELDS = {
    "source": "'real' or 'synthetic' (required)",
    "captions": "every caption of the sample; txt holds captions[0]",
    "caption_sources": "parallel to captions: 'original', 'm2b_b2c', 'vlm', 'zoom', ...",
    "parent": "key of the sample this one was derived from, or null",
    "class": "class label when known, or null",
    "split": "'train', 'val' or 'test'",
    "kind": "'original', 'augmented', 'zoom_crop', 'generated', ...",
    "aug": "augmentation parameters, or null",
    "boxes": "[{'box': [x0, y0, x1, y1] normalised to 0..1, 'label', 'score', 'source'}]",
}

# Kept in keys: letters and digits of any script (``\w`` is Unicode-aware: str.isalnum() or "_")
# and "-"; every run of anything else (dots, slashes, spaces, punctuation, controls) becomes one
# "-". For ASCII this is exactly the earlier [^A-Za-z0-9_-]+ rule, so ASCII keys never change.
_BAD_KEY_CHARS = re.compile(r"[^\w-]+")
_PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}


def make_key(*parts: str | int) -> str:
    """Join ``parts`` with ``_`` into a key safe for WebDataset (which splits member names at the
    first dot): letters and digits of any script are kept (NFC-normalised, so a decomposed accent
    stays a letter), each run of other characters becomes ``-``."""
    if not parts:
        raise ValueError("make_key needs at least one part")
    key = "_".join(_BAD_KEY_CHARS.sub("-", unicodedata.normalize("NFC", str(p))) for p in parts)
    return check_key(key)


def check_key(key: str) -> str:
    """Return ``key`` unchanged, or raise ``ValueError`` if WebDataset would mangle it."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"sample key must be a non-empty string, got {key!r}")
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} contains '.' or '/'; WebDataset splits member names there")
    return key


def encode_image(img: Image.Image, *, ext: str = "jpg", quality: int = 90) -> bytes:
    """Encode a PIL image once, as ``ext``; JPEG/WebP get ``quality``."""
    if ext not in _PIL_FORMATS:
        raise ValueError(f"image ext {ext!r} not in {IMAGE_EXTS}")
    if ext == "jpg" and img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality} if ext in ("jpg", "webp") else {}
    img.save(buf, format=_PIL_FORMATS[ext], **kwargs)
    return buf.getvalue()


def check_meta(meta: dict) -> dict:
    """Validate the required metadata fields; raise ``ValueError`` naming the bad value."""
    if meta.get("source") not in SOURCES:
        raise ValueError(f"meta['source'] must be one of {SOURCES}, got {meta.get('source')!r}")
    caps, srcs = meta.get("captions"), meta.get("caption_sources")
    if caps is not None and srcs is not None and len(caps) != len(srcs):
        raise ValueError(f"captions ({len(caps)}) and caption_sources ({len(srcs)}) differ in length")
    if meta.get("split") is not None and meta["split"] not in SPLITS:
        raise ValueError(f"meta['split'] must be one of {SPLITS}, got {meta['split']!r}")
    if meta.get("parent") is not None:
        check_key(meta["parent"])
    return meta


def make_sample(
    *,
    key: str,
    image: bytes,
    caption: str,
    meta: dict,
    image_ext: str = "jpg",
    extra: dict[str, bytes] | None = None,
) -> dict:
    """Build the member dict of one sample, ready for :class:`wds_tools.writer.ShardWriter`."""
    check_key(key)
    if image_ext not in IMAGE_EXTS:
        raise ValueError(f"image_ext {image_ext!r} not in {IMAGE_EXTS}")
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise ValueError(f"sample {key!r}: image must be non-empty bytes")
    if not isinstance(caption, str):
        raise ValueError(f"sample {key!r}: caption must be str, got {type(caption).__name__}")
    meta = dict(meta)
    meta.setdefault("captions", [caption])
    meta.setdefault("caption_sources", ["original"] * len(meta["captions"]))
    check_meta(meta)
    sample = {
        "__key__": key,
        image_ext: bytes(image),
        "txt": caption.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True).encode("utf-8"),
    }
    for ext, value in (extra or {}).items():
        if ext in sample or ext.startswith("__"):
            raise ValueError(f"sample {key!r}: extra member {ext!r} collides with a contract member")
        sample[ext] = value
    return sample


def image_ext_of(sample: dict) -> str | None:
    """The image member's extension in ``sample``, or ``None`` if it has none."""
    for ext in IMAGE_EXTS + ("jpeg",):
        if ext in sample:
            return ext
    return None
