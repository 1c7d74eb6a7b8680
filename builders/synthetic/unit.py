"""Build one synthetic shard: sources -> five stages chunk by chunk (work folder) -> shard.

A work file that cannot be read back (``DamagedWork``) is logged, naming the file, and its stage
and every later one run again for that chunk; the same file damaged again after that is an error
naming it. A shard with fewer samples than its chunks planned says so in a warning.

Skips are counted from the work folder's stage files, not from what this process happened to
run, so a resumed unit reports the same counts as an uninterrupted one. The unit's mode and
verification tallies are kept beside its work (``summary.json``) for the dataset index.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections import Counter

from PIL import Image

from builders.common.driver import UnitResult, result_from_disk, skips_path
from builders.synthetic import pipeline
from builders.synthetic.config import STAGES
from builders.synthetic.models import StageModels, model_id
from builders.synthetic.pipeline import Source
from builders.synthetic.sources import SynthUnit, iter_image_sources, iter_shard_sources
from builders.synthetic.work import ChunkWork, DamagedWork, chunk_work, drain, unit_work
from wds_tools.atomic import write_json
from wds_tools.malloc import keep_freed_memory
from wds_tools.manifest import stats_path
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.skips import SkipLog
from wds_tools.writer import ShardWriter, is_shard_complete

log = logging.getLogger(__name__)
_MODEL_STAGES = ("upscale", "describe", "ground", "segment", "generate")


def out_key(parent: str, variant: int) -> str:
    return make_key(parent, "syn", variant)


def load_sources(unit: SynthUnit, cfg, skips: SkipLog) -> list[Source]:
    """The unit's source images in input order; with ``max_per_shard``, that many spread evenly
    over the unit (a shard sorted by key holds its classes in runs)."""
    it = iter_shard_sources if unit.shard else iter_image_sources
    out = [Source(**rec) for rec in it(unit, cfg, skips)]
    n = cfg.inputs.max_per_shard
    if 0 < n < len(out):
        out = [out[i * len(out) // n] for i in range(n)]
    return out


def _chunks(sources: list[Source], n: int) -> list[list[Source]]:
    return [sources[i:i + n] for i in range(0, len(sources), n)]


def _run_stages(unit: SynthUnit, chunks: list[list[Source]], cfg, work_dir: str) -> dict:
    """Each stage over every chunk that lacks its result, one model loaded at a time; returns
    the seconds each stage took (load, run and unload)."""
    models = StageModels(cfg)
    seconds: dict[str, float] = {}
    try:
        for stage in STAGES:
            works = [chunk_work(work_dir, unit.name, i) for i in range(len(chunks))]
            todo = [(c, w) for c, w in zip(chunks, works) if not w.done(stage)]
            if not todo:
                continue
            t = time.perf_counter()
            for chunk, w in todo:  # a chunk's images are written while the next chunk runs
                pipeline.run_stage(stage, models, chunk, w, cfg, out_key)
            drain()
            models.release("ground" if stage == "verify" else stage)
            seconds[stage] = round(time.perf_counter() - t, 3)
            log.info("%s: %s on %d chunks in %.2f s", unit.name, stage, len(todo), seconds[stage])
    finally:
        models.close()
    return seconds


def count_skips(chunks: list[list[Source]], cfg, work_dir: str, unit: SynthUnit) -> Counter:
    """Per-image stage skips, plan skips and mode fallbacks of a finished unit."""
    c: Counter = Counter()
    for i in range(len(chunks)):
        w = chunk_work(work_dir, unit.name, i)
        for stage in ("upscale", "describe", "ground", "segment"):
            for r in w.read(stage).values():
                if not isinstance(r, dict):
                    continue
                reason = r.get("skip")
                # ground's no_objects is describe's no_objects again: counted once
                if reason and not (stage == "ground" and reason == "no_objects"):
                    c[f"{stage}:{reason}"] += 1
                if r.get("skip_objects"):
                    c["describe:no_objects"] += 1
                c["segment:empty_mask"] += len(r.get("empty", []))
        gen = w.read("generate")
        for reasons in gen["plan_skips"].values():
            c.update(f"plan:{r}" for r in reasons)
        for r in gen["results"].values():
            if "skip" in r:
                c[f"generate:{r['skip']}"] += 1
            elif r.get("fallback"):
                c[f"fallback:{r['fallback']}"] += 1
    return c


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _sample(plan: dict, verify: dict | None, cls, img: Image.Image, mask: Image.Image | None,
            cfg) -> dict:
    size = (cfg.size, cfg.size)
    img = img.resize(size, Image.Resampling.LANCZOS) if img.size != size else img
    meta = {"source": "synthetic", "parent": plan["parent"], "class": cls, "split": "train",
            "kind": plan["mode"], "mode": plan["mode"], "variant": plan["variant"],
            "prompt": plan["prompt"], "negative_prompt": plan["negative_prompt"],
            "seed": plan["seed"], "strength": plan["strength"], "steps": plan["steps"],
            "guidance": plan["guidance"], "boxes": plan["boxes"], "label": plan["label"],
            "new_label": plan["new_label"], "fallback": plan["fallback"],
            "prompt_trimmed": bool(plan.get("prompt_trimmed")),
            "captions": plan["captions"], "caption_sources": plan["caption_sources"],
            "generation_size": cfg.upscale.size, "verify": verify,
            "models": {s: model_id(cfg, s) for s in _MODEL_STAGES}}
    extra = {}
    if mask is not None:
        extra["mask.png"] = _png(mask.resize(size, Image.Resampling.BILINEAR))
    return make_sample(key=plan["key"], image=encode_image(img, ext=cfg.image_ext, quality=cfg.quality),
                       caption=plan["captions"][0], meta=meta, image_ext=cfg.image_ext, extra=extra)


def write_unit_shard(unit: SynthUnit, chunks: list[list[Source]], cfg, output: str,
                     work_dir: str, skips: dict, source_images: int) -> tuple[int, dict, dict]:
    """The shard from the work folder; returns (samples, by kind, tallies).

    The skip counts and tallies are written inside the shard's atomic window (before the tar's
    rename and stats), so a finished shard always has them."""
    tallies = {"by_mode": Counter(), "verify_checked": 0, "verify_ok": 0, "prompts_trimmed": 0,
               "mode_tally": Counter()}
    planned = 0
    with ShardWriter(unit.path(output)) as wr:
        for i, chunk in enumerate(chunks):
            w = chunk_work(work_dir, unit.name, i)
            generate, ver = w.read("generate"), w.read("verify")
            gen = generate["results"]
            planned += len(gen)
            tallies["mode_tally"].update(generate.get("mode_tally", {}))  # absent: older work
            cls = {s.key: s.cls for s in chunk}
            for k, plan in gen.items():
                if "skip" in plan:
                    continue
                mask = w.load_image("generate", f"{k}-mask") if plan["mode"].startswith("inpaint") else None
                wr.write(_sample(plan, ver.get(k), cls[plan["parent"]], w.load_image("generate", k),
                                 mask, cfg))
                tallies["by_mode"][plan["mode"]] += 1
                tallies["prompts_trimmed"] += int(bool(plan.get("prompt_trimmed")))
                if ver.get(k) and ver[k]["ok"] is not None:
                    tallies["verify_checked"] += 1
                    tallies["verify_ok"] += int(ver[k]["ok"])
        tallies["by_mode"] = dict(sorted(tallies["by_mode"].items()))
        tallies["mode_tally"] = dict(sorted(tallies["mode_tally"].items()))
        tallies["source_images"] = source_images
        write_json(unit_work(work_dir, unit.name) / "summary.json", tallies)
        if skips:
            write_json(skips_path(unit.path(output)), skips)
    if wr.stats.samples < planned:
        generation = {k: n for k, n in skips.items() if k.startswith("generate:")}
        log.warning("%s: %d of %d planned variants written; generation skipped %s (counts in %s)", unit.name,
                    wr.stats.samples, planned, generation or "none", skips_path(unit.path(output)).name)
    return wr.stats.samples, dict(wr.stats.by_kind), tallies


def _redo_damaged(unit: SynthUnit, damage: DamagedWork, redone: set) -> None:
    """Clear the damaged file's stage and every later stage of its chunk, so they run again; the
    same file damaged a second time is a ValueError naming it (redoing did not help)."""
    if damage.path in redone:
        raise ValueError(f"{unit.name}: {damage} again after its stage {damage.stage!r} ran again "
                         f"for {damage.chunk.name}; delete {damage.chunk} or check the disk") from damage
    redone.add(damage.path)
    again = STAGES[STAGES.index(damage.stage):]
    log.warning("%s: %s; running %s again for %s", unit.name, damage, ", ".join(again), damage.chunk.name)
    w = ChunkWork(damage.chunk)
    for stage in again:
        w.clear(stage)


def _prepare_rerun(unit: SynthUnit, cfg, output: str, work_dir: str) -> None:
    shard = unit.path(output)
    if cfg.overwrite:
        shutil.rmtree(unit_work(work_dir, unit.name), ignore_errors=True)
    rerun = cfg.rerun_stages()
    if rerun:
        # the stats go first: a rerun killed halfway leaves an unfinished shard, never the old one
        stats_path(shard).unlink(missing_ok=True)
        for chunk_dir in sorted(unit_work(work_dir, unit.name).glob("chunk-*")):
            w = chunk_work(work_dir, unit.name, int(chunk_dir.name.split("-")[1]))
            for stage in rerun:
                w.clear(stage)
    skips_path(shard).unlink(missing_ok=True)


def build_unit(unit: SynthUnit, cfg, output: str, work_dir: str) -> UnitResult:
    """Write ``unit``'s shard unless it is complete (and neither overwrite nor stages= is set)."""
    shard = unit.path(output)
    summary_file = unit_work(work_dir, unit.name) / "summary.json"
    if is_shard_complete(shard) and not cfg.overwrite and not cfg.rerun_stages():
        r = result_from_disk(unit, output)
        r.extra = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        return r
    keep_freed_memory()
    if cfg.cpu_threads:
        import torch

        torch.set_num_threads(cfg.cpu_threads)
    _prepare_rerun(unit, cfg, output, work_dir)
    read_skips = SkipLog()
    sources = load_sources(unit, cfg, read_skips)
    chunks = _chunks(sources, cfg.chunk_size)
    seconds: Counter = Counter()
    redone: set = set()
    while True:
        try:
            seconds.update(_run_stages(unit, chunks, cfg, work_dir))
            skips = dict(sorted((Counter(read_skips.counts) + count_skips(chunks, cfg, work_dir, unit)).items()))
            samples, by_kind, tallies = write_unit_shard(unit, chunks, cfg, output, work_dir, skips,
                                                         len(sources))
            break
        except DamagedWork as damage:
            _redo_damaged(unit, damage, redone)
    if tallies["prompts_trimmed"]:  # once per unit, not per batch as the pipeline would
        log.info("%s: %d of %d prompts were longer than CLIP reads and were cut after a whole word",
                 unit.name, tallies["prompts_trimmed"], samples)
    return UnitResult(unit.name, unit.split, len(sources), samples, by_kind,
                      skips, extra={**tallies, "stage_seconds": {k: round(v, 3) for k, v in seconds.items()}})
