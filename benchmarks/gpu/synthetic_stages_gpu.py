"""Seconds per image and peak GPU memory of the five synthetic stages at full size, random weights.

    python benchmarks/gpu/synthetic_stages_gpu.py [--images 4] [--steps 28] [--out DIR]
    python benchmarks/gpu/synthetic_stages_gpu.py --smoke     # tiny models, CPU: checks the script

Nothing is downloaded: the full-size architectures (RRDBNet x4 64 filters x 23 blocks, Qwen2-VL-2B,
Grounding DINO-T, SAM ViT-H, an SD3.5-Medium-like transformer with SD3's VAE and CLIP-L/G, no T5)
are built at random weights in bf16 on the GPU, saved to a scratch folder and loaded back through
the stages' own loaders. The tokenizers are the tests' byte-level ones (token ids fit the real
vocabularies). Random weights make the outputs meaningless but the cost real; the VLM is kept from
stopping early so it always decodes ``--vlm-tokens`` tokens.

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

BF16 = torch.bfloat16


def build_models(d: Path, smoke: bool) -> dict:
    """Save every stage's weights under ``d``; return each stage's config."""
    from builders.synthetic.stages.segment import ARCH_DEFAULTS, ARCHS, build_sam

    dev = "cpu" if smoke else "cuda"
    torch.save({"params_ema": _rrdb_state(4, 8 if smoke else 64, 1 if smoke else 23)}, d / "esrgan_x4.pth")
    vlm, gd, sd3 = (make_tiny_qwen2vl(d / "vlm"), make_tiny_grounding_dino(d / "gd"), make_tiny_sd3(d / "sd3"))
    sam_spec = {**ARCH_DEFAULTS, **(TINY_SAM if smoke else ARCHS["vit_h"])}
    (d / "sam.json").write_text(json.dumps(sam_spec))
    with torch.device(dev):
        torch.save(build_sam(sam_spec).state_dict(), d / "sam.pth")
    if not smoke:
        _full_vlm(vlm, dev), _full_grounding_dino(gd, dev), _full_sd3(sd3, dev)
    return {
        "upscale": UpscaleConfig(model=str(d / "esrgan_x4.pth"), size=128 if smoke else 1024, batch_size=1),
        "describe": DescribeConfig(model=str(vlm), batch_size=1, max_new_tokens=ARGS.vlm_tokens,
                                   max_pixels=112 * 112 if smoke else 448 * 448),
        "ground": GroundConfig(model=str(gd), box_threshold=0.0, text_threshold=0.0, batch_size=1),
        "segment": SegmentConfig(model=str(d / "sam.pth"), arch=str(d / "sam.json"), batch_size=1),
        "generate": GenerateConfig(model=str(sd3), steps=ARGS.steps, size=128 if smoke else 1024, batch_size=1,
                                   max_sequence_length=8 if smoke else 256),
    }


def _full_vlm(path: Path, dev: str) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tiny = Qwen2VLConfig.from_pretrained(path)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True,
                         eos_token_id=151935, pad_token_id=tiny.text_config.pad_token_id),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=tiny.image_token_id, video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id, vision_end_token_id=tiny.vision_end_token_id)
    with torch.device(dev):
        m = Qwen2VLForConditionalGeneration._from_config(cfg, dtype=BF16)
    m.generation_config.eos_token_id = 151935  # an id the tokenizer never makes: decode every token
    m.save_pretrained(path)


def _full_grounding_dino(path: Path, dev: str) -> None:
    from transformers import AutoProcessor, GroundingDinoConfig, GroundingDinoForObjectDetection

    with torch.device(dev):  # the default config is Grounding DINO-T (Swin-T, BERT-base)
        GroundingDinoForObjectDetection._from_config(GroundingDinoConfig(), dtype=BF16).save_pretrained(path)
    proc = AutoProcessor.from_pretrained(path)
    proc.image_processor.size = {"shortest_edge": 800, "longest_edge": 1333}
    proc.save_pretrained(path)


def _full_sd3(path: Path, dev: str) -> None:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device(dev):
        SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                              num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                              pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                              dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
                              ).to(BF16).save_pretrained(path / "transformer")
        AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                      latent_channels=16, down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                      shift_factor=0.0609, scaling_factor=1.5035,
                      sample_size=1024).to(BF16).save_pretrained(path / "vae")
        for sub, (hidden, layers, heads) in (("text_encoder", (768, 12, 12)), ("text_encoder_2", (1280, 32, 20))):
            tiny = CLIPTextConfig.from_pretrained(path / sub)
            cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                                 num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                                 projection_dim=hidden, hidden_act="gelu", bos_token_id=tiny.bos_token_id,
                                 eos_token_id=tiny.eos_token_id, pad_token_id=tiny.pad_token_id)
            CLIPTextModelWithProjection._from_config(cfg, dtype=BF16).save_pretrained(path / sub)


def sources(n: int, smoke: bool) -> list[Image.Image]:
    ucm = sorted(p for p in (ROOT.parent.parent / "shared" / "data" / "ucm_sample").rglob("*")
                 if p.suffix.lower() in (".png", ".tif", ".jpg"))[:n]
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


def main() -> None:
    if not torch.cuda.is_available() and not ARGS.smoke:
        print("synthetic_stages_gpu: no CUDA device here; this benchmark needs one (use --smoke to check the "
              "script on CPU with tiny models). Skipped.")
        return
    device = "cuda" if torch.cuda.is_available() and not ARGS.smoke else "cpu"
    with tempfile.TemporaryDirectory(dir=ARGS.scratch) as tmp:
        t0 = time.perf_counter()
        cfgs = build_models(Path(tmp), ARGS.smoke)
        print(f"built and saved random-weight models in {time.perf_counter() - t0:.1f} s", flush=True)
        classes = {"upscale": Upscaler, "describe": Describer, "ground": Grounder, "segment": Segmenter,
                   "generate": SD3Generator}
        stages = {k: classes[k](cfgs[k], device=device) for k in classes}
        images = sources(ARGS.images, ARGS.smoke)
        report: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                        "images": len(images), "steps": ARGS.steps, "vlm_tokens": ARGS.vlm_tokens, "stages": {}}
        run_pass(stages, images, report["stages"])
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for s in stages.values():
            s.load()
        weights = torch.cuda.memory_allocated() / 2 ** 30 if device == "cuda" else None
        t0 = time.perf_counter()
        run_pass(stages, images, None)
        peak = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device == "cuda" else None
        report["resident"] = {"weights_gib": weights and round(weights, 2), "peak_gib": peak,
                              "s_per_image_all_stages": round((time.perf_counter() - t0) / len(images), 3)}
        print("resident:", report["resident"])
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
