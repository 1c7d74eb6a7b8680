"""The checks of the GPU acceptance run (:mod:`benchmarks.gpu.acceptance`), one function each.

Each takes a :class:`Ctx` and returns ``{"figures": {...}, "targets": [...], "headline": str}``;
a target is ``{"name", "target", "value", "pass"}`` with ``pass`` True, False, or None where it
cannot be judged on this device (a CPU has no GPU memory to measure). ``ctx.smoke`` runs the
same code on a CPU with tiny models and small sizes. The checks reuse the benchmark scripts'
functions and call the stages through their public classes, so they test what a user runs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LEVEL_TOLERANCE = 1.0   # mean |difference| in 8-bit levels that still counts as the same image


@dataclass
class Ctx:
    smoke: bool
    scratch: Path
    context: dict = field(default_factory=dict)   # figures of earlier checks (the trainer's samples/s)

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "cuda"


def target(name: str, value, goal: str, ok: bool | None) -> dict:
    """One target's record; ``value`` rounded for the table."""
    if isinstance(value, float):
        value = round(value, 3)
    return {"name": name, "target": goal, "value": value, "pass": ok}


def cpu_workers() -> int:
    """Loader / decode workers: every core but one (at least one)."""
    return max(1, (os.cpu_count() or 2) - 1)


def nvidia_smi(query: str) -> list[list[str]]:
    """Rows of ``nvidia-smi --query-gpu=QUERY`` (no CUDA call in this process); [] without it."""
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=60)
    return [[c.strip() for c in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]


# (a) ------------------------------------------------------------------------------------------
def check_pool(ctx: Ctx) -> dict:
    """The builders' local pool with one worker per visible GPU: each allocates on its own device."""
    from benchmarks.gpu.pool_probe import probe
    from builders.common.executors import run_units, visible_gpus

    if ctx.smoke:  # two pretend devices: the pinning is the same code, the allocation lands on the CPU
        os.environ["CUDA_VISIBLE_DEVICES"] = "0,1"
    uuids = {row[0]: row[1].removeprefix("GPU-") for row in nvidia_smi("index,uuid")}
    ids = visible_gpus()
    units = list(range(2 * max(1, len(ids))))
    done, errors = [], []
    t0 = time.perf_counter()
    run_units(probe, units, 0.5 if ctx.smoke else 3.0, executor="local", workers=0, gpus_per_task=1.0,
              on_done=done.append, on_error=lambda u, e: errors.append(f"unit {u}: {type(e).__name__}: {e}"))
    wall = time.perf_counter() - t0
    workers: dict[int, dict] = {}
    for r in done:
        workers.setdefault(r["pid"], {**r, "pins": set()})["pins"].add(r["pinned"])
    pinned = sorted(p for w in workers.values() for p in w["pins"])
    figures = {"visible_gpus": ids, "tasks": len(units), "done": len(done), "errors": errors, "wall_s": round(wall, 1),
               "workers": [{k: (sorted(v) if isinstance(v, set) else v) for k, v in w.items() if k != "unit"}
                           for w in workers.values()]}
    cuda = [w for w in workers.values() if w["device_count"]]
    targets = [
        target("every task allocated", f"{len(done)}/{len(units)}", "all, no error", len(done) == len(units)),
        target("one worker per GPU", f"{len(workers)} workers on {pinned}", f"{len(ids)} workers on {ids}",
               bool(ids) and pinned == sorted(ids) and all(len(w["pins"]) == 1 for w in workers.values())),
        target("a worker sees only its pinned device", [w["device_count"] for w in workers.values()],
               "device count 1, current device 0",
               all(w["device_count"] == 1 and w["current_device"] == 0 for w in cuda) and len(cuda) == len(workers)
               if not ctx.smoke else None),
        target("its device is the physical GPU it was pinned to", [w["uuid"] for w in workers.values()],
               "uuid = nvidia-smi's uuid of the pinned index",
               all(w["uuid"] and w["uuid"].removeprefix("GPU-") == uuids.get(next(iter(w["pins"])))
                   for w in workers.values()) if uuids and not ctx.smoke else None),
    ]
    head = ", ".join(f"pid {w['pid']}: CUDA_VISIBLE_DEVICES={sorted(w['pins'])} {w['tensor_device']} "
                     f"{w['allocated_gib']} GiB" for w in workers.values())
    return {"figures": figures, "targets": targets, "headline": head or f"no worker reported: {errors[:2]}"}


# (b) ------------------------------------------------------------------------------------------
class RecordingPipe:
    """Stands in for a diffusers pipeline: records each call (generator states included) and
    forwards it, so the same call can be replayed for its latents."""

    def __init__(self, pipe):
        self._pipe, self.calls = pipe, []

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, *args, **kw):
        gens = kw.get("generator")
        states = [g.get_state() for g in (gens if isinstance(gens, list) else [gens] if gens is not None else [])]
        self.calls.append((args, dict(kw), states))
        return self._pipe(*args, **kw)

    def replay_latents(self):
        """The last call again with ``output_type="latent"`` and the same generator states."""
        import torch

        args, kw, states = self.calls[-1]
        gens = kw.get("generator")
        fresh = [torch.Generator(g.device).set_state(s) for g, s in
                 zip(gens if isinstance(gens, list) else [gens], states)] if gens is not None else None
        kw = {**kw, "output_type": "latent",
              "generator": fresh if isinstance(gens, list) else (fresh[0] if fresh else None)}
        with torch.inference_mode():
            return self._pipe(*args, **kw).images


def decode_uint8(pipe, latents, *, shift: bool):
    """Latents to 8-bit RGB arrays as the pipelines post-process them, with or without the VAE shift."""
    import numpy as np
    import torch

    vae = pipe.vae
    z = latents / vae.config.scaling_factor + ((vae.config.shift_factor or 0.0) if shift else 0.0)
    with torch.inference_mode():
        img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
    arr = pipe.image_processor.postprocess(img, output_type="np")
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


def ensure_model(stage: str, models: Path, smoke: bool) -> Path:
    """The full-size model of ``stage`` under ``models`` (built once per scratch folder)."""
    from benchmarks.gpu.fullsize_models import FILES, save

    path, done = models / FILES[stage], models / f"{FILES[stage]}.done"
    if not done.exists():
        save(stage, models, device="cpu" if smoke else "cuda")
        done.touch()
    return path


def tiny_sd3_large_shift(d: Path) -> Path:
    """The tests' tiny SD3 with a VAE shift of 1.0: at 0.0609 a random tiny VAE's colours barely move,
    so the smoke could not tell a shifted decode from an unshifted one."""
    from tests.builders.synthetic.conftest import make_tiny_sd3

    if not (d / "model_index.json").exists():
        make_tiny_sd3(d)
        cfg_path = d / "vae" / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg_path.write_text(json.dumps({**cfg, "shift_factor": 1.0}))
    return d


def check_inpaint(ctx: Ctx) -> dict:
    """SD3 inpainting through the stage: its pixels inside the mask are decode(latents/scale + shift)."""
    import numpy as np
    import torch

    from benchmarks.gpu.synthetic_stages_gpu import sources
    from builders.synthetic.stages import GenerateConfig, GenerateRequest, SD3Generator, inpaint_mask

    size = 64 if ctx.smoke else 512
    path = tiny_sd3_large_shift(ctx.scratch / "tiny_sd3_shift") if ctx.smoke else \
        ensure_model("generate", ctx.scratch / "models", smoke=False)
    cfg = GenerateConfig(model=str(path), steps=2 if ctx.smoke else 8, size=size, batch_size=1,
                         **({"max_sequence_length": 8} if ctx.smoke else {}))
    stage = SD3Generator(cfg, device=ctx.device)
    cuda = ctx.device == "cuda"
    t0 = time.perf_counter()
    stage.load()
    load_s = time.perf_counter() - t0
    stage.pipes["inpaint"] = rec = RecordingPipe(stage.pipes["inpaint"])
    image = sources(1, smoke=False)[0].resize((size, size))
    box = np.zeros((size, size), bool)
    box[size // 4:3 * size // 4, size // 4:3 * size // 4] = True
    mask = inpaint_mask([box], dilate_px=size // 40, feather_px=size // 64)
    req = GenerateRequest(mode="inpaint", prompt="an aerial view of a swimming pool beside a house", seed=7,
                          image=image, mask=mask)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = stage([req])[0]
    gen_s = time.perf_counter() - t0
    if not rec.calls or not hasattr(out, "size"):
        raise RuntimeError(f"the stage returned {out!r} and made {len(rec.calls)} pipeline calls")
    latents = rec.replay_latents()
    shifted, plain = (decode_uint8(rec._pipe, latents, shift=s)[0].astype(np.int16) for s in (True, False))
    inside = np.asarray(mask) == 255  # the paste-back keeps the generated pixel exactly there
    got = np.asarray(out, dtype=np.int16)

    def mean_abs(a, b):
        return float(np.abs(a - b)[inside].mean())

    d_shift, d_plain, effect = mean_abs(got, shifted), mean_abs(got, plain), mean_abs(shifted, plain)
    figures = {"size": size, "steps": cfg.steps, "load_s": round(load_s, 1), "s_per_image": round(gen_s, 2),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
               "vae_shift_factor": rec._pipe.vae.config.shift_factor, "pixels_compared": int(inside.sum()),
               "mean_abs_to_shifted_decode": round(d_shift, 3), "mean_abs_to_unshifted_decode": round(d_plain, 3),
               "shift_effect_mean_abs": round(effect, 3), "pipeline_calls": len(rec.calls)}
    targets = [
        target("inpaint output = decode(lat/scale + shift)", d_shift, f"mean |diff| <= {LEVEL_TOLERANCE} level",
               d_shift <= LEVEL_TOLERANCE and d_shift < d_plain),
        target("the shift is visible at these weights", effect, f"mean |shifted - unshifted| > {LEVEL_TOLERANCE}",
               effect > LEVEL_TOLERANCE),
    ]
    stage.unload()
    head = (f"inside the mask: {d_shift:.2f} levels from the shifted decode, {d_plain:.2f} from the unshifted "
            f"(they differ by {effect:.2f}); {gen_s:.2f} s/image at {size} px, {cfg.steps} steps")
    return {"figures": figures, "targets": targets, "headline": head}


# (c) ------------------------------------------------------------------------------------------
def check_train(ctx: Ctx) -> dict:
    """bench_train: LoRA against the full fine-tune, compiled against compiled (eager on the smoke)."""
    import torch

    from benchmarks.bench_train import TINY_JSON, run_variants
    from clip_models.config import ModelConfig

    if ctx.smoke:
        cfg, variants, batch, steps, warmup = ModelConfig(name="tiny-clip", config_file=str(TINY_JSON)), \
            ["full_ft", "lora_eager"], 16, 2, 1
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        cfg, variants, batch, steps, warmup = ModelConfig(name="ViT-B-32"), \
            ["full_ft_compiled", "lora_compiled"], 256, 20, 3
    res = run_variants(cfg, variants, batch=batch, steps=steps, warmup=warmup, device=torch.device(ctx.device))
    full, lora = res[variants[0]], res[variants[1]]
    ratio = lora["samples_per_s"] / full["samples_per_s"]
    figures = {"model": cfg.name, "batch": batch, "steps": steps, "variants": res,
               "trainer_samples_per_s": lora["samples_per_s"]}
    peak = lora["peak_gib"]
    targets = [target(f"{variants[1]} / {variants[0]} samples/s", ratio, ">= 1.25x", ratio >= 1.25),
               target("LoRA peak GPU memory (GiB)", peak, "<= 10 GiB", None if peak is None else peak <= 10)]
    head = (f"{cfg.name} batch {batch}: full {full['samples_per_s']:.0f}, LoRA {lora['samples_per_s']:.0f} samples/s "
            f"({ratio:.2f}x), LoRA peak {peak if peak is None else round(peak, 1)} GiB")
    return {"figures": figures, "targets": targets, "headline": head}


# (d) ------------------------------------------------------------------------------------------
def check_quality(ctx: Ctx) -> dict:
    """bench_quality: the filter's phase 1 end to end against a bare ``encode_image`` loop."""
    from benchmarks.bench_quality import scorer_vs_encode_image

    if ctx.smoke:
        res = scorer_vs_encode_image("configs/models/tiny-clip.json", images=64, shards=2, image_px=64, batch=32,
                                     workers=1, device="cpu")
    else:  # the production filter's model and batch (configs/filter/default.yaml), random weights
        res = scorer_vs_encode_image("ViT-B-32-quickgelu", images=4096, shards=16, image_px=256, batch=256,
                                     workers=cpu_workers(), device="cuda")
    targets = [target("filter / bare encode_image", res["ratio"], ">= 0.8", res["ratio"] >= 0.8)]
    head = (f"{res['model']}: filter {res['filter_images_per_s']:.0f} images/s, bare encode_image "
            f"{res['bare_encode_image_per_s']:.0f} ({res['ratio']:.2f}x), {res['workers']} workers")
    return {"figures": res, "targets": targets, "headline": head}


# (e) ------------------------------------------------------------------------------------------
def check_loader(ctx: Ctx) -> dict:
    """bench_loader's Stage 2 loader feeding the device: batches moved there and normalised there."""
    import torch

    from benchmarks.bench_loader import make_shards, measure, stage2_loader

    if ctx.smoke:
        shards, per_shard, src_px, batch, workers, size, batches, warmup = 2, 32, 64, 16, 1, 56, 4, 1
    else:
        shards, per_shard, src_px, batch, workers, size, batches, warmup = 6, 200, 256, 256, cpu_workers(), 224, 40, 3
    dirs = {name: make_shards(ctx.scratch / "loader_shards", source=name, shards=shards, per_shard=per_shard,
                              size=src_px, quality=name == "synthetic") for name in ("real", "synthetic")}
    device = torch.device(ctx.device)
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=device).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=device).view(1, 3, 1, 1)

    def feed(b):  # what the trainer does with a batch: to the device, normalised there
        x = b["images"].to(device, non_blocking=True)
        b["text"].to(device, non_blocking=True)
        ((x.float() / 255.0 - mean) / std).sum().item()  # .item() waits for the device

    rate = measure(stage2_loader(dirs, batch=batch, workers=workers, size=size), batches=batches, warmup=warmup,
                   batch=batch, consume=feed)
    trainer = ctx.context.get("trainer_samples_per_s")
    figures = {"samples_per_s": rate, "batch": batch, "workers": workers, "image_px": size,
               "trainer_samples_per_s": trainer}
    targets = [target("loader samples/s, fed to the device", rate,
                      f"> the trainer's {trainer:.0f}" if trainer else "> the trainer's (train check gave none)",
                      rate > trainer if trainer else None)]
    head = (f"{rate:.0f} samples/s with {workers} workers, batch {batch}, against the trainer's "
            f"{f'{trainer:.0f}' if trainer else 'n/a'}")
    return {"figures": figures, "targets": targets, "headline": head}


# (f) ------------------------------------------------------------------------------------------
def check_synthetic(ctx: Ctx) -> dict:
    """synthetic_stages_gpu: s/image and peak memory per stage, one at a time and all resident."""
    from benchmarks.gpu.synthetic_stages_gpu import run

    if ctx.smoke:
        rep = run(images=2, steps=2, vlm_tokens=8, smoke=True, models_dir=ctx.scratch / "tiny_stages")
    else:
        rep = run(images=3, steps=28, vlm_tokens=96, smoke=False, models_dir=ctx.scratch / "models")
    bad = {k: [s for s in v["skips"] if s.startswith("error") or s == "out of memory"]
           for k, v in rep["stages"].items()}
    bad = {k: v for k, v in bad.items() if v}
    peaks = [v["peak_gib"] for v in rep["stages"].values() if v["peak_gib"] is not None]
    worst = max(peaks) if peaks else None
    targets = [target("stages ran without error or out-of-memory skips", bad or "none", "none", not bad),
               target("largest one-stage peak (GiB), resident off", worst, "<= 22 GiB (fits a 24 GB card)",
                      None if worst is None else worst <= 22)]
    head = "; ".join(f"{k} {v['s_per_image']} s/img {v['peak_gib']} GiB" for k, v in rep["stages"].items())
    head += f"; resident: {rep['resident']}"
    return {"figures": rep, "targets": targets, "headline": head}


CHECKS = {"pool": check_pool, "inpaint": check_inpaint, "train": check_train, "quality": check_quality,
          "loader": check_loader, "synthetic": check_synthetic}
WHAT = {"pool": "(a) pool workers allocate on their pinned GPU",
        "inpaint": "(b) SD3 inpaint decoded with the VAE shift",
        "train": "(c) LoRA against full fine-tune, ViT-B-32 batch 256 bf16 compiled",
        "quality": "(d) quality scorer against bare encode_image", "loader": "(e) Stage 2 loader feeding the GPU",
        "synthetic": "(f) synthetic stages at full size, resident off and on"}
