"""Seconds per image and peak GPU memory of the five synthetic stages at full size, random weights.

    python benchmarks/gpu/synthetic_stages_gpu.py [--images 4] [--steps 28] [--out DIR]
    python benchmarks/gpu/synthetic_stages_gpu.py --smoke     # tiny models, CPU: checks the script

Nothing is downloaded: the full-size architectures (RRDBNet x4 64 filters x 23 blocks, Qwen2-VL-2B,
Grounding DINO-T, SAM ViT-H, SD3.5-Medium with SD3's VAE and CLIP-L/G, no T5) are built at random
weights on the GPU and saved as the real weights ship (:mod:`benchmarks.gpu.fullsize_models`, with
tokenizers built from local files), then loaded back through the stages' own loaders. Random
weights make the outputs meaningless but the cost real (a random VLM rarely emits its end token,
so it decodes about ``--vlm-tokens`` tokens).

Per stage: load seconds, seconds per image (after one warm-up batch), peak memory while it runs.
Then "resident": all five loaded at once, their weights' memory and the peak of one pass.
Without CUDA it prints why and exits 0 (unless ``--smoke``). Results: <out>/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from builders.synthetic.stages import (  # noqa: E402
    DescribeConfig,
    Describer,
    GenerateConfig,
    GenerateRequest,
    GroundConfig,
    Grounder,
    SD3Generator,
    SegmentConfig,
    Segmenter,
    UpscaleConfig,
    Upscaler,
    inpaint_mask,
    is_skip,
)
from tests.builders.conftest import make_tiny_qwen2vl  # noqa: E402
from tests.builders.synthetic.conftest import TINY_SAM, _rrdb_state, make_tiny_grounding_dino, make_tiny_sd3  # noqa: E402


def build_models(d: Path, smoke: bool, *, steps: int, vlm_tokens: int) -> dict:
    """Save every stage's weights under ``d`` (skipped where already there); return each stage's config.

    Full size: the production architectures of :mod:`benchmarks.gpu.fullsize_models`, built on the
    GPU. Smoke: the tests' tiny models.
    """
    if not smoke:
        from benchmarks.gpu.fullsize_models import FILES, save, stage_configs

        for stage in FILES:
            done = d / f"{FILES[stage]}.done"  # a build cut short is built again
            if not done.exists():
                save(stage, d, device="cuda")
                done.touch()
        cfgs = stage_configs(d, size=1024, steps=steps, vlm_tokens=vlm_tokens)
        # random weights pass no threshold: keep every box, so SAM gets up to 20 boxes as on real tiles
        cfgs["ground"].box_threshold = cfgs["ground"].text_threshold = 0.0
        return cfgs
    from builders.synthetic.stages.segment import ARCH_DEFAULTS, build_sam

    d.mkdir(parents=True, exist_ok=True)
    if not (d / "sd3").exists():
        torch.save({"params_ema": _rrdb_state(4, 8, 1)}, d / "esrgan_x4.pth")
        make_tiny_qwen2vl(d / "vlm"), make_tiny_grounding_dino(d / "gd")
        (d / "sam.json").write_text(json.dumps({**ARCH_DEFAULTS, **TINY_SAM}))
        torch.save(build_sam({**ARCH_DEFAULTS, **TINY_SAM}).state_dict(), d / "sam.pth")
        make_tiny_sd3(d / "sd3")
    return {
        "upscale": UpscaleConfig(model=str(d / "esrgan_x4.pth"), size=128, batch_size=1),
        "describe": DescribeConfig(model=str(d / "vlm"), batch_size=1, max_new_tokens=vlm_tokens,
                                   max_pixels=112 * 112),
        "ground": GroundConfig(model=str(d / "gd"), box_threshold=0.0, text_threshold=0.0, batch_size=1),
        "segment": SegmentConfig(model=str(d / "sam.pth"), arch=str(d / "sam.json"), batch_size=1),
        "generate": GenerateConfig(model=str(d / "sd3"), steps=steps, size=128, batch_size=1, max_sequence_length=8),
    }


def ucm_images() -> list[Path]:
    """The shared UCM sample's images (``UCM_SAMPLE`` or ``shared/data/ucm_sample`` beside the checkout)."""
    import os

    for d in ([Path(os.environ["UCM_SAMPLE"])] if os.environ.get("UCM_SAMPLE") else []) + \
            [ROOT.parent / "shared" / "data" / "ucm_sample", ROOT.parent.parent / "shared" / "data" / "ucm_sample"]:
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in (".png", ".tif", ".jpg"))
        if found:
            return found
    return []


def sources(n: int, smoke: bool) -> list[Image.Image]:
    """``n`` source tiles: UCM images when present, else seeded noise (32 px smoke, 256 px else)."""
    ucm = ucm_images()[:n]
    side = 32 if smoke else 256
    if ucm:
        return [Image.open(p).convert("RGB").resize((side, side)) for p in ucm]
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (side, side, 3), dtype=np.uint8))
            for i in range(n)]


def timed(stage, items: list) -> tuple[list, dict]:
    """Load, warm up on one item, then time the rest one call per item."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(), torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    stage.load()
    load_s = time.perf_counter() - t0
    out = stage(items[:1])
    t0 = time.perf_counter()
    out += stage(items[1:])
    if cuda:
        torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / max(1, len(items) - 1)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None
    skips = [o.reason for o in out if is_skip(o)]
    return out, {"load_s": round(load_s, 2), "s_per_image": round(per, 3), "peak_gib": peak and round(peak, 2),
                 "skips": skips}


def run_pass(stages: dict, images: list[Image.Image], report: dict | None) -> None:
    """The five stages in order on ``images``; per-stage figures into ``report`` when given."""
    def go(name, items, unload):
        if report is None:
            return stages[name](items)
        out, fig = timed(stages[name], items)
        if report is not None:
            report[name] = fig
            print(f"{name:9s} load {fig['load_s']:6.2f} s  {fig['s_per_image']:7.3f} s/image  "
                  f"peak {fig['peak_gib']} GiB  skips {fig['skips']}", flush=True)
        if unload:
            stages[name].unload()
        return out

    unload = report is not None  # one stage at a time, as the builder's chunked schedule does
    up = go("upscale", images, unload)
    go("describe", up, unload)
    labels = ["building", "car", "tree", "road"]
    boxes = go("ground", [(im, labels) for im in up], unload)
    boxes = [b[:20] if isinstance(b, list) and b else [[0.3, 0.3, 0.6, 0.6]] for b in boxes]
    masks = go("segment", list(zip(up, boxes)), unload)
    reqs = [GenerateRequest(mode="inpaint", prompt="an aerial view of a swimming pool", seed=i, image=im,
                            mask=inpaint_mask(m[:1] if isinstance(m, list) and m else [np.ones(im.size[::-1], bool)],
                                              dilate_px=12, feather_px=8))
            for i, (im, m) in enumerate(zip(up, masks))]
    go("generate", reqs, unload)


def run(*, images: int, steps: int, vlm_tokens: int, smoke: bool, models_dir: Path | None = None,
        scratch: str | None = None) -> dict:
    """Per-stage figures (one model loaded at a time), then all five resident; the report dict.

    ``models_dir``: where the weights are (built there first when missing); else a temporary folder.
    """
    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        t0 = time.perf_counter()
        cfgs = build_models(models_dir or Path(tmp), smoke, steps=steps, vlm_tokens=vlm_tokens)
        build_s = round(time.perf_counter() - t0, 1)
        print(f"built (or found) random-weight models in {build_s} s", flush=True)
        classes = {"upscale": Upscaler, "describe": Describer, "ground": Grounder, "segment": Segmenter,
                   "generate": SD3Generator}
        stages = {k: classes[k](cfgs[k], device=device) for k in classes}
        imgs = sources(images, smoke)
        report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "build_s": build_s,
                        "images": len(imgs), "steps": steps, "vlm_tokens": vlm_tokens, "stages": {}}
        run_pass(stages, imgs, report["stages"])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for s in stages.values():
            s.load()
        weights = torch.cuda.memory_allocated() / 2 ** 30 if device == "cuda" else None
        t0 = time.perf_counter()
        run_pass(stages, imgs, None)
        peak = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device == "cuda" else None
        report["resident"] = {"weights_gib": weights and round(weights, 2), "peak_gib": peak,
                              "s_per_image_all_stages": round((time.perf_counter() - t0) / len(imgs), 3)}
        print("resident:", report["resident"])
        for s in stages.values():
            s.unload()
    return report


def main() -> None:
    if not torch.cuda.is_available() and not ARGS.smoke:
        print("synthetic_stages_gpu: no CUDA device here; this benchmark needs one (use --smoke to check the "
              "script on CPU with tiny models). Skipped.")
        return
    report = run(images=ARGS.images, steps=ARGS.steps, vlm_tokens=ARGS.vlm_tokens, smoke=ARGS.smoke,
                 scratch=ARGS.scratch)
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--vlm-tokens", type=int, default=128)
    ap.add_argument("--out", default="benchmarks/results/synthetic_stages_gpu")
    ap.add_argument("--scratch", default=None, help="folder for the saved random weights (~15 GB)")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU: checks the script, not the speed")
    ARGS = ap.parse_args()
    if ARGS.smoke:
        ARGS.steps, ARGS.vlm_tokens, ARGS.images = min(ARGS.steps, 2), min(ARGS.vlm_tokens, 8), min(ARGS.images, 2)
    main()
