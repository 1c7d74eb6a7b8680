"""Build one shard unit: decode its images, run the recipe, write the shard atomically.

A unit's skips (unreadable images, images left without a caption) are written to
``<stem>.skips.json`` (only when there are any) inside the shard's atomic window, so a resumed
build still reports them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from builders.common.driver import UnitResult, result_from_disk, skips_path
from builders.common.inputs import UnreadableImage, load_rgb
from builders.common.output import finished_shard
from builders.common.plan import Unit
from builders.real.augment import center_square, resize_square
from builders.real.config import RealBuildConfig
from builders.real.recipe import build_item
from wds_tools.atomic import write_json
from wds_tools.malloc import keep_freed_memory
from wds_tools.skips import SkipLog
from wds_tools.writer import ShardWriter, is_shard_complete

log = logging.getLogger(__name__)


def _vlm_captions(squares: list, cfg: RealBuildConfig) -> list[str | None]:
    if not cfg.vlm.model or not squares:
        return [None] * len(squares)
    from builders.common.vlm_captions import get_captioner  # torch/transformers only when used

    return get_captioner(cfg.vlm).caption(squares)


def _load_squares(unit: Unit, cfg: RealBuildConfig, skips: SkipLog) -> Iterator[tuple]:
    """(key, item, owned, aug indices, centre square) per readable source of ``unit``, each
    decoded once; unreadable ones are counted by their owner unit only."""
    for key, item, owned, augs in unit.work():
        bad = text_problem(item)
        if bad:
            if owned:
                skips.add(bad, key=key, url=item.path)
            continue
        try:
            img = load_rgb(item.path, draft_size=cfg.size)
        except UnreadableImage as e:
            if owned:
                skips.add(e.reason, key=key, url=item.path)
            else:
                log.debug("%s: %s unreadable (counted by its owner shard)", unit.name, key)
            continue
        yield key, item, owned, augs, center_square(img)


def text_problem(item) -> str | None:
    """A skip reason when a caption or the class is not encodable text (a lone surrogate from a
    JSON ``\\udXXX`` escape), which no shard member or metadata file could hold."""
    for reason, texts in (("invalid_caption", item.captions), ("invalid_class", [item.cls or ""])):
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                return reason
    return None


def _groups(items: Iterable, n: int) -> Iterator[list]:
    group: list = []
    for x in items:
        group.append(x)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group


def build_unit(unit: Unit, cfg: RealBuildConfig, output: str) -> UnitResult:
    """Write ``unit``'s shard unless it is already complete (and overwrite is off)."""
    shard = unit.path(output)
    rebuilt = False
    if not cfg.overwrite and is_shard_complete(shard):
        if finished_shard(shard, verify=cfg.verify):
            return result_from_disk(unit, output)
        rebuilt = True
    skips_path(shard).unlink(missing_ok=True)  # counts of a killed earlier attempt
    keep_freed_memory()  # a worker of any executor allocates per image: keep freed pages
    skips = SkipLog()
    # Without a VLM, each image goes decode -> recipe -> shard while it is still in cache; a VLM
    # needs its batch decoded first.
    group_size = max(cfg.vlm.batch_size, 1) if cfg.vlm.model else 1
    with ShardWriter(shard) as w:
        for group in _groups(_load_squares(unit, cfg, skips), group_size):
            vlm = _vlm_captions([resize_square(g[-1], cfg.size) for g in group], cfg)
            for (key, item, owned, augs, square), vcap in zip(group, vlm):
                samples = build_item(key, item, square, unit.split, cfg, vlm_caption=vcap,
                                     owned=owned, augs=augs)
                if owned and not samples:
                    skips.add("no_caption", key=key, url=item.path)
                elif owned and cfg.vlm.model and vcap is None:
                    # an empty (or markdown-only) answer: the image keeps its other captions
                    skips.add("vlm_no_caption", key=key, url=item.path)
                for s in samples:
                    w.write(s)
        by_kind = dict(w.stats.by_kind)
        if skips.counts:  # no file means no skips: saves an fsync per clean shard
            write_json(skips_path(shard), skips.as_dict())
    return UnitResult(unit.name, unit.split, len(unit.items), w.stats.samples, by_kind,
                      skips.as_dict(), rebuilt=rebuilt)
