"""Held-out images with their human captions only (generated captions would inflate the figures)."""

from __future__ import annotations

from pathlib import Path

import torch

from clip_models.preprocess import decode_uint8, resize_center_crop
from training.evaluate import EvalSet
from wds_tools.reader import SkipLog, decode_sample, iter_shard
from wds_tools.urls import expand_urls


def load_split(folder: str | Path, *, size: int, sources: tuple[str, ...] | None = ("original",)) -> EvalSet:
    """Images (uint8, centre-resized) of a shard folder with the captions whose source is in
    ``sources`` (meta["caption_sources"]); ``None`` keeps every caption."""
    skips = SkipLog()
    images, captions, classes = [], [], []
    for url in expand_urls([str(folder)]):
        for raw in iter_shard(url, skips=skips):
            s = decode_sample(raw, image=decode_uint8, skips=skips)
            if s is None or "jpg" not in s:
                continue
            meta = s.get("json") or {}
            caps = list(meta.get("captions") or [s.get("txt")])
            srcs = list(meta.get("caption_sources") or ["original"] * len(caps))
            keep = [c for c, src in zip(caps, srcs) if sources is None or src in sources]
            if not keep:
                skips.add("no_human_caption", raw["__key__"], url)
                continue
            images.append(resize_center_crop(s["jpg"], size))
            captions.append(keep)
            classes.append(meta.get("class"))
    if not images:
        raise ValueError(f"no samples with {sources} captions in {folder}")
    return EvalSet(images=torch.stack(images), captions=captions, classes=classes, skipped=skips.as_dict())
