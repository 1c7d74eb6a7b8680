"""Training throughput: Stage 2 LoRA (attention + MLP) vs. a stock open_clip full fine-tune, one run.

GPU (the real measurement): ViT-B-32, batch 256, bf16 autocast, AdamW, CLIP loss, random data.
    python -m benchmarks.bench_train        # full_ft, lora_eager, full_ft_compiled, lora_compiled
CPU smoke mode (tiny CLIP, eager only; says nothing about GPU speed):
    python -m benchmarks.bench_train --tiny

Ratios compare like with like: an eager LoRA run against the eager full fine-tune, a compiled LoRA
run against the compiled full fine-tune (compiling helps both sides; a compiled LoRA against an
eager baseline would credit LoRA with the compiler's gain).
Targets (GPU): LoRA >= 1.25x the stock full fine-tune samples/s, peak memory <= 10 GiB.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clip_models.attention import swap_attention
from clip_models.config import ModelConfig
from clip_models.loading import create_model
from clip_models.preprocess import image_size
from training.config import LoraConfig
from training.lora import apply_lora, mark_trainable
from training.losses import weighted_clip_loss

TINY_JSON = Path(__file__).resolve().parents[1] / "configs" / "models" / "tiny-clip.json"


def variant(base: torch.nn.Module, name: str) -> torch.nn.Module:
    """full_ft: stock model, everything trainable. lora_*: swapped attention + lean LoRA, frozen backbone."""
    model = copy.deepcopy(base)
    if name.startswith("full_ft"):
        return model.requires_grad_(True)
    swap_attention(model)
    apply_lora(model, LoraConfig())
    mark_trainable(model)
    return model


def run(model, *, batch: int, size: int, steps: int, warmup: int, device, amp_dtype, compile_: bool) -> dict:
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    fwd = torch.compile(_Wrapped(model)) if compile_ else _Wrapped(model)
    images = torch.randn(batch, 3, size, size, device=device)
    text = torch.randint(1, 49000, (batch, 77), device=device)
    text[:, -1] = 49407  # end-of-text has the highest id (argmax pooling)
    weights = torch.ones(batch, device=device)

    def step():
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            img, txt, scale = fwd(images, text)
            loss = weighted_clip_loss(img, txt, scale, weights)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_warm = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"samples_per_s": steps * batch / dt, "peak_gib": peak, "warmup_s": warm_s,
            "trainable": sum(p.numel() for p in params)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny CLIP on CPU (smoke mode)")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="full_ft,lora_eager,full_ft_compiled,lora_compiled")
    ap.add_argument("--out", default="bench_out/train")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.tiny:
        cfg = ModelConfig(name="tiny-clip", config_file=str(TINY_JSON))
        args.batch, args.steps, args.warmup = min(args.batch, 16), min(args.steps, 5), min(args.warmup, 1)
        args.variants = ",".join(v for v in args.variants.split(",") if not v.endswith("compiled"))
    else:
        cfg = ModelConfig(name=args.model)
        torch.backends.cuda.matmul.allow_tf32 = True
    results = run_variants(cfg, args.variants.split(","), batch=args.batch, steps=args.steps, warmup=args.warmup,
                           device=device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (tiny smoke mode, not a GPU figure)"
    print(f"{cfg.name} batch {args.batch}, {where}, bf16={device.type == 'cuda'}")
    for name, r in results.items():
        mem = f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a"
        ratio = "".join(f"{v:.2f}x {k}" for k, v in r["ratio_to"].items())
        print(f"  {name:14s} {r['samples_per_s']:9.1f} samples/s  peak {mem:9s} trainable {r['trainable']:>11,}  "
              f"warm-up {r['warmup_s']:.1f}s  {ratio}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"device": where, "args": vars(args), "results": results}, indent=2))
    return 0


def run_variants(cfg: ModelConfig, variants: list[str], *, batch: int, steps: int, warmup: int,
                 device: torch.device) -> dict[str, dict]:
    """Train each variant of ``cfg``'s model in turn (bf16 autocast on CUDA); its figures and ratio.

    A compiled variant gets at least 3 warm-up steps (compilation happens there). Each result
    holds ``ratio_to``: its samples/s over its baseline's (:func:`baseline_of`) when both ran.
    """
    amp = torch.bfloat16 if device.type == "cuda" else None
    base = create_model(cfg)
    size = image_size(base)
    results = {}
    for name in variants:
        model = variant(base, name)
        results[name] = run(model, batch=batch, size=size, steps=steps,
                            warmup=max(warmup, 3 if name.endswith("compiled") else 0),
                            device=device, amp_dtype=amp, compile_=name.endswith("compiled"))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for name, r in results.items():
        ref_name = baseline_of(name)
        ref = results.get(ref_name, {}).get("samples_per_s")
        r["ratio_to"] = {ref_name: r["samples_per_s"] / ref} if ref and ref_name != name else {}
    return results


def baseline_of(name: str) -> str:
    """The full fine-tune a variant is compared with: compiled against compiled, eager against eager."""
    return "full_ft_compiled" if name.endswith("compiled") else "full_ft"


class _Wrapped(torch.nn.Module):
    """One forward for torch.compile: (image features, text features, logit scale)."""

    def __init__(self, clip: torch.nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, images, text):
        return (F.normalize(self.clip.encode_image(images).float(), dim=-1),
                F.normalize(self.clip.encode_text(text).float(), dim=-1), self.clip.logit_scale.exp())


if __name__ == "__main__":
    raise SystemExit(main())
