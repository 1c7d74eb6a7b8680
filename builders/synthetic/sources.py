"""What the synthetic builder reads: the real set's train shards, or images as for builders.real.

Shards (a directory, brace pattern, ``.txt`` URL list or a list of these, as ``wds_tools.urls``
expands them) are refused when they belong to a held-out split: a folder named ``val``/``test``,
a ``dataset.json`` whose ``split`` is not ``train``, a shard named ``*-val-*``/``*-test-*``, or a
sample whose ``json["split"]`` is not ``train`` (checked for the first sample at planning and
for every sample while building). One input shard makes one output shard. By default only the
real originals are used (``kind == "original"``): augmented copies add no content.

Images (a folder tree or caption file) are planned as builders.real plans them, with the same
held-out fractions and seed, and only the train units are used.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

from builders.common.inputs import UnreadableImage, clean_text, load_rgb, read_items
from builders.common.plan import plan_units
from wds_tools.reader import decode_sample, iter_tar_samples
from wds_tools.skips import SkipLog
from wds_tools.urls import expand_urls, open_url
from wds_tools.writer import shard_name

PREFIX = "synthetic"
_HELDOUT_NAME = re.compile(r"(^|[-_])(val|valid|validation|test|dev)([-_]|$)", re.I)


class SplitRefused(ValueError):
    """The input is (or holds) a held-out split: synthetic images must come from train only."""


@dataclass
class SynthUnit:
    """One output shard: an input shard, or a chunk of image items."""

    index: int
    shard: str = ""                               # input shard URL (shard inputs)
    items: list = field(default_factory=list)     # (key, SourceItem) for image inputs
    expected: int = 0                             # source images, for progress and the plan
    split: str = "train"

    @property
    def name(self) -> str:
        return shard_name(f"{PREFIX}-train", self.index)

    def path(self, output: str | Path) -> Path:
        return Path(output) / "train" / self.name

    def __len__(self) -> int:
        return self.expected


def is_shard_input(source: str) -> bool:
    """Shard URLs rather than an image folder or caption file."""
    if source.endswith((".tar", ".txt")) or "{" in source or "://" in source:
        return True
    p = Path(source)
    return p.is_dir() and any(p.glob("*.tar"))


def _refuse(what: str) -> None:
    raise SplitRefused(f"{what}: the synthetic set is made from the real set's train split only; "
                       f"pass its train shards (e.g. shards/real/train)")


def check_train_urls(source: str, urls: list[str]) -> None:
    """Refuse held-out folders, manifests and shard names before any work."""
    for part in PurePosixPath(source.split("://")[-1]).parts:
        if part.lower() in ("val", "valid", "validation", "test", "dev"):
            _refuse(f"input {source!r} is in a {part!r} folder")
    for url in urls:
        stem = url.rsplit("/", 1)[-1][: -len(".tar")]
        if _HELDOUT_NAME.search(stem):
            _refuse(f"shard {url!r} is named for a held-out split")
    for folder in sorted({u.rsplit("/", 1)[0] for u in urls if "/" in u}):
        try:
            with open_url(f"{folder}/dataset.json") as f:
                split = json.loads(f.read()).get("split")
        except (FileNotFoundError, OSError, ValueError):
            continue
        if split not in (None, "train"):
            _refuse(f"{folder}/dataset.json says split={split!r}")


def _stats_fingerprint(url: str) -> str:
    try:
        with open_url(url[: -len(".tar")] + ".stats.json") as f:
            st = json.loads(f.read())
        return f"{st.get('sha256')}:{(st.get('by_kind') or {}).get('original', st.get('samples'))}"
    except (FileNotFoundError, OSError, ValueError):
        return ""


def _expected(url: str, originals_only: bool) -> int:
    try:
        with open_url(url[: -len(".tar")] + ".stats.json") as f:
            st = json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return 0
    return int((st.get("by_kind") or {}).get("original", 0) if originals_only else st.get("samples", 0))


def plan_shard_units(source: str, *, originals_only: bool) -> list[SynthUnit]:
    urls = expand_urls(source)
    check_train_urls(source, urls)
    first = next(iter_tar_samples(urls[0]), None)
    if first is not None and "json" in first:
        split = json.loads(first["json"]).get("split")
        if split not in (None, "train"):
            _refuse(f"{urls[0]} holds {split!r} samples ({first['__key__']})")
    return [SynthUnit(index=i, shard=u, expected=_expected(u, originals_only))
            for i, u in enumerate(urls)]


def plan_image_units(source: str, cfg) -> list[SynthUnit]:
    items = read_items(source, image_root=cfg.inputs.image_root or None)
    split = cfg.inputs.heldout_split()  # the real build's (inputs.split_from), or set by hand
    units = plan_units(items, images_per_shard=cfg.inputs.images_per_shard, seed=split.seed,
                       val_fraction=split.val_fraction, test_fraction=split.test_fraction)
    train = [u for u in units if u.split == "train"]
    if not train:
        _refuse(f"input {source!r} has no train images")
    return [SynthUnit(index=u.index, items=u.items, expected=len(u.items)) for u in train]


def plan(cfg) -> list[SynthUnit]:
    """Units for ``cfg.input`` (shards or images)."""
    if is_shard_input(cfg.input):
        return plan_shard_units(cfg.input, originals_only=cfg.inputs.originals_only)
    return plan_image_units(cfg.input, cfg)


def digest(units: list[SynthUnit]) -> str:
    """sha256 over the units' inputs: shard URLs and their recorded hashes, or image keys."""
    h = hashlib.sha256()
    for u in units:
        h.update(f"{u.name}:{u.shard}:{_stats_fingerprint(u.shard) if u.shard else ''}\n".encode())
        for k, it in u.items:
            h.update(json.dumps([k, it.rel, it.captions, it.cls], sort_keys=True).encode())
    return h.hexdigest()


def _m2b_caption(img, size: int) -> str | None:
    """The real builder's layout caption (M2B regions -> B2C) of a source without one."""
    from builders.real.config import M2BConfig
    from builders.real.recipe import m2b_caption

    return m2b_caption(img, SimpleNamespace(m2b=M2BConfig()))[0]


def iter_shard_sources(unit: SynthUnit, cfg, skips: SkipLog) -> Iterator[dict]:
    """Source records of an input shard (train originals by default)."""
    for raw in iter_tar_samples(unit.shard, skips=skips):
        s = decode_sample(raw, skips=skips)
        if s is None:
            continue
        meta = s.get("json") or {}
        if meta.get("split") not in (None, "train"):
            _refuse(f"{unit.shard} holds {meta.get('split')!r} sample {s['__key__']}")
        if meta.get("source", "real") != "real":
            continue
        if cfg.inputs.originals_only and meta.get("kind", "original") != "original":
            continue
        img = next((s[e] for e in ("jpg", "png", "webp", "jpeg") if e in s), None)
        if img is None:
            skips.add("no_image", key=s["__key__"], url=unit.shard)
            continue
        caps = list(meta.get("captions") or ([s["txt"]] if s.get("txt") else []))
        srcs = list(meta.get("caption_sources") or ["original"] * len(caps))
        kept = [i for i, c in enumerate(caps) if clean_text(c)]  # zero-width-only text is no caption
        caps, srcs = [caps[i] for i in kept], [srcs[i] for i in kept if i < len(srcs)]
        b2c = next((c for c, src in zip(caps, srcs) if src == "m2b_b2c"), None)
        yield dict(key=s["__key__"], image=img.convert("RGB"), cls=meta.get("class"),
                   captions=caps, caption_sources=srcs, b2c=b2c or _m2b_caption(img, cfg.size))


def iter_image_sources(unit: SynthUnit, cfg, skips: SkipLog) -> Iterator[dict]:
    """Source records of image items (class-template caption when the input has none)."""
    from builders.real.augment import center_square

    for key, item in unit.items:
        try:
            img = center_square(load_rgb(item.path))
        except UnreadableImage as e:
            skips.add(e.reason, key=key, url=item.path)
            continue
        caps = list(item.captions)
        srcs = ["original"] * len(caps)
        if not caps and item.cls and cfg.inputs.class_caption:
            caps, srcs = [cfg.inputs.class_caption.format(cls=item.cls.replace("_", " "))], ["class_template"]
        yield dict(key=key, image=img, cls=item.cls, captions=caps, caption_sources=srcs,
                   b2c=_m2b_caption(img, cfg.size))
