"""Per-sample preparation of the Stage 2 loader: uint8 decode, the seeded crop and flip, the caption
choice (among the captions the quality record kept) and the class weight.

Every random draw comes from a generator the caller seeds with the sample's stream position, so a
resumed loader prepares each sample exactly as before. A flip rewrites the caption's left/right
and compass words (``wds_tools.caption_geometry.mirror_caption``), as the build-time flip does.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from clip_models.preprocess import decode_uint8, resized_crop
from training.mix import LoaderSpec
from wds_tools.caption_geometry import mirror_caption
from wds_tools.quality_record import kept_caption_indices, sample_captions
from wds_tools.reader import SkipLog, decode_sample
from wds_tools.sample import IMAGE_EXTS

# The key under which the quality stage hands a kept sample's quality record to prepare_sample.
CAPTION_KEEP = "__caption_keep__"
_STREAM_KEYS = ("__pos__", "__resume__", CAPTION_KEEP)


def random_resized_crop(img: torch.Tensor, *, size: int, scale_min: float, hflip: bool,
                        rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
    """Seeded RandomResizedCrop + optional flip on a uint8 CHW tensor; returns (image, flipped)."""
    _, h, w = img.shape
    top, left, ch, cw = 0, 0, min(h, w), min(h, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    for _ in range(10):
        area = h * w * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw_, ch_ = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw_ <= w and 0 < ch_ <= h:
            top, left, ch, cw = int(rng.integers(0, h - ch_ + 1)), int(rng.integers(0, w - cw_ + 1)), ch_, cw_
            break
    out = resized_crop(img, top=top, left=left, height=ch, width=cw, size=size)
    flipped = bool(hflip and rng.random() < 0.5)
    return (out.flip(-1) if flipped else out).contiguous(), flipped


def prepare_sample(raw: dict, *, spec: LoaderSpec, rng: np.random.Generator, skips: SkipLog) -> dict | None:
    """Decode to uint8, crop, caption choice and class weight; None = counted skip.

    The caption is drawn among the captions the quality record kept (all without a record).
    """
    key, url = raw["__key__"], raw.get("__url__")
    sample = decode_sample({k: v for k, v in raw.items() if k not in _STREAM_KEYS},
                           image=decode_uint8, skips=skips, max_pixels=spec.max_image_pixels)
    if sample is None:
        return None
    ext = next((e for e in IMAGE_EXTS + ("jpeg",) if e in sample), None)
    if ext is None:
        skips.add("no_image", key, url)
        return None
    meta = sample.get("json") if isinstance(sample.get("json"), dict) else {}
    primary = sample.get("txt") if isinstance(sample.get("txt"), str) else None
    captions = [c for c, _ in sample_captions(meta, primary)]
    if not captions:
        skips.add("no_caption", key, url)
        return None
    record = raw.get(CAPTION_KEEP)
    if record is not None:
        kept = kept_caption_indices(record, len(captions))
        if not kept:  # None: the record's captions do not line up with the sample's
            skips.add("no_kept_caption" if kept == [] else "quality_captions_mismatch", key, url)
            return None
        primary = primary if primary in (captions[i] for i in kept) else None
        captions = [captions[i] for i in kept]
    caption = captions[int(rng.integers(len(captions)))] if spec.random_caption else (primary or captions[0])
    image, flipped = random_resized_crop(sample[ext], size=spec.image_size, scale_min=spec.crop_scale_min,
                                         hflip=spec.hflip, rng=rng)
    if flipped:
        caption = mirror_caption(caption)
    cls = meta.get("class")
    weight = spec.class_weights.get(str(cls), 1.0) if cls is not None else 1.0
    return {"key": key, "image": image, "caption": caption, "weight": weight, "class": cls,
            "group": source_group(meta, key)}


def source_group(meta: dict, key: str) -> str:
    """The source image a sample was made from: ``json["parent"]``, or its own key (an original)."""
    parent = meta.get("parent")
    return parent if isinstance(parent, str) and parent else key
