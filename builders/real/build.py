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

OUT may be a URL (``s3://bucket/set``): see builders.common.remote for how it is uploaded.

Each split's ``dataset.json`` carries ``real_original``, ``real_augmented`` and ``zoom_crops``
counts besides the by-source/caption-source/class/kind stats. A finished shard (tar + stats)
is skipped on rerun (when its size, and with ``verify=true`` its sha256, matches its stats);
``overwrite=true`` rebuilds everything. One build per output folder at a time (``OUT/build.lock``,
see builders.common.output), so leftover temp files from a killed build are removed at start.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from builders.common import driver
from builders.common.driver import CONFIG_NAME, PLAN_NAME, PREVIEW_NAME, SUMMARY_NAME, UnitResult  # noqa: F401
from builders.common.gpus import Placement, place_model
from builders.common.inputs import SPLITS, read_items
from builders.common.output import refuse_empty_build
from builders.common.plan import SHARD_PREFIX, Unit, plan_digest, plan_units
from builders.common.preview import write_preview
from builders.common.remote import shard_for_preview
from builders.real.config import RealBuildConfig
from builders.real.unit import build_unit

log = logging.getLogger(__name__)

# Settings that may change between a partial build and its resumption.
_RUN_ONLY = driver.RUN_ONLY + ("verify",)
_KIND_COUNTS = {"real_original": "original", "real_augmented": "augmented",
                "zoom_crops": "zoom_crop"}


def _kind_counts(kinds: Counter) -> dict:
    return {name: kinds.get(kind, 0) for name, kind in _KIND_COUNTS.items()}


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


def _plan(cfg: RealBuildConfig) -> tuple[list[Unit], str]:
    items = read_items(cfg.input, image_root=cfg.image_root or None)
    split = cfg.heldout_split()  # the one split definition; build_plan.json records it for the synthetic builder
    units = plan_units(items, images_per_shard=cfg.images_per_shard, seed=split.seed,
                       val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                       order=cfg.shard_order, augmentations=cfg.augment.per_image,
                       spread=cfg.augment.spread_shards,
                       augment_splits=SPLITS if cfg.splits.augment_heldout else ("train",))
    return units, plan_digest(units)


def _place(cfg: RealBuildConfig) -> driver.RunPlacement:
    run_cfg, place = place_vlm(cfg)
    return driver.RunPlacement(run_cfg, place.gpus_per_task, place.gpus, run_cfg.workers)


def _refuse_empty(cfg: RealBuildConfig, results: list[UnitResult], units: list[Unit], out: Path) -> None:
    refuse_empty_build(results, units, out, image_root=cfg.image_root, source=cfg.input,
                       build_files=(CONFIG_NAME, PLAN_NAME))


def _preview(cfg: RealBuildConfig, units: list[Unit], out: Path, store=None) -> Path | None:
    first = next((u.path(out) for u in units if u.split == "train"), None)
    if first is not None and store is not None:
        first = shard_for_preview(first, store, out)
    return write_preview(first, out / PREVIEW_NAME) if first is not None and first.exists() else None


BUILDER = driver.Builder(tool="builders.real", prefix=SHARD_PREFIX, splits=SPLITS, run_only=_RUN_ONLY,
                         plan=_plan, unit=build_unit, counts=_kind_counts, desc="real build",
                         usage="--input DIR_OR_FILE --output DIR",
                         place=_place, check_results=_refuse_empty, preview=_preview,
                         verify=lambda cfg: cfg.verify)


def build_real(cfg: RealBuildConfig, *, progress: bool = True) -> dict:
    """Run the whole build for ``cfg``; returns the summary also written to build_summary.json."""
    return driver.run_build(BUILDER, cfg, progress=progress)


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
