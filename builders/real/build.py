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

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from builders.common import driver
from builders.common.driver import CONFIG_NAME, PLAN_NAME, PREVIEW_NAME, SUMMARY_NAME, UnitResult  # noqa: F401
from builders.common.gpus import Placement, place_model
from builders.common.inputs import SPLITS, read_items
from builders.common.output import check_output_dir, lock_output, refuse_empty_build, remove_killed_temps
from builders.common.plan import SHARD_PREFIX, Unit, plan_digest, plan_units
from builders.common.preview import write_preview
from builders.real.config import RealBuildConfig
from builders.real.unit import build_unit
from wds_tools.config import ConfigError, config_to_dict

log = logging.getLogger(__name__)

# Settings that may change between a partial build and its resumption.
_RUN_ONLY = driver.RUN_ONLY + ("verify", "break_lock")
_KIND_COUNTS = {"real_original": "original", "real_augmented": "augmented",
                "zoom_crops": "zoom_crop"}


def check_resumable(cfg: RealBuildConfig, out: Path) -> None:
    """Refuse to mix shards from a different recipe into this output folder."""
    driver.check_resumable(cfg, out, run_only=_RUN_ONLY)


def check_plan(units: list[Unit], out: Path, *, overwrite: bool) -> None:
    """Refuse to resume when the input maps to different shards than last time."""
    driver.check_plan(plan_digest(units), sum(len(u.items) for u in units), out, overwrite=overwrite)


def prepare_output(units: list[Unit], out: Path, *, overwrite: bool) -> None:
    """Remove temp leftovers; with overwrite, remove old shards; refuse foreign stale shards."""
    driver.prepare_output(units, out, prefix=SHARD_PREFIX, overwrite=overwrite)


def _kind_counts(kinds: Counter) -> dict:
    return {name: kinds.get(kind, 0) for name, kind in _KIND_COUNTS.items()}


def write_indexes(out: Path, results: list[UnitResult], cfg: RealBuildConfig) -> dict:
    """dataset.json + sizes.json per split folder; returns the build summary."""
    summary = driver.write_indexes(out, results, prefix=SHARD_PREFIX, builder="builders.real",
                                   resolved=config_to_dict(cfg), counts=_kind_counts)
    driver.write_summary(out, summary)
    return summary


def place_vlm(cfg: RealBuildConfig, *, gpus: Sequence[str] | None = None,
              ) -> tuple[RealBuildConfig, Placement]:
    """The config the workers get and where they run: a VLM on CUDA (``cuda``, or ``auto`` with
    a GPU here) gets one worker per GPU, each pinned to its own, not one model copy per CPU core
    on GPU 0; ``auto`` without a GPU runs on the CPU. ``gpus``: the GPU ids found here (default:
    the visible ones, found without touching CUDA in this process)."""
    if not cfg.vlm.model:
        return cfg, Placement(cfg.vlm.device, 0.0, None, cfg.workers)
    place = place_model(cfg.vlm.device, workers=cfg.workers, executor=cfg.executor,
                        ray_address=cfg.ray_address, gpus=gpus, what=f"VLM captions ({cfg.vlm.model})")
    return replace(cfg, workers=place.workers, vlm=replace(cfg.vlm, device=place.device)), place


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
    driver.save_build_files(cfg, out, digest=plan_digest(units), units=units)
    start = time.perf_counter()
    run_cfg, place = place_vlm(cfg)
    results, _ = driver.run_with_progress(build_unit, units, run_cfg, str(out), executor=cfg.executor,
                                          workers=run_cfg.workers, address=cfg.ray_address,
                                          desc="real build", progress=progress,
                                          gpus_per_task=place.gpus_per_task, gpus=place.gpus)
    refuse_empty_build(results, units, out, image_root=cfg.image_root, source=cfg.input,
                       build_files=(CONFIG_NAME, PLAN_NAME))
    summary = write_indexes(out, results, cfg)
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
