"""The five synthetic stages at full size, random weights, on the CPU: load time, peak RSS, s/image.

    python benchmarks/gpu/fullsize_cpu.py [--root /tmp/fullsize] [--stages upscale,describe,...]

Each stage's production architecture (RealESRGAN x4, Qwen2-VL-2B, Grounding DINO tiny, SAM ViT-H,
SD3.5-Medium without T5) is built at random weights and saved under ``--root`` as the real weights
ship (:mod:`benchmarks.gpu.fullsize_models`), then loaded back through the stage's own loader from
that local path, as a user's local copy is, and run on one small image (few steps, small size).
This proves shapes, dtypes and file layouts the tiny test models cannot; the outputs are noise.

Every build and every run is its own subprocess, one at a time, so the figures are one model's
alone and memory is bounded by the largest stage. Upscale, describe and generate run in bf16 (as
they do on a GPU; ``--dtype`` changes it); Grounding DINO and SAM keep their fp32 weights, as in
production. Built models are reused on later runs (``--rebuild`` to build again).
Writes ``<root>/results.json`` and ``<root>/results.md`` (the table it prints; stages measured
before under the same root keep their rows, so one stage can be rerun alone).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGES = ("upscale", "describe", "ground", "segment", "generate")
ARCH = {"upscale": "RealESRGAN x4 (RRDBNet 64x23)", "describe": "Qwen2-VL-2B-Instruct",
        "ground": "Grounding DINO tiny", "segment": "SAM ViT-H", "generate": "SD3.5-Medium, CLIP-L/G, no T5"}


def peak_rss_gb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)


def cpu_s() -> float:
    """CPU seconds of this process so far (all its threads): a figure other load on the machine
    does not inflate as it inflates wall time."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def disk_gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e9, 2)


def sample_image(side: int):
    """A UCM aerial tile when the shared sample is present, else seeded noise; ``side`` px square."""
    import numpy as np
    from PIL import Image

    from benchmarks.gpu.synthetic_stages_gpu import ucm_images

    ucm = ucm_images()
    if ucm:
        return Image.open(ucm[0]).convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8))


def stage_item(stage: str, size: int):
    """One small item of ``stage``'s kind."""
    import numpy as np

    from builders.synthetic.stages import GenerateRequest, inpaint_mask

    image = sample_image(size)
    if stage == "upscale":
        return sample_image(size // 4)
    if stage == "ground":
        return image, ["building", "car", "tree", "road"]
    if stage == "segment":
        return image, [[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]]
    if stage == "generate":
        box = np.zeros((size, size), bool)
        box[size // 4:size // 2, size // 4:size // 2] = True
        return GenerateRequest(mode="inpaint", prompt="an aerial view of a swimming pool beside a house", seed=0,
                               image=image, mask=inpaint_mask([box], dilate_px=12, feather_px=8))
    return image


def main_module(stage, name: str):
    """The loaded stage's main torch module (for its parameter count and dtype)."""
    return {"upscale": lambda: stage.model.model, "describe": lambda: stage.captioner.model,
            "ground": lambda: stage.model, "segment": lambda: stage.model,
            "generate": lambda: stage.pipes["text2img"].transformer}[name]()


def summary(name: str, result) -> str:
    """A few words on one result: that it is the right kind and shape."""
    from builders.synthetic.stages import is_skip

    if is_skip(result):
        return f"SKIP {result.reason}: {result.detail[:80]}"
    if name in ("upscale", "generate"):
        return f"{result.mode} image {result.size[0]}x{result.size[1]}"
    if name == "describe":
        return f"caption of {len(result.caption.split())} words, {len(result.objects)} objects"
    if name == "ground":
        return f"{len(result)} boxes"
    return f"{len(result)} masks of {result[0].shape[1]}x{result[0].shape[0]}" if result else "no masks"


def child_build(args) -> dict:
    from benchmarks.gpu.fullsize_models import FILES, save

    root = Path(args.root)
    t0 = time.perf_counter()
    path = save(args.stage, root / "models")
    return {"build_s": round(time.perf_counter() - t0, 1), "build_peak_rss_gb": peak_rss_gb(),
            "disk_gb": disk_gb(path), "path": str(path), "file": FILES[args.stage]}


def child_run(args) -> dict:
    import torch

    from benchmarks.gpu.fullsize_models import stage_configs
    from builders.synthetic.models import STAGE_CLASSES

    torch.manual_seed(0)
    cfg = stage_configs(Path(args.root) / "models", size=args.size, steps=args.steps, vlm_tokens=args.vlm_tokens,
                        dtype=args.dtype)[args.stage]
    module, cls = STAGE_CLASSES[args.stage]
    stage = getattr(__import__(module, fromlist=[cls]), cls)(cfg, device="cpu")
    item = stage_item(args.stage, args.size)
    t0 = time.perf_counter()
    stage.load()
    load_s = time.perf_counter() - t0
    net = main_module(stage, args.stage)
    times, cpu, out = [], [], None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), cpu_s()
        out = stage([item])[0]
        times.append(round(time.perf_counter() - t0, 2))
        cpu.append(round(cpu_s() - c0, 1))
    return {"load_s": round(load_s, 1), "s_first_image": times[0], "s_per_image": times[-1],
            "cpu_s_per_image": cpu[-1],
            "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
            "dtype": str(next(net.parameters()).dtype).removeprefix("torch."), "peak_rss_gb": peak_rss_gb(),
            "output": summary(args.stage, out), "threads": torch.get_num_threads()}


def run_child(kind: str, stage: str, args, out: Path) -> dict:
    """One build or run in a fresh interpreter; its JSON result, or the error it ended with."""
    cmd = [sys.executable, __file__, "--child", kind, "--stage", stage, "--root", args.root, "--size", str(args.size),
           "--steps", str(args.steps), "--vlm-tokens", str(args.vlm_tokens), "--repeats", str(args.repeats),
           "--dtype", args.dtype, "--child-out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind} ran past {args.timeout} s"}
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"{kind} exited {proc.returncode}: {' | '.join(tail)}"[:600]}
    res = json.loads(out.read_text())
    res[f"{kind}_wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def table(results: dict, args) -> str:
    """The markdown table of the per-stage figures."""
    head = ("| stage | architecture | params (M) | weights on disk (GB) | dtype | build s | load s | "
            "first image s | s/image | CPU s/image | peak RSS (GB) | output |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s, r in results.items():
        if "error" in r:
            lines.append(f"| {s} | {ARCH[s]} | | {r.get('disk_gb', '')} | | {r.get('build_s', '')} | "
                         f"| | | | | failed: {r['error']} |")
            continue
        lines.append(f"| {s} | {ARCH[s]} | {r['params_m']:,} | {r['disk_gb']} | {r['dtype']} "
                     f"| {r.get('build_s')} | {r['load_s']} | {r['s_first_image']} | {r['s_per_image']} "
                     f"| {r.get('cpu_s_per_image')} | {r['peak_rss_gb']} | {r['output']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="/tmp/fullsize", help="where the saved models and results go (~17 GB)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--size", type=int, default=256, help="image side the stages run at")
    ap.add_argument("--steps", type=int, default=2, help="SD3 steps (inpaint runs int(steps x 0.95) of them)")
    ap.add_argument("--vlm-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2, help="images per stage, one call each; the last is s/image")
    ap.add_argument("--dtype", default="bfloat16", help="dtype of upscale, describe and generate")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per build or run")
    ap.add_argument("--child", choices=("build", "run"), help=argparse.SUPPRESS)
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        res = child_build(args) if args.child == "build" else child_run(args)
        Path(args.child_out).write_text(json.dumps(res))
        return 0
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; choose from {STAGES}")
    root = Path(args.root)
    (root / "results").mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for s in stages:
        built = root / "results" / f"{s}-build.json"
        if args.rebuild or not built.is_file():
            built.unlink(missing_ok=True)
            b = run_child("build", s, args, built)
            print(f"{s}: built {b}", flush=True)
        else:
            b = {**json.loads(built.read_text()), "build_reused": True}
        r = b if "error" in b else {**b, **run_child("run", s, args, root / "results" / f"{s}-run.json")}
        print(f"{s}: {r}", flush=True)
        results[s] = r
    # stages run earlier under this root keep their rows (one stage at a time can be rerun)
    earlier = json.loads((root / "results.json").read_text())["stages"] if (root / "results.json").is_file() else {}
    results = {s: results.get(s, earlier.get(s)) for s in STAGES if s in results or s in earlier}
    md = table(results, args)
    meta = {"cpu_cores": os.cpu_count(), "load_average": os.getloadavg(), "size": args.size, "steps": args.steps,
            "vlm_tokens": args.vlm_tokens, "dtype": args.dtype, "date": time.strftime("%Y-%m-%d")}
    (root / "results.json").write_text(json.dumps({"meta": meta, "stages": results}, indent=2))
    (root / "results.md").write_text(md + "\n")
    print(md)
    return 1 if any("error" in results[s] for s in stages) else 0


if __name__ == "__main__":
    raise SystemExit(main())
