"""Synthetic builder against a bare loop over the same five models, and 2 workers against 1.

    python benchmarks/bench_synthetic.py [--images 16] [--per-shard 4] [--repeats 2]

Tiny random-weight models of all five stages on the CPU (scripts/tiny_synthetic_models.py),
real tiny shards built by builders.real from the demo tiles. Figures (source images/s):

- bare: one process, each model loaded once, called stage by stage on the same chunks of the
  same images in the same batch sizes as the builder, the generation requests planned the same
  way, results kept in memory (no work folder, no shard, no JPEG);
- builder, 1 worker, ``resident=true`` (each model loaded once per worker, as in bare): target
  builder / bare >= 0.85; the default (one model at a time, reloaded per shard) is shown too;
- builder, 2 workers against 1 worker: target >= 1.7x; in this process (1 worker runs in it,
  warm; 2 workers start a fork server that imports the stage libraries once, then each loads
  its models) and as fresh ``python -m builders.synthetic`` processes, each paying its own
  start-up, as a user runs it, at ``--images`` and at three times as many. The slope between the
  two sizes is the rate once start-up is paid ("past start-up"): with the tiny models a source
  image costs about 0.15 s, so imports and model loading (several seconds per worker) dominate
  small runs; with SD3.5 at about 10 s per image, they do not. ``--images 200`` (and 600) is
  the size at which end to end shows the scaling here: start-up is about 7 s either way.
Every run uses one torch thread per worker, so 2 workers use the two cores 1 worker leaves
half idle. What the machine itself allows: two fresh processes each running the bare loop on
the large set at once, against one ("ceiling"); on a 2-vCPU VM two busy vCPUs may share one
physical core, and the builder cannot scale past that. Each figure is the best of interleaved
rounds: on a shared machine the best round is the least disturbed one.
Results: <out>/results.json and <out>/results.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_synthetic_models import overrides, write_tiny_models  # noqa: E402

from builders.demo_images import make_demo_tree  # noqa: E402
from builders.real.build import build_real  # noqa: E402
from builders.real.config import RealBuildConfig  # noqa: E402
from builders.synthetic import pipeline, sources  # noqa: E402
from builders.synthetic.build import build_synthetic  # noqa: E402
from builders.synthetic.config import SyntheticBuildConfig  # noqa: E402
from builders.synthetic.models import STAGE_CLASSES  # noqa: E402
from builders.synthetic.modes import SourceText, plan_variants  # noqa: E402
from builders.synthetic.unit import load_sources, out_key  # noqa: E402
from wds_tools.config import load_config  # noqa: E402
from wds_tools.skips import SkipLog  # noqa: E402

TINY = REPO / "configs" / "build" / "synthetic-tiny.yaml"


def _stage(cfg, name: str):
    import importlib

    module, cls = STAGE_CLASSES[name]
    return getattr(importlib.import_module(module), cls)(getattr(cfg, name), device=cfg.device).load()


def bare_loop(cfg: SyntheticBuildConfig) -> float:
    """Source images/s of the five models called directly, chunk by chunk, stage by stage."""
    import numpy as np

    from builders.synthetic.stages.base import is_skip
    from builders.synthetic.stages.generate import GenerateRequest
    from builders.synthetic.stages.segment import inpaint_mask

    start = time.perf_counter()
    st = {n: _stage(cfg, n) for n in STAGE_CLASSES}
    n_images = 0
    for unit in sources.plan(cfg):
        srcs = load_sources(unit, cfg, SkipLog())
        n_images += len(srcs)
        for i in range(0, len(srcs), cfg.chunk_size):
            chunk = srcs[i:i + cfg.chunk_size]
            ups = st["upscale"]([s.image for s in chunk])
            descs = st["describe"](ups)
            objs = [pipeline.objects_of(None if is_skip(d) else {"objects": d.objects}, s, cfg)
                    for s, d in zip(chunk, descs)]
            todo = [j for j, o in enumerate(objs) if o]
            found = st["ground"]([(ups[j], objs[j]) for j in todo])
            boxes = {j: ([pipeline._plain_box(b) for b in f] if not is_skip(f) else [])
                     for j, f in zip(todo, found)}
            with_boxes = [j for j in todo if boxes[j]]
            masks = dict(zip(with_boxes, st["segment"]([(ups[j], boxes[j]) for j in with_boxes])))
            reqs, req_masks = [], []
            for j, s in enumerate(chunk):
                text = SourceText(key=s.key, describe=None if is_skip(descs[j]) else descs[j].caption,
                                  captions=s.captions, caption_sources=s.caption_sources, b2c=s.b2c)
                ms = masks.get(j)
                usable = [k for k in range(len(boxes.get(j, []))) if ms is not None
                          and not is_skip(ms) and np.asarray(ms[k]).any()]
                plans, _ = plan_variants(text, [boxes[j][k] for k in usable], cfg.modes,
                                         seed=cfg.seed, out_key=out_key)
                for p in plans:
                    mask = None
                    if p.mode.startswith("inpaint"):
                        union = np.logical_or.reduce([np.asarray(ms[usable[k]], bool) for k in p.mask_boxes])
                        mask = inpaint_mask(union, dilate_px=cfg.segment.dilate_px,
                                            feather_px=cfg.segment.feather_px)
                    reqs.append(GenerateRequest(
                        mode="inpaint" if mask is not None else p.mode, image=None if p.mode == "text2img" else ups[j],
                        mask=mask, prompt=p.prompt, negative_prompt=p.negative_prompt, seed=p.seed,
                        strength=p.strength, steps=p.steps, guidance=p.guidance, size=cfg.upscale.size))
                    req_masks.append((p, mask))
            results = st["generate"](reqs) if reqs else []
            check = [(r, [p.new_label or p.label]) for r, (p, m) in zip(results, req_masks)
                     if m is not None and not is_skip(r)]
            if check and cfg.verify.enabled:
                st["ground"](check)
    for s in st.values():
        s.unload()
    return n_images / (time.perf_counter() - start)


def build_rate(cfg_args: list[str], out: Path, *extra: str) -> float:
    """Source images/s of build_synthetic in this process; each run loads its models (as bare does)."""
    from builders.synthetic import models as stage_models

    stage_models._RESIDENT.clear()
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(SyntheticBuildConfig, TINY, [*cfg_args, f"output={out}", *extra])
    t = time.perf_counter()
    summary = build_synthetic(cfg, progress=False)
    return summary["source_images"] / (time.perf_counter() - t)


def real_set(out: Path, images: int, per_shard: int) -> Path:
    """A real set of ``images`` demo tiles (originals only), built once."""
    real = out / f"real_{images}"
    if not (real / "train" / "dataset.json").exists():
        tree = make_demo_tree(out / f"tiles_{images}", per_class=-(-images // 5), size=48, seed=11)
        build_real(load_config(RealBuildConfig, REPO / "configs" / "build" / "real.yaml", [
            f"input={tree}", f"output={real}", "size=48", f"images_per_shard={per_shard}",
            "workers=1", "augment.per_image=0", "zoom.enabled=false", "preview=false"]), progress=False)
    return real


def fresh_seconds(cfg_args: list[str], out: Path, *extra: str) -> float:
    """Wall seconds of ``python -m builders.synthetic`` as a user runs it: a new process that
    pays its own imports, model loading and (with workers > 1) the fork server's preload."""
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "builders.synthetic", "--config", str(TINY), *cfg_args,
                    f"output={out}", *extra], check=True, capture_output=True, env=env, cwd=REPO, timeout=3600)
    return time.perf_counter() - t


def parallel_bare_seconds(n: int, cfg_args: list[str]) -> float:
    """Wall seconds of ``n`` fresh processes running the bare loop at once, each on all the images:
    independent copies of the same work, with no builder to coordinate, so ``n`` times the one
    process's seconds over this is what this machine gives ``n`` processes at best."""
    import subprocess
    import tempfile

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--bare-child", json.dumps(cfg_args)]
    # stderr to files, not pipes: the libraries' warnings fill a pipe read only after the first
    # child ends, and the others would block on it (that measured 1.2x instead of 2.0x)
    logs = [tempfile.TemporaryFile() for _ in range(n)]
    t = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f) for f in logs]
    for p in procs:
        p.wait(timeout=3600)
    seconds = time.perf_counter() - t
    for p, f in zip(procs, logs):
        f.seek(0)
        if p.returncode:
            raise RuntimeError(f"bare child failed (rc {p.returncode}): {f.read().decode()[-1500:]}")
        f.close()
    return seconds


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["bare", "builder_1w_resident", "builder_1w", "builder_2w", "marginal_1w", "marginal_2w"]
    vals = [r[k] for k in names]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(names, vals, color=["grey", "tab:blue", "tab:orange", "tab:green", "tab:orange", "tab:green"])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("source images / s")
    ax.set_title(f"synthetic builder (tiny models, CPU): builder/bare = {r['ratio_builder_vs_bare']:.2f}; "
                 f"2w/1w: {r['scaling_2w_vs_1w']:.2f}x in process, fresh processes "
                 f"{r['scaling_fresh_2w_vs_1w']:.2f}x ({r['images']} images), "
                 f"{r['scaling_fresh_large_2w_vs_1w']:.2f}x ({r['images_large']}), "
                 f"{r['scaling_marginal_2w_vs_1w']:.2f}x past start-up", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=16, help="source images (train originals)")
    ap.add_argument("--per-shard", type=int, default=4, help="source images per shard (unit)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench_out/synthetic")
    ap.add_argument("--bare-child", help=argparse.SUPPRESS)  # config overrides (JSON): one bare loop
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if args.bare_child:
        bare_loop(load_config(SyntheticBuildConfig, TINY, json.loads(args.bare_child)))
        return {}
    out = Path(args.out)
    models = write_tiny_models(out / "models")
    small, large = real_set(out, args.images, args.per_shard), real_set(out, 3 * args.images, args.per_shard)
    common = [*overrides(models), "device=cpu", "cpu_threads=1", "preview=false"]
    base = [f"input={small / 'train'}", *common]
    bare_cfg = load_config(SyntheticBuildConfig, TINY, [*base, f"output={out / 'unused'}"])
    bare_loop(bare_cfg)  # warm imports and the page cache
    r = {"images": sum(len(u) for u in sources.plan(bare_cfg)), "images_large": 3 * args.images,
         "per_shard": args.per_shard, "repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)),
         "load_avg_before": round(os.getloadavg()[0], 2)}
    big = [f"input={large / 'train'}", *common]
    runs = {"bare": lambda: bare_loop(bare_cfg),
            "builder_1w_resident": lambda: build_rate(base, out / "b1r", "workers=1", "resident=true"),
            "builder_1w": lambda: build_rate(base, out / "b1", "workers=1", "resident=false"),
            "builder_2w": lambda: build_rate(base, out / "b2", "workers=2", "resident=true"),
            "fresh_1w": lambda: fresh_seconds(base, out / "f1", "workers=1"),
            "fresh_2w": lambda: fresh_seconds(base, out / "f2", "workers=2"),
            "fresh_1w_large": lambda: fresh_seconds(big, out / "f1l", "workers=1"),
            "fresh_2w_large": lambda: fresh_seconds(big, out / "f2l", "workers=2"),
            "fresh_bare_x1": lambda: parallel_bare_seconds(1, [*big, f"output={out / 'unused'}"]),
            "fresh_bare_x2": lambda: parallel_bare_seconds(2, [*big, f"output={out / 'unused'}"])}
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for k, run in runs.items():
            v = run()  # rates: the highest is best; fresh_* are seconds: the lowest is
            best[k] = v if k not in best else (min(best[k], v) if k.startswith("fresh") else max(best[k], v))
    r.update(best)
    r["load_avg_after"] = round(os.getloadavg()[0], 2)
    r["ratio_builder_vs_bare"] = r["builder_1w_resident"] / r["bare"]
    r["ratio_builder_default_vs_bare"] = r["builder_1w"] / r["bare"]
    r["scaling_2w_vs_1w"] = r["builder_2w"] / r["builder_1w_resident"]
    r["scaling_fresh_2w_vs_1w"] = r["fresh_1w"] / r["fresh_2w"]
    r["scaling_fresh_large_2w_vs_1w"] = r["fresh_1w_large"] / r["fresh_2w_large"]
    # the slope between the two sizes: images/s once start-up (imports, model loading) is paid
    extra = r["images_large"] - r["images"]
    for w in ("1w", "2w"):
        r[f"marginal_{w}"] = extra / max(r[f"fresh_{w}_large"] - r[f"fresh_{w}"], 1e-9)
        r[f"startup_{w}_s"] = r[f"fresh_{w}"] - r["images"] / r[f"marginal_{w}"]
    r["scaling_marginal_2w_vs_1w"] = r["marginal_2w"] / r["marginal_1w"]
    # this machine's ceiling: two independent bare loops at once against one (fresh processes)
    r["ceiling_2_procs_vs_1"] = 2 * r["fresh_bare_x1"] / r["fresh_bare_x2"]
    for k, v in r.items():
        print(f"{k:32s} {v:10.3f}" if isinstance(v, float) else f"{k:32s} {v}")
    ok = lambda x: "met" if x >= 1.7 else "NOT met"  # noqa: E731
    print(f"target builder/bare >= 0.85: {'met' if r['ratio_builder_vs_bare'] >= 0.85 else 'NOT met'}; "
          f"target 2w/1w >= 1.7: in process {ok(r['scaling_2w_vs_1w'])}, fresh processes "
          f"{ok(r['scaling_fresh_2w_vs_1w'])} ({r['images']} images), {ok(r['scaling_fresh_large_2w_vs_1w'])} "
          f"({r['images_large']}), past start-up {ok(r['scaling_marginal_2w_vs_1w'])}; two independent "
          f"bare loops reach {r['ceiling_2_procs_vs_1']:.2f}x one here "
          f"(load average {r['load_avg_before']} -> {r['load_avg_after']} on {r['cpus']} CPUs)")
    (out / "results.json").write_text(json.dumps(r, indent=2))
    plot(r, out / "results.png")
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    return r


if __name__ == "__main__":
    main()
