"""Real-set builder throughput and scaling, measured side by side in one run.

    python benchmarks/bench_real_builder.py [--images 1000] [--full-images 640] [--repeats 3]

Figures (source images/s):
- bare: one process, decode -> centre square -> resize to 256 -> JPEG encode, nothing else
  (the same primitives the builder uses, so the ratio isolates the builder's own overhead);
- (a) originals only (no augmentation, M2B, zoom), 1 worker: target a / bare >= 0.8;
- (b) the full default recipe (5 augmentations, M2B/B2C, zoom crops), 1 worker;
- (b) with 2 workers against 1: target >= 1.7x on a 2-core machine;
- (b) with ``augment.spread_shards=1`` (a source's samples in one shard), 1 worker: the cost of
  spreading a source over shards (each extra shard decodes it again), as full_1w / this;
- (b) as two fresh processes, each a 1-worker build of half the images, run at once, against one
  fresh 1-worker process building all of them: the scaling two independent builds get, with
  no pool at all. A pool that scales worse than this pays an extra cost per image.
Each figure is the best of interleaved repeats (see best_of). Anything else running on the
machine lowers the 2-worker figure most: check the load average before trusting it.
Source images are procedural aerial-like JPEGs (builders.demo_images) written at --source-size.
Results go to <out>/results.json and <out>/results.png.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders.common.inputs import load_rgb  # noqa: E402
from builders.demo_images import CLASSES, draw_tile  # noqa: E402
from builders.real.augment import center_square, resize_square  # noqa: E402
from builders.real.build import build_real  # noqa: E402
from builders.real.config import RealBuildConfig  # noqa: E402
from wds_tools.config import load_config  # noqa: E402
from wds_tools.malloc import keep_freed_memory  # noqa: E402
from wds_tools.sample import encode_image  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "build" / "real.yaml"


def make_sources(root: Path, n: int, size: int) -> list[Path]:
    paths = []
    for i in range(n):
        cls = CLASSES[i % len(CLASSES)]
        p = root / cls / f"{cls}_{i:04d}.jpg"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            draw_tile(cls, i, size=size, seed=7).save(p, quality=95)
        paths.append(p)
    return paths


CPU_USED: dict[str, float] = {}  # run label -> CPU seconds of its best round


def _cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine (/proc/stat), else of this process and its children.

    Pool workers are children of a fork server, not of this process, so per-process accounting
    would miss them; the machine-wide figure counts them, and also anything else running, which is
    why the load average is printed beside it.
    """
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle, iowait
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def bare_loop(paths: list[Path], size: int = 256, quality: int = 90) -> float:
    """images/s of decode-resize-encode alone."""
    c, t = _cpu_seconds(), time.perf_counter()
    for p in paths:
        img = resize_square(center_square(load_rgb(p, draft_size=size)), size)
        encode_image(img, ext="jpg", quality=quality)
    wall, cpu = time.perf_counter() - t, _cpu_seconds() - c
    if len(paths) / wall > CPU_USED.get("bare:rate", 0.0):
        CPU_USED["bare"], CPU_USED["bare:rate"], CPU_USED["bare:wall"] = cpu, len(paths) / wall, wall
    return len(paths) / wall


def build_rate(src: Path, out: Path, n: int, *overrides: str, label: str = "", n_is_int: bool = False) -> float:
    n = int(n) if n_is_int else n
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(RealBuildConfig, CONFIG, [f"input={src}", f"output={out}", *overrides])
    c, t = _cpu_seconds(), time.perf_counter()
    build_real(cfg, progress=False)
    wall, cpu = time.perf_counter() - t, _cpu_seconds() - c
    if label and (label not in CPU_USED or n / wall > CPU_USED[label + ":rate"]):
        CPU_USED[label], CPU_USED[label + ":rate"], CPU_USED[label + ":wall"] = cpu, n / wall, wall
    return n / wall


_FRESH = """
import sys, time
sys.path.insert(0, {repo!r})
from benchmarks.bench_real_builder import build_rate
print(build_rate(*sys.argv[1:4], *sys.argv[4:], n_is_int=True))
"""


def fresh_processes(srcs: list[Path], outs: list[Path], n_each: int, *overrides: str) -> float:
    """Source images/s of ``len(srcs)`` fresh interpreters building at once, one folder each.

    Each child times its own build (imports and interpreter start-up excluded); the combined rate
    is all images over the slowest child's build time.
    """
    import subprocess

    code = _FRESH.format(repo=str(Path(__file__).resolve().parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(src), str(out), str(n_each), *overrides],
                              stdout=subprocess.PIPE, text=True) for src, out in zip(srcs, outs)]
    rates = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"fresh build process failed with exit code {proc.returncode}")
        rates.append(float(stdout.strip().splitlines()[-1]))
    slowest_s = max(n_each / r for r in rates)
    return n_each * len(procs) / slowest_s


def split_sources(src: Path, halves: int) -> list[Path]:
    """``halves`` folders of links to every ``halves``-th image of ``src`` (same class tree)."""
    files = sorted(p for p in src.rglob("*.jpg"))
    dirs = []
    for h in range(halves):
        d = src.with_name(f"{src.name}_part{h}of{halves}")
        for p in files[h::halves]:
            link = d / p.relative_to(src)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(p.resolve())
        dirs.append(d)
    return dirs


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["bare", "originals_1w", "full_1w", "full_2w", "fresh_1proc", "fresh_2proc"]
    vals = [results[k] for k in names]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(names, vals, color=["grey", "tab:blue", "tab:orange", "tab:green", "tab:orange", "tab:green"])
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    ax.set_ylabel("source images / s")
    ax.set_title(f"real builder: a/bare = {results['ratio_originals_vs_bare']:.2f}, "
                 f"2w/1w = {results['scaling_2w_vs_1w']:.2f}x, "
                 f"2 fresh processes / 1 = {results['scaling_fresh_2proc_vs_1proc']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def best_of(repeats: int, *runs) -> list[float]:
    """Best rate of each run over ``repeats`` rounds, the runs interleaved within each round:
    on a shared machine the best round is the least disturbed one, and interleaving exposes
    every run to the same background load."""
    best = [0.0] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            best[i] = max(best[i], run())
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="images for bare vs originals")
    ap.add_argument("--full-images", type=int, default=640, help="images for the full recipe runs")
    ap.add_argument("--source-size", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=20, help="images per shard, full recipe")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench_out/real_builder")
    args = ap.parse_args(argv)
    # the pipelines tune the allocator in every process they run in; the bare loops share this one
    tuned = keep_freed_memory()
    out = Path(args.out)
    # One folder per (count, size): the builder reads every file in its input folder.
    src = out / f"src_{args.images}_{args.source_size}"
    src_full = out / f"src_{args.full_images}_{args.source_size}"
    paths = make_sources(src, args.images, args.source_size)
    make_sources(src_full, args.full_images, args.source_size)
    n, nf = len(paths), args.full_images
    common = [f"images_per_shard={args.per_shard}"]
    # Originals use the default shard size; the full recipe uses smaller units so two workers
    # get several each.
    originals = ["augment.per_image=0", "m2b.enabled=false", "zoom.enabled=false"]
    bare_loop(paths[:10])  # warm the page cache and imports
    CPU_USED.clear()
    r = {"images": n, "full_images": nf, "source_size": args.source_size, "repeats": args.repeats,
         "cpus": len(os.sched_getaffinity(0)), "load_avg_before": round(os.getloadavg()[0], 2), "malloc_tuned": tuned}
    r["bare"], r["originals_1w"] = best_of(
        args.repeats, lambda: bare_loop(paths),
        lambda: build_rate(src, out / "a", n, *originals, "workers=1", label="orig"))
    r["full_1w"], r["full_2w"], r["full_1w_unspread"] = best_of(
        max(args.repeats - 1, 1),
        lambda: build_rate(src_full, out / "b", nf, *common, "workers=1", label="1w"),
        lambda: build_rate(src_full, out / "b2", nf, *common, "workers=2", label="2w"),
        lambda: build_rate(src_full, out / "b1", nf, *common, "workers=1", "augment.spread_shards=1"))
    halves = split_sources(src_full, 2)
    r["fresh_1proc"], r["fresh_2proc"] = best_of(
        max(args.repeats - 1, 1),
        lambda: fresh_processes([src_full], [out / "f1"], nf, *common, "workers=1"),
        lambda: fresh_processes(halves, [out / "f2a", out / "f2b"], nf // 2, *common, "workers=1"))
    r["scaling_fresh_2proc_vs_1proc"] = r["fresh_2proc"] / r["fresh_1proc"]
    r["pool_vs_fresh_processes"] = r["full_2w"] / r["fresh_2proc"]
    r["load_avg_after"] = round(os.getloadavg()[0], 2)
    r["ratio_originals_vs_bare"] = r["originals_1w"] / r["bare"]
    r["scaling_2w_vs_1w"] = r["full_2w"] / r["full_1w"]
    r["full_per_worker_2w"] = r["full_2w"] / 2
    # What spreading a source's augmentations over shards costs (each extra shard decodes it again).
    r["spread_vs_unspread"] = r["full_1w"] / r["full_1w_unspread"]
    # CPU seconds per image and the cores actually obtained: when other work holds the CPUs,
    # the wall-clock scaling says little, but equal CPU cost per image at 1 and 2 workers
    # means the work itself splits cleanly; cpu_bound_scaling is the 2-worker speed-up those
    # costs allow when two cores are free.
    for w in ("1w", "2w"):
        r[f"cpu_s_per_image_{w}"] = CPU_USED[w] / nf
        r[f"cores_used_{w}"] = CPU_USED[w] / CPU_USED[w + ":wall"]
    r["cpu_bound_scaling"] = 2 * r["cpu_s_per_image_1w"] / r["cpu_s_per_image_2w"]
    # The same for (a) against bare: CPU cost per image, less sensitive to other load.
    r["cpu_ratio_originals_vs_bare"] = CPU_USED["bare"] / CPU_USED["orig"]
    for k, v in r.items():
        print(f"{k:26s} {v:10.2f}" if isinstance(v, float) else f"{k:26s} {v}")
    print(f"target a/bare >= 0.8: {'met' if r['ratio_originals_vs_bare'] >= 0.8 else 'NOT met'}; "
          f"target 2w/1w >= 1.7: {'met' if r['scaling_2w_vs_1w'] >= 1.7 else 'NOT met'}")
    (out / "results.json").write_text(json.dumps(r, indent=2))
    plot(r, out / "results.png")
    print(f"wrote {out / 'results.json'} and {out / 'results.png'}")
    return r


if __name__ == "__main__":
    main()
