"""Stage by stage over the chunks of one unit: each stage reads the previous stage's files of a
chunk from the work folder, runs its model over the chunk in batches and writes its own.

A stage is loaded once per unit (or once per worker with ``resident``), runs every chunk that
has no result yet, and is unloaded before the next stage loads. Per image, a stage's trouble is
a counted skip ``<stage>:<reason>`` and the image goes on without that stage's result where the
later stages can do without it (no caption, no boxes), or is dropped (no upscaled image).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from builders.synthetic.models import StageModels
from builders.synthetic.modes import SourceText, VariantPlan, norm_label, plan_variants, vocab_label
from builders.synthetic.work import ChunkWork

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One source image of a unit."""

    key: str
    image: Image.Image
    cls: str | None
    captions: list[str]
    caption_sources: list[str]
    b2c: str | None = None


def _skip(x) -> str | None:
    """A Skip's reason as a counter name ("out of memory" -> "out_of_memory"), else None."""
    from builders.synthetic.stages.base import Skip

    if isinstance(x, Skip):
        return x.reason.replace(" ", "_").replace(":", "")
    return None


def _alive(results: dict) -> list[str]:
    return [k for k, v in results.items() if not (isinstance(v, dict) and "skip" in v)]


def run_upscale(models: StageModels, chunk: list[Source], work: ChunkWork) -> None:
    out = models.get("upscale")([s.image for s in chunk])
    results: dict = {}
    for s, r in zip(chunk, out):
        reason = _skip(r)
        if reason:
            results[s.key] = {"skip": reason}
        else:
            work.save_image("upscale", s.key, r.convert("RGB"))
            results[s.key] = None
    work.write("upscale", results)


def run_describe(models: StageModels, chunk: list[Source], work: ChunkWork) -> None:
    keys = _alive(work.read("upscale"))
    out = models.get("describe")([work.load_image("upscale", k) for k in keys])
    results: dict = {}
    for k, r in zip(keys, out):
        reason = _skip(r)
        if reason:
            results[k] = {"skip": reason}
        else:
            results[k] = {"caption": r.caption, "objects": list(r.objects), "raw": r.raw,
                          "fallback": bool(r.fallback)}
            if not r.objects:
                results[k]["skip_objects"] = "no_objects"
    work.write("describe", results)


def objects_of(desc: dict | None, source: Source, cfg) -> list[str]:
    """The describe stage's objects, then the aerial nouns the parent's own captions name; each
    reduced to the editable vocabulary's noun it ends in ("white car" -> "car"), so what is
    grounded under that label can be edited."""
    objs = [] if not desc or "skip" in desc else [str(o) for o in desc.get("objects", [])]
    if cfg.objects_from_captions:
        from builders.synthetic.stages.describe import nouns_in

        objs += [n for c in source.captions for n in nouns_in(c, cfg.describe.nouns)]
    seen = dict.fromkeys(vocab_label(o, cfg.modes.vocabulary) for o in objs if str(o).strip())
    return list(seen)[:cfg.describe.max_objects]


def run_ground(models: StageModels, chunk: list[Source], work: ChunkWork, cfg) -> None:
    desc = work.read("describe")
    keys = _alive(work.read("upscale"))
    objects = {s.key: objects_of(desc.get(s.key), s, cfg) for s in chunk if s.key in keys}
    results: dict = {k: {"skip": "no_objects"} for k in keys if not objects[k]}
    todo = [k for k in keys if k not in results]
    if todo:
        out = models.get("ground")([(work.load_image("upscale", k), objects[k]) for k in todo])
        for k, r in zip(todo, out):
            reason = _skip(r)
            results[k] = {"skip": reason} if reason else (
                [_plain_box(b) for b in r] if r else {"skip": "no_boxes"})
    work.write("ground", {k: results[k] for k in keys})


def _plain_box(b: dict) -> dict:
    return {"box": [float(x) for x in b["box"]], "label": norm_label(b["label"]),
            "score": float(b.get("score", 0.0)), "source": b.get("source", "grounding_dino")}


def boxes_of(ground: dict, key: str) -> list[dict]:
    r = ground.get(key)
    return r if isinstance(r, list) else []


def run_segment(models: StageModels, chunk: list[Source], work: ChunkWork) -> None:
    ground = work.read("ground")
    keys = [k for k in _alive(work.read("upscale")) if boxes_of(ground, k)]
    results: dict = {}
    if keys:
        out = models.get("segment")([(work.load_image("upscale", k), boxes_of(ground, k))
                                     for k in keys])
        for k, r in zip(keys, out):
            reason = _skip(r)
            if reason:
                results[k] = {"skip": reason}
                continue
            masks = [np.asarray(m, bool) for m in r]
            if masks:
                work.save_masks(k, masks)
            results[k] = {"masks": len(masks), "empty": [i for i, m in enumerate(masks) if not m.any()]}
    work.write("segment", results)


def _source_text(s: Source, desc: dict | None) -> SourceText:
    caption = desc.get("caption") if desc and "skip" not in desc else None
    return SourceText(key=s.key, describe=caption or None, captions=s.captions,
                      caption_sources=s.caption_sources, b2c=s.b2c)


def plan_chunk(chunk: list[Source], work: ChunkWork, cfg, out_key: Callable) -> dict:
    """Variant plans of a chunk: boxes whose mask came out empty are not offered for editing."""
    desc, ground, seg = work.read("describe"), work.read("ground"), work.read("segment")
    alive = set(_alive(work.read("upscale")))
    plans: dict = {}
    skipped: dict = {}
    tally: Counter = Counter()  # modes drawn, inpaint modes that could not apply (and why)
    for s in chunk:
        if s.key not in alive:
            continue
        boxes = boxes_of(ground, s.key)
        sg = seg.get(s.key) or {}
        index = [i for i in range(len(boxes)) if "skip" not in sg and i < sg.get("masks", 0)
                 and i not in sg.get("empty", [])]
        got, why = plan_variants(_source_text(s, desc.get(s.key)), [boxes[i] for i in index],
                                 cfg.modes, seed=cfg.seed, out_key=out_key, tally=tally)
        # mask_boxes index the usable boxes; map them back to the mask files
        for p in got:
            p.mask_boxes = [index[j] for j in p.mask_boxes]
            plans[p.key] = p
        if why:
            skipped[s.key] = why
    return {"plans": plans, "plan_skips": skipped, "mode_tally": dict(sorted(tally.items()))}


def run_generate(models: StageModels, chunk: list[Source], work: ChunkWork, cfg,
                 out_key: Callable) -> None:
    from builders.synthetic.stages import generate as gen_mod
    from builders.synthetic.stages import segment as seg_mod

    planned = plan_chunk(chunk, work, cfg, out_key)
    plans: dict[str, VariantPlan] = planned["plans"]
    seg = work.read("segment")
    stacks: dict[str, np.ndarray] = {}  # parent -> its masks, decoded once for all its variants
    requests, order = [], []
    generator = models.get("generate") if plans else None
    trimmed: dict[str, bool] = {}  # the stage cuts a prompt longer than CLIP reads: recorded
    for k, p in plans.items():
        trimmed[k] = generator.fit_prompt(p.prompt)[1] or generator.fit_prompt(p.negative_prompt)[1]
        image = work.load_image("upscale", p.parent) if p.mode != "text2img" else None
        mask = None
        if p.mode.startswith("inpaint"):
            if p.parent not in stacks:
                stacks[p.parent] = work.load_masks(p.parent, seg[p.parent]["masks"],
                                                   shape=(image.height, image.width))
            binary = stacks[p.parent][p.mask_boxes].any(axis=0)
            mask = seg_mod.inpaint_mask(binary, dilate_px=cfg.segment.dilate_px,
                                        feather_px=cfg.segment.feather_px)
            work.save_image("generate", f"{k}-mask", mask)
        mode = "inpaint" if p.mode.startswith("inpaint") else p.mode
        requests.append(gen_mod.GenerateRequest(
            mode=mode, image=image, mask=mask, prompt=p.prompt, negative_prompt=p.negative_prompt,
            seed=p.seed, strength=p.strength, steps=p.steps, guidance=p.guidance,
            size=cfg.upscale.size))
        order.append(k)
    out = generator(requests) if requests else []
    results: dict = {}
    for k, r in zip(order, out):
        reason = _skip(r)
        if reason:
            results[k] = {"skip": reason, "parent": plans[k].parent}
        else:
            work.save_image("generate", k, r.convert("RGB"))
            results[k] = {**plans[k].to_dict(), "prompt_trimmed": trimmed[k]}
    work.write("generate", {"results": results, "plan_skips": planned["plan_skips"],
                            "mode_tally": planned["mode_tally"]})


def run_verify(models: StageModels, chunk: list[Source], work: ChunkWork, cfg) -> None:
    """Ground the edited object's label on each inpainted result, inside its mask or not."""
    from builders.synthetic.stages.ground import box_in_mask

    gen = work.read("generate")["results"]
    keys = [k for k, r in gen.items() if "skip" not in r and r["mode"].startswith("inpaint")]
    results: dict = {k: None for k, r in gen.items() if "skip" not in r}
    if cfg.verify.enabled and keys:
        def label(r):
            return r["new_label"] if r["mode"] == "inpaint_replace" else r["label"]

        out = models.get("ground")([(work.load_image("generate", k), [label(gen[k])]) for k in keys])
        for k, found in zip(keys, out):
            r = gen[k]
            mask = np.asarray(work.load_image("generate", f"{k}-mask")) > 0
            boxes = [] if _skip(found) else [_plain_box(b) for b in found]
            if cfg.verify.threshold:
                boxes = [b for b in boxes if b["score"] >= cfg.verify.threshold]
            hit = any(box_in_mask(b, mask) >= cfg.verify.min_inside for b in boxes)
            expect = "present" if r["mode"] == "inpaint_replace" else "absent"
            error = _skip(found)
            results[k] = {"label": label(r), "expect": expect, "found_in_mask": None if error else hit,
                          "ok": None if error else (hit if expect == "present" else not hit),
                          "boxes": boxes, "model": cfg.ground.model, "error": error}
    work.write("verify", results)


def _no_cfg(fn: Callable) -> Callable:
    """A stage runner that needs neither the config nor the key maker, in the registry's shape."""
    def run(models: StageModels, chunk: list[Source], work: ChunkWork, cfg, out_key: Callable) -> None:
        fn(models, chunk, work)
    return run


def _cfg_only(fn: Callable) -> Callable:
    def run(models: StageModels, chunk: list[Source], work: ChunkWork, cfg, out_key: Callable) -> None:
        fn(models, chunk, work, cfg)
    return run


# One runner per stage, all called as runner(models, chunk, work, cfg, out_key); a new stage is one
# entry here (and one name in config.STAGES), not a branch in run_stage.
STAGE_RUNNERS: dict[str, Callable] = {
    "upscale": _no_cfg(run_upscale), "describe": _no_cfg(run_describe),
    "ground": _cfg_only(run_ground), "segment": _no_cfg(run_segment),
    "generate": run_generate, "verify": _cfg_only(run_verify)}


def run_stage(stage: str, models: StageModels, chunk: list[Source], work: ChunkWork, cfg,
              out_key: Callable) -> None:
    """Run one stage over one chunk (its inputs read from the work folder)."""
    runner = STAGE_RUNNERS.get(stage)
    if runner is None:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_RUNNERS)}")
    runner(models, chunk, work, cfg, out_key)
