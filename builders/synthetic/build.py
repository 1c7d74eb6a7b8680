"""Synthetic-set build driver: plan, resume, run units on workers, index, summarise.

Output layout (like the real set's train folder)::

    OUT/build_config.yaml, build_plan.json, build_summary.json, preview.png
    OUT/build_failures.json            units that raised (built again by the next run)
    OUT/train/synthetic-train-000000.tar (+ .stats.json, .skips.json), ..., dataset.json, sizes.json
    OUT/work/synthetic-train-000000/chunk-0000/...   per-stage intermediates (builders.synthetic.work)

``dataset.json`` carries ``stats.synthetic`` (samples by mode, verification counts, source
images, variants per image). A finished shard is kept on rerun; ``overwrite=true`` rebuilds
shards and work; ``stages=[generate]`` reruns generation (and verification) of every shard with
the current generation settings, reusing the earlier stages' intermediates.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

from builders.common import driver
from builders.common import gpus as gpu_choice
from builders.common.driver import PREVIEW_NAME, UnitResult
from builders.common.remote import shard_for_preview
from builders.synthetic import sources
from builders.synthetic.config import STAGES, SyntheticBuildConfig
from builders.synthetic.preview import write_synthetic_preview
from builders.synthetic.unit import build_unit
from wds_tools.atomic import write_json
from wds_tools.urls import local_output

log = logging.getLogger(__name__)
STAGE_LIBRARIES = "builders.synthetic.stages.libraries"  # preloaded by a local worker pool

# Sections a stages= rerun may change, by the first stage rerun.
_STAGE_SECTIONS = {"upscale": ("upscale", "size", "image_ext", "quality"),
                   "describe": ("describe",), "ground": ("ground",), "segment": ("segment",),
                   "generate": ("generate", "modes", "seed"), "verify": ("verify",)}
_RUN_ONLY = driver.RUN_ONLY + ("stages", "resident", "device", "gpus_per_task", "work_dir",
                               "preview", "cpu_threads")


def run_only_keys(cfg: SyntheticBuildConfig) -> tuple[str, ...]:
    keys = list(_RUN_ONLY)
    for stage in cfg.rerun_stages():
        keys += _STAGE_SECTIONS[stage]
    if cfg.rerun_stages():
        keys += ("size", "image_ext", "quality")  # the shards are written again anyway
    return tuple(keys)


def gpus_per_task(cfg: SyntheticBuildConfig) -> float:
    """GPUs a unit asks for: none on a CPU device or a machine without GPUs (a Ray task asking
    for a GPU no node has would wait forever), unless joining a cluster that may have them."""
    return gpu_choice.gpus_per_task(cfg.device, cfg.gpus_per_task, executor=cfg.executor,
                                    ray_address=cfg.ray_address)


def _counts(kinds: Counter) -> dict:
    return {"synthetic": sum(kinds.values())}


def inpaint_fallbacks(tally: Counter) -> dict:
    """Per inpaint mode, from the planners' tally: variants that drew it, how many it could not
    apply to (they fell back to ``modes.fallback``, or were skipped when that is empty), the
    rate and the reasons."""
    out = {}
    for mode in ("inpaint_replace", "inpaint_remove"):
        drawn = tally.get(f"drawn:{mode}", 0)
        prefix = f"unapplied:{mode}:"
        reasons = {k[len(prefix):]: v for k, v in sorted(tally.items()) if k.startswith(prefix)}
        n = sum(reasons.values())
        out[mode] = {"drawn": drawn, "fell_back": n, "rate": round(n / drawn, 4) if drawn else 0.0,
                     "reasons": reasons}
    return out


def _synthetic_stats(results: list[UnitResult], cfg: SyntheticBuildConfig) -> dict:
    by_mode: Counter = Counter()
    seconds: Counter = Counter()
    tally: Counter = Counter()
    checked = ok = trimmed = 0
    for r in results:
        seconds.update(r.extra.get("stage_seconds") or {})
        by_mode.update(r.extra.get("by_mode") or r.by_kind)
        tally.update(r.extra.get("mode_tally") or {})
        checked += r.extra.get("verify_checked", 0)
        ok += r.extra.get("verify_ok", 0)
        trimmed += r.extra.get("prompts_trimmed", 0)
    return {"by_mode": dict(sorted(by_mode.items())), "verify_checked": checked, "verify_ok": ok,
            "prompts_trimmed": trimmed,
            "source_images": sum(r.source_images for r in results),
            "per_image": cfg.modes.per_image,
            "inpaint_fallbacks": inpaint_fallbacks(tally), "fallback_mode": cfg.modes.fallback,
            "stage_seconds_this_run": {k: round(v, 3) for k, v in seconds.items()},
            "models": {s: str(getattr(getattr(cfg, s), "model", "")) for s in STAGES if s != "verify"}}


def _add_stats(cfg: SyntheticBuildConfig, results: list[UnitResult], out: Path, summary: dict) -> None:
    """``stats.synthetic`` in the train folder's dataset.json (written by the shared index code)
    and in the summary."""
    stats = _synthetic_stats(results, cfg)
    path = out / "train" / "dataset.json"
    if path.exists():
        manifest = json.loads(path.read_text())
        manifest["stats"]["synthetic"] = stats
        write_json(path, manifest)
    summary["synthetic"] = stats


def work_dir_of(cfg: SyntheticBuildConfig, out: Path) -> str:
    """Where the per-stage intermediates go: ``work_dir``, else OUT/work."""
    return str(Path(cfg.work_dir) if cfg.work_dir else out / "work")


def _plan(cfg: SyntheticBuildConfig) -> tuple[list, str]:
    units = sources.plan(cfg)
    return units, sources.digest(units)


def _check(cfg: SyntheticBuildConfig) -> None:
    if cfg.work_dir:
        local_output(cfg.work_dir, "work_dir")


def _place(cfg: SyntheticBuildConfig) -> driver.RunPlacement:
    return driver.RunPlacement(cfg, gpus_per_task(cfg), None, cfg.workers)


def _preview(cfg: SyntheticBuildConfig, units: list, out: Path, store=None) -> Path | None:
    def present(u) -> bool:  # a failed unit has no shard; on a store, fetch the first there is
        return (shard_for_preview(u.path(out), store, out) if store is not None else u.path(out)).exists()

    first = next((u.path(out) for u in units if present(u)), None)
    if first is None:
        return None
    return write_synthetic_preview(first, out / PREVIEW_NAME, work_dir=work_dir_of(cfg, out))


BUILDER = driver.Builder(
    tool="builders.synthetic", prefix=sources.PREFIX, splits=("train",), run_only=run_only_keys,
    plan=_plan, unit=build_unit, counts=_counts, desc="synthetic build",
    usage="--input SHARDS_OR_IMAGES --output DIR", check=_check,
    unit_args=lambda cfg, out: (work_dir_of(cfg, out),), place=_place, preload=(STAGE_LIBRARIES,),
    keep_going=True, fatal=(sources.SplitRefused,), add_stats=_add_stats, preview=_preview,
    rebuild=lambda cfg: cfg.overwrite or bool(cfg.rerun_stages()))


def build_synthetic(cfg: SyntheticBuildConfig, *, progress: bool = True) -> dict:
    """Run the whole build for ``cfg``; returns the summary also written to build_summary.json."""
    return driver.run_build(BUILDER, cfg, progress=progress)


def _fallback_line(fallbacks: dict, to: str) -> str:
    """"inpaint modes not applied (-> img2img): inpaint_replace 3 of 10 (30.0%: no_boxes 3), ..."."""
    parts = []
    for mode, f in fallbacks.items():
        why = ", ".join(f"{k} {v}" for k, v in f["reasons"].items())
        parts.append(f"{mode} {f['fell_back']} of {f['drawn']}"
                     + (f" ({100 * f['rate']:.1f}%: {why})" if f["fell_back"] else ""))
    return f"  inpaint modes not applied (-> {to or 'skipped'}): " + ", ".join(parts)


def format_summary(summary: dict, out: str | Path) -> str:
    """Human-readable end-of-build report."""
    s = summary["splits"].get("train", {"shards": 0, "samples": 0, "source_images": 0})
    syn = summary.get("synthetic", {})
    lines = [f"wrote {out}  ({summary.get('seconds', 0):.1f} s, "
             f"{summary.get('resumed_shards', 0)} shards kept from an earlier run)",
             f"  train: {s['shards']} shards, {s['samples']} synthetic samples from "
             f"{s['source_images']} source images",
             "  by mode: " + (", ".join(f"{k} {v}" for k, v in syn.get("by_mode", {}).items()) or "none"),
             f"  verified: {syn.get('verify_ok', 0)} of {syn.get('verify_checked', 0)} inpainted "
             f"objects as intended"]
    if syn.get("prompts_trimmed"):
        lines.append(f"  prompts cut to CLIP's token limit (after a whole word): {syn['prompts_trimmed']} "
                     f"of {s['samples']}")
    if syn.get("inpaint_fallbacks"):
        lines.append(_fallback_line(syn["inpaint_fallbacks"], syn.get("fallback_mode", "")))
    if summary.get("preview"):
        lines.append(f"  preview: {summary['preview']}")
    if summary["skipped"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in summary["skipped"].items())
        lines.append(f"  skips and fallbacks: {reasons}")
    if summary.get("failed_units"):
        lines.append(f"  FAILED units (rerun to retry): {', '.join(summary['failed_units'])}")
    return "\n".join(lines)
