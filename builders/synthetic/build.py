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
import time
from collections import Counter
from pathlib import Path

from builders.common import driver
from builders.common import gpus as gpu_choice
from builders.common.driver import PREVIEW_NAME, UnitResult
from builders.common.output import check_output_dir, lock_output, remove_killed_temps
from builders.synthetic import sources
from builders.synthetic.config import STAGES, SyntheticBuildConfig
from builders.synthetic.preview import write_synthetic_preview
from builders.synthetic.unit import build_unit
from wds_tools.config import ConfigError, config_to_dict
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


def _add_stats(out: Path, stats: dict) -> None:
    """``stats.synthetic`` in the train folder's dataset.json (written by the shared index code)."""
    from wds_tools.atomic import write_json

    path = out / "train" / "dataset.json"
    if path.exists():
        manifest = json.loads(path.read_text())
        manifest["stats"]["synthetic"] = stats
        write_json(path, manifest)


def build_synthetic(cfg: SyntheticBuildConfig, *, progress: bool = True) -> dict:
    """Run the whole build for ``cfg``; returns the summary also written to build_summary.json."""
    if not cfg.input or not cfg.output:
        raise ConfigError("both input and output must be set (--input SHARDS_OR_IMAGES --output DIR)")
    out = check_output_dir(cfg.output)
    if cfg.work_dir:
        local_output(cfg.work_dir, "work_dir")
    with lock_output(out, tool="builders.synthetic"):
        remove_killed_temps(out, ("train",))
        return _build_locked(cfg, out, progress=progress)


def _build_locked(cfg: SyntheticBuildConfig, out: Path, *, progress: bool) -> dict:
    work_dir = str(Path(cfg.work_dir) if cfg.work_dir else out / "work")
    units = sources.plan(cfg)
    digest = sources.digest(units)
    driver.check_resumable(cfg, out, run_only=run_only_keys(cfg))
    driver.check_plan(digest, sum(len(u) for u in units), out, overwrite=cfg.overwrite)
    driver.prepare_output(units, out, prefix=f"{sources.PREFIX}", overwrite=cfg.overwrite)
    driver.save_build_files(cfg, out, digest=digest, units=units)
    start = time.perf_counter()
    results, failures = driver.run_with_progress(
        build_unit, units, cfg, str(out), work_dir, executor=cfg.executor, workers=cfg.workers,
        address=cfg.ray_address, desc="synthetic build", progress=progress,
        gpus_per_task=gpus_per_task(cfg), keep_going=True, preload=(STAGE_LIBRARIES,))
    refused = [f for f in failures if sources.SplitRefused.__name__ in f.error]
    if refused:  # not a unit's bad luck: the input itself is wrong
        raise sources.SplitRefused(refused[0].error)
    summary = driver.write_indexes(out, results, prefix=sources.PREFIX, builder="builders.synthetic",
                                   resolved=config_to_dict(cfg), counts=_counts)
    stats = _synthetic_stats(results, cfg)
    _add_stats(out, stats)
    summary["synthetic"] = stats
    driver.record_failures(out, failures, summary)
    summary["resumed_shards"] = sum(r.resumed for r in results)
    driver.write_summary(out, summary)
    first = next((u.path(out) for u in units if u.path(out).exists()), None)
    if cfg.preview and first is not None:
        summary["preview"] = str(write_synthetic_preview(first, out / PREVIEW_NAME, work_dir=work_dir))
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


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
