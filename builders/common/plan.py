"""Deterministic input -> shard mapping.

Items get a key from their relative path, a split (from the input, else from a hash of the key
and the configured fractions), and are sorted by key within their split. Consecutive runs of
``images_per_shard`` items form units; unit i of split s is written to
``<output>/<s>/real-<s>-<i:06d>.tar``. The same input and config always give the same units, so
a rerun writes (or skips) the same shards.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wds_tools.sample import make_key
from wds_tools.writer import shard_name

from builders.common.inputs import SPLITS, SourceItem

SHARD_PREFIX = "real"


@dataclass
class Unit:
    """One shard's worth of source items."""

    split: str
    index: int
    items: list[tuple[str, SourceItem]]   # (key, item)

    @property
    def name(self) -> str:
        return shard_name(f"{SHARD_PREFIX}-{self.split}", self.index)

    def path(self, output: str | Path) -> Path:
        return Path(output) / self.split / self.name


def item_key(rel: str) -> str:
    """Sample key from a relative path: folders and stem joined, unsafe characters replaced."""
    p = PurePosixPath(rel)
    return make_key(*p.parent.parts, p.stem) if p.parent.parts else make_key(p.stem)


def hashed_split(key: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Stable split from a hash of (seed, key)."""
    if val_fraction == 0 and test_fraction == 0:
        return "train"
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") / 2**64
    if h < val_fraction:
        return "val"
    if h < val_fraction + test_fraction:
        return "test"
    return "train"


def plan_units(items: list[SourceItem], *, images_per_shard: int, seed: int = 0,
               val_fraction: float = 0.0, test_fraction: float = 0.0) -> list[Unit]:
    """Split items into units; raises ValueError when two inputs map to one key."""
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    by_split: dict[str, dict[str, SourceItem]] = {s: {} for s in SPLITS}
    owner: dict[str, str] = {}
    for it in items:
        key = item_key(it.rel)
        if key in owner:
            if owner[key] == it.rel:
                raise ValueError(f"image {it.rel!r} is listed twice; merge its captions into one entry")
            raise ValueError(f"inputs {owner[key]!r} and {it.rel!r} both map to key {key!r}")
        owner[key] = it.rel
        split = it.split or hashed_split(key, seed=seed, val_fraction=val_fraction,
                                         test_fraction=test_fraction)
        by_split[split][key] = it
    units = []
    for split in SPLITS:
        keys = sorted(by_split[split])
        for i in range(0, len(keys), images_per_shard):
            chunk = [(k, by_split[split][k]) for k in keys[i:i + images_per_shard]]
            units.append(Unit(split=split, index=i // images_per_shard, items=chunk))
    return units


def plan_digest(units: list[Unit]) -> str:
    """sha256 over every unit's shard name, keys, captions, classes and boxes: an edited caption
    file changes it as much as an added image does."""
    h = hashlib.sha256()
    for u in units:
        h.update(f"{u.split}/{u.name}\n".encode())
        for k, it in u.items:
            h.update(json.dumps([k, it.captions, it.cls, it.boxes], sort_keys=True).encode())
    return h.hexdigest()
