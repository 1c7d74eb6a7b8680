"""Deterministic input -> shard mapping that mixes classes and spreads a source's variants.

Items get a key from their relative path and a split (from the input, else from a hash of the
key and the configured fractions). Within a split, keys are ordered by a **seeded permutation**:
``sha256(f"{seed}:shard-order:{key}")``, so shards mix classes even when keys (which begin with
the class folder) or the input file are sorted by class. The order depends on the key set and the
seed only, never on the input order. ``order="sorted"`` keeps the old key-sorted layout.

Consecutive runs of ``images_per_shard`` keys of that order are the *owners* of unit i of split s,
written to ``<output>/<s>/real-<s>-<i:06d>.tar``: the owner writes a source's original (and its
zoom crops, which are cut from the original's regions). A source's augmentations are spread over
``spread`` units: augmentation a goes to slot ``(a + 1) % spread`` and slot k of a source owned by
unit u is unit ``(u + k * step) % n`` with ``step = max(1, n // spread)`` (n units in the split),
so the slots of one source lie far apart. Every unit lists each source it touches once (owned or
*borrowed*) with the augmentation indices it writes, so a unit decodes a source once; the price is
that a source is decoded by up to ``spread`` units. Skips are counted by the owner only.

The same input and config always give the same units, so a rerun writes (or skips) the same
shards; :func:`plan_digest` covers the whole mapping, so a resumed build refuses a changed input.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from builders.common.inputs import SPLITS, SourceItem
from wds_tools.sample import make_key
from wds_tools.writer import shard_name

SHARD_PREFIX = "real"
ORDERS = ("permuted", "sorted")


@dataclass
class Unit:
    """One shard's worth of work: the sources it owns and the augmentations it writes."""

    split: str
    index: int
    items: list[tuple[str, SourceItem]]   # (key, item) owned: original (+ zoom crops), skips counted
    augs: dict[str, tuple[int, ...]] = field(default_factory=dict)   # key -> augmentation indices here
    borrowed: list[tuple[str, SourceItem]] = field(default_factory=list)  # others' sources with augs here

    @property
    def name(self) -> str:
        return shard_name(f"{SHARD_PREFIX}-{self.split}", self.index)

    def path(self, output: str | Path) -> Path:
        return Path(output) / self.split / self.name

    def work(self) -> list[tuple[str, SourceItem, bool, tuple[int, ...]]]:
        """(key, item, owned, augmentation indices) per source this unit decodes, owned first."""
        return ([(k, it, True, self.augs.get(k, ())) for k, it in self.items]
                + [(k, it, False, self.augs[k]) for k, it in self.borrowed])


def item_key(rel: str) -> str:
    """Sample key from a relative path: folders and stem joined, unsafe characters replaced."""
    p = PurePosixPath(rel)
    return make_key(*p.parent.parts, p.stem) if p.parent.parts else make_key(p.stem)


def _unit_hash(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") / 2**64


def hashed_split(key: str, *, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Stable split from a hash of (seed, key)."""
    if val_fraction == 0 and test_fraction == 0:
        return "train"
    h = _unit_hash(f"{seed}:{key}")
    if h < val_fraction:
        return "val"
    if h < val_fraction + test_fraction:
        return "test"
    return "train"


def shard_order(keys, *, seed: int, order: str = "permuted") -> list[str]:
    """The keys of one split in shard order: a seeded permutation (or sorted, ``order="sorted"``)."""
    if order not in ORDERS:
        raise ValueError(f"shard order must be one of {ORDERS}, got {order!r}")
    if order == "sorted":
        return sorted(keys)
    return sorted(keys, key=lambda k: (hashlib.sha256(f"{seed}:shard-order:{k}".encode()).digest(), k))


def _collect(items: list[SourceItem], *, seed: int, val_fraction: float,
             test_fraction: float) -> dict[str, dict[str, SourceItem]]:
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
    return by_split


def _spread_augs(units: list[Unit], *, augmentations: int, spread: int) -> None:
    """Assign every owned source's augmentation indices to units (see module docstring)."""
    n = len(units)
    step = max(1, n // spread)
    for u in units:
        for key, item in u.items:
            for a in range(augmentations):
                target = units[(u.index + ((a + 1) % spread) * step) % n]
                if key not in target.augs:
                    target.augs[key] = ()
                    if target is not u:
                        target.borrowed.append((key, item))
                target.augs[key] += (a,)


def plan_units(items: list[SourceItem], *, images_per_shard: int, seed: int = 0,
               val_fraction: float = 0.0, test_fraction: float = 0.0, order: str = "permuted",
               augmentations: int = 0, spread: int = 1,
               augment_splits: tuple[str, ...] = ("train",)) -> list[Unit]:
    """Split items into units; raises ValueError when two inputs map to one key.

    ``augmentations`` per source (in ``augment_splits`` only) are spread over ``spread`` units.
    """
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")
    if spread < 1:
        raise ValueError(f"spread must be >= 1, got {spread}")
    by_split = _collect(items, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    units = []
    for split in SPLITS:
        keys = shard_order(by_split[split], seed=seed, order=order)
        split_units = [Unit(split=split, index=i // images_per_shard,
                            items=[(k, by_split[split][k]) for k in keys[i:i + images_per_shard]])
                       for i in range(0, len(keys), images_per_shard)]
        if split in augment_splits and augmentations > 0:
            _spread_augs(split_units, augmentations=augmentations, spread=spread)
        units.extend(split_units)
    return units


def plan_digest(units: list[Unit]) -> str:
    """sha256 over every unit's shard name, keys, captions, classes, boxes and augmentation
    assignment: an edited caption file changes it as much as an added image does."""
    h = hashlib.sha256()
    for u in units:
        h.update(f"{u.split}/{u.name}\n".encode())
        for k, it in u.items:
            h.update(json.dumps([k, it.captions, it.cls, it.boxes], sort_keys=True).encode())
        for k, _item, owned, augs in u.work():
            h.update(json.dumps([k, owned, list(augs)]).encode())
    return h.hexdigest()
