"""Real-set build driver: plan, resume, run units on workers, index, summarise.

Output layout (one folder per split, so a training URL of ``OUT/train`` can never read held-out
images)::

    OUT/build_config.yaml          resolved config of the build
    OUT/build_plan.json            digest of the input -> shard mapping (checked on resume)
    OUT/build_summary.json         per-split counts and skips of the whole build
    OUT/preview.png                the first train samples with kind and primary caption
    OUT/train/real-train-000000.tar (+ .stats.json, .skips.json), ..., dataset.json, sizes.json
    OUT/val/real-val-000000.tar ...                                   (when there is a val split)
    OUT/test/real-test-000000.tar ...                                 (when there is a test split)

Each split's ``dataset.json`` carries ``real_original``, ``real_augmented`` and ``zoom_crops``
counts besides the by-source/caption-source/class/kind stats. A finished shard (tar + stats)
is skipped on rerun (when its size, and with ``verify=true`` its sha256, matches its stats);
``overwrite=true`` rebuilds everything. One build per output folder at a time (``OUT/build.lock``,
see builders.common.output), so leftover temp files from a killed build are removed at start.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from pathlib import Path

from builders.common.executors import run_units
from builders.common.inputs import SPLITS, read_items
from builders.common.output import check_output_dir, lock_output, refuse_empty_build, remove_killed_temps
from builders.common.plan import SHARD_PREFIX, Unit, plan_digest, plan_units
from builders.common.preview import write_preview
from builders.real.config import RealBuildConfig
from builders.real.unit import UnitResult, build_unit
from wds_tools.atomic import write_json
from wds_tools.config import ConfigError, config_to_dict, save_config
from wds_tools.manifest import write_index
from wds_tools.progress import progress as progress_bar

log = logging.getLogger(__name__)

CONFIG_NAME = "build_config.yaml"
PLAN_NAME = "build_plan.json"
PREVIEW_NAME = "preview.png"
SUMMARY_NAME = "build_summary.json"
# Settings that may change between a partial build and its resumption.
_RUN_ONLY = ("overwrite", "executor", "workers", "ray_address", "output", "verify", "break_lock")
_OWN_FILE = re.compile(rf"^{SHARD_PREFIX}-(train|val|test)-\d{{6}}\.(tar|stats\.json|skips\.json)$")
_KIND_COUNTS = {"real_original": "original", "real_augmented": "augmented",
                "zoom_crops": "zoom_crop"}


def _recipe_dict(cfg: RealBuildConfig) -> dict:
    d = config_to_dict(cfg)
    for k in _RUN_ONLY:
        d.pop(k, None)
    return d


def check_resumable(cfg: RealBuildConfig, out: Path) -> None:
    """Refuse to mix shards from a different recipe into this output folder."""
    saved = out / CONFIG_NAME
    if cfg.overwrite or not saved.exists():
        return
    from wds_tools.config import load_config

    before = _recipe_dict(load_config(RealBuildConfig, saved))
    now = _recipe_dict(cfg)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} was built with different settings ({', '.join(changed)}); "
                          f"rerun with --overwrite to rebuild it")


def check_plan(units: list[Unit], out: Path, *, overwrite: bool) -> None:
    """Refuse to resume when the input maps to different shards than last time."""
    saved = out / PLAN_NAME
    if overwrite or not saved.exists():
        return
    before = json.loads(saved.read_text())
    if before.get("digest") != plan_digest(units):
        raise ConfigError(f"the input of {out} changed since it was built ({before.get('images')} -> "
                          f"{sum(len(u.items) for u in units)} images, or other keys); "
                          f"rerun with --overwrite to rebuild it")


def prepare_output(units: list[Unit], out: Path, *, overwrite: bool) -> None:
    """Remove temp leftovers; with overwrite, remove old shards; refuse foreign stale shards."""
    planned = {u.path(out).name for u in units}
    stale = []
    for split in SPLITS:
        d = out / split
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if ".tmp-" in p.name and p.name.startswith(f"{SHARD_PREFIX}-"):
                p.unlink()  # a killed writer's temp file: never a finished shard
            elif _OWN_FILE.match(p.name):
                tar_name = p.name.split(".", 1)[0] + ".tar"
                if overwrite:
                    p.unlink()
                elif tar_name not in planned:
                    stale.append(p.name)
    if stale:
        raise ValueError(f"{out} holds shards this input does not produce ({sorted(stale)[:5]}...); "
                         f"rerun with --overwrite to rebuild the folder")


def write_indexes(out: Path, results: list[UnitResult], cfg: RealBuildConfig) -> dict:
    """dataset.json + sizes.json per split folder; returns the build summary."""
    summary = {"splits": {}, "skipped": {}, "source_images": 0}
    total_skips: Counter = Counter()
    resolved = config_to_dict(cfg)
    for split in SPLITS:
        rs = [r for r in results if r.split == split]
        if not rs:
            continue
        skips: Counter = Counter()
        kinds: Counter = Counter()
        for r in rs:
            skips.update(r.skips)
            kinds.update(r.by_kind)
        counts = {name: kinds.get(kind, 0) for name, kind in _KIND_COUNTS.items()}
        extra = {**counts, "split": split, "source_images": sum(r.source_images for r in rs),
                 "skipped": dict(sorted(skips.items())), "builder": "builders.real",
                 "config": resolved}
        manifest = write_index(out / split, name=f"{SHARD_PREFIX}-{split}", extra=extra)
        summary["splits"][split] = {
            "shards": manifest["num_shards"], "samples": manifest["total_samples"],
            "source_images": extra["source_images"], **counts, "skipped": extra["skipped"],
            "by_caption_source": manifest["stats"]["by_caption_source"],
            "classes_per_shard": manifest["classes_per_shard"]}
        summary["source_images"] += extra["source_images"]
        total_skips.update(skips)
    summary["skipped"] = dict(sorted(total_skips.items()))
    write_json(out / SUMMARY_NAME, summary)
    return summary


def build_real(cfg: RealBuildConfig, *, progress: bool = True) -> dict:
    """Run the whole build for ``cfg``; returns the summary also written to build_summary.json."""
    if not cfg.input or not cfg.output:
        raise ConfigError("both input and output must be set (--input DIR_OR_FILE --output DIR)")
    out = check_output_dir(cfg.output)
    with lock_output(out, tool="builders.real", break_lock=cfg.break_lock):
        return _build_locked(cfg, out, progress=progress)


def _build_locked(cfg: RealBuildConfig, out: Path, *, progress: bool) -> dict:
    remove_killed_temps(out, SPLITS)  # e.g. a dataset.json cut by a kill: no one else writes here
    items = read_items(cfg.input, image_root=cfg.image_root or None)
    units = plan_units(items, images_per_shard=cfg.images_per_shard, seed=cfg.seed,
                       val_fraction=cfg.splits.val_fraction, test_fraction=cfg.splits.test_fraction,
                       order=cfg.shard_order, augmentations=cfg.augment.per_image,
                       spread=cfg.augment.spread_shards,
                       augment_splits=SPLITS if cfg.splits.augment_heldout else ("train",))
    check_resumable(cfg, out)
    check_plan(units, out, overwrite=cfg.overwrite)
    prepare_output(units, out, overwrite=cfg.overwrite)
    save_config(cfg, out / CONFIG_NAME)
    write_json(out / PLAN_NAME, {"digest": plan_digest(units), "images": sum(len(u.items) for u in units),
                                 "shards": {u.name: len(u.items) for u in units}})
    results: list[UnitResult] = []
    start = time.perf_counter()
    bar = progress_bar(total=sum(len(u.items) for u in units), unit="img", desc="real build", disable=not progress)

    def done(r: UnitResult) -> None:
        results.append(r)
        bar.update(r.source_images)
        bar.set_postfix(shards=len(results), samples=sum(x.samples for x in results))

    try:
        run_units(build_unit, units, cfg, str(out), executor=cfg.executor, workers=cfg.workers,
                  address=cfg.ray_address, on_done=done)
    finally:
        bar.close()
    refuse_empty_build(results, units, out, image_root=cfg.image_root, source=cfg.input,
                       build_files=(CONFIG_NAME, PLAN_NAME))
    summary = write_indexes(out, sorted(results, key=lambda r: r.name), cfg)
    first = next((u.path(out) for u in units if u.split == "train"), None)
    if cfg.preview and first is not None and first.exists():
        summary["preview"] = str(write_preview(first, out / PREVIEW_NAME))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["resumed_shards"] = sum(r.resumed for r in results)
    summary["rebuilt_shards"] = sum(r.rebuilt for r in results)
    return summary


def format_summary(summary: dict, out: str | Path) -> str:
    """Human-readable end-of-build report."""
    lines = [f"wrote {out}  ({summary.get('seconds', 0):.1f} s, "
             f"{summary.get('resumed_shards', 0)} shards kept from an earlier run)"]
    for split, s in summary["splits"].items():
        lines.append(f"  {split:5s}: {s['shards']} shards, {s['samples']} samples from "
                     f"{s['source_images']} images = {s['real_original']} original + "
                     f"{s['real_augmented']} augmented + {s['zoom_crops']} zoom crops")
        c = s.get("classes_per_shard")
        if c and c["max"]:
            lines.append(f"         classes per shard: min {c['min']}, median {c['median']}, max {c['max']}")
    if summary.get("preview"):
        lines.append(f"  preview: {summary['preview']}")
    if summary["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["skipped"].items())
        lines.append(f"  skipped {sum(summary['skipped'].values())} images ({reasons})")
    else:
        lines.append("  skipped nothing")
    return "\n".join(lines)
