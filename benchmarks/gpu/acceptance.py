"""One GPU acceptance run: every GPU check of the project, one command, at most 8 minutes on one GPU.

    python benchmarks/gpu/acceptance.py [--out bench_out/gpu_acceptance] [--budget 480] [--scratch DIR]
    python benchmarks/gpu/acceptance.py --smoke      # CPU, tiny models, small sizes: checks the script

The checks (:mod:`benchmarks.gpu.acceptance_checks`), in this order:

- ``pool``: the builders' local executor with one worker per visible GPU; each task allocates on its
  worker's device and reports ``CUDA_VISIBLE_DEVICES``, the device count it sees and the device's
  uuid, compared with ``nvidia-smi``'s uuid of the pinned index;
- ``inpaint``: SD3.5-Medium (full size, random weights, saved and loaded as the real weights) through
  the generate stage; inside the mask its output must equal ``decode(latents / scale + shift)``;
- ``train``: ``bench_train``, LoRA against the full fine-tune, ViT-B-32, batch 256, bf16, compiled
  (targets: LoRA >= 1.25x samples/s, peak <= 10 GiB);
- ``quality``: ``bench_quality``, the filter end to end against a bare ``encode_image`` loop (>= 0.8x);
- ``loader``: ``bench_loader``'s Stage 2 loader with batches moved to the GPU and normalised there
  (target: above the trainer's samples/s from ``train``);
- ``synthetic``: ``synthetic_stages_gpu``, seconds per image and peak memory of the five stages at full
  size, one model at a time (``resident`` off) and all five loaded (on).

Each check runs in its own subprocess (a crash or a hung GPU cannot take the others with it), under
what is left of ``--budget``; a failing check records its error and the next one runs. Writes
``<out>/results.json`` (every check's targets, pass/fail and figures), ``<out>/results.md`` (the table,
also printed) and ``<out>/logs/<check>.log``. Exit status: 2 when a check could not run to its end,
else 1 when a target failed (GPU runs only), else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu.acceptance_checks import CHECKS, WHAT, Ctx, nvidia_smi  # noqa: E402

# The most seconds each check may take on a GPU (on the smoke: SMOKE_CAP each); less when the budget runs low.
CAPS = {"pool": 90, "inpaint": 150, "train": 240, "quality": 120, "loader": 90, "synthetic": 300}
SMOKE_CAP = 300
# All checks together: 8 minutes on a GPU; the smoke needs about 90 CPU seconds, but a shared CI core may
# give it a fraction of one
BUDGET, SMOKE_BUDGET = 480.0, 1200.0


def child(args) -> int:
    """Run one check in this process; write its result (or its error) as JSON."""
    ctx = Ctx(smoke=args.smoke, scratch=Path(args.scratch), context=json.loads(Path(args.context).read_text()))
    try:
        res = CHECKS[args.check](ctx)
    except Exception as e:  # noqa: BLE001 - recorded in results.json; the other checks go on
        traceback.print_exc()
        res = {"error": f"{type(e).__name__}: {e}"[:1000], "targets": [], "figures": {}, "headline": ""}
    Path(args.result).write_text(json.dumps(res, indent=2, default=str))
    return 0


def run_check(name: str, args, out: Path, scratch: Path, context: dict, seconds: float) -> dict:
    """``name`` in a fresh interpreter with ``seconds`` to finish; its result with wall time and verdict."""
    result, ctx_file = out / "checks" / f"{name}.json", out / "checks" / "context.json"
    result.unlink(missing_ok=True)
    ctx_file.write_text(json.dumps(context))
    cmd = [sys.executable, __file__, "--check", name, "--out", str(out), "--scratch", str(scratch),
           "--context", str(ctx_file), "--result", str(result)] + (["--smoke"] if args.smoke else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0, cpu0 = time.perf_counter(), children_cpu_s()
    with open(out / "logs" / f"{name}.log", "w") as log:
        try:
            proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=seconds, cwd=ROOT)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = round(time.perf_counter() - t0, 1)
    if result.is_file():
        res = json.loads(result.read_text())
    else:
        tail = (out / "logs" / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
        why = f"ran past its {seconds:.0f} s" if code is None else f"exited {code}"
        res = {"error": f"{why}: {' | '.join(tail)}"[:1000], "targets": [], "figures": {}, "headline": ""}
    verdicts = [t["pass"] for t in res["targets"]]
    res["pass"] = False if res.get("error") or False in verdicts else (None if None in verdicts else True)
    res["wall_s"], res["cpu_s"] = wall, round(children_cpu_s() - cpu0, 1)
    return res


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children (each check's interpreter and its workers)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def table(results: dict) -> str:
    """One row per target: check, target, value, pass/FAIL/n/a; then each check's headline figures."""
    lines = ["| check | target | goal | value | result | s |", "|---|---|---|---|---|---|"]
    mark = {True: "pass", False: "**FAIL**", None: "n/a"}
    for name, r in results.items():
        if r.get("error"):
            lines.append(f"| {WHAT[name]} | (did not finish) | | {r['error'][:200]} | **FAIL** | {r['wall_s']} |")
        for i, t in enumerate(r["targets"]):
            lines.append(f"| {WHAT[name] if i == 0 else ''} | {t['name']} | {t['target']} | {t['value']} "
                         f"| {mark[t['pass']]} | {r['wall_s'] if i == 0 else ''} |")
    lines.append("")
    lines += [f"- **{name}**: {r['headline']}" for name, r in results.items() if r.get("headline")]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_out/gpu_acceptance")
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for all checks together (default {BUDGET:.0f}; smoke {SMOKE_BUDGET:.0f})")
    ap.add_argument("--checks", default=",".join(CHECKS), help="a subset, in the order given")
    ap.add_argument("--scratch", default=None, help="folder for the saved full-size weights (~17 GB); a temp folder")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, small sizes: checks the script")
    for hidden in ("--check", "--context", "--result"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.check:
        return child(args)
    names = [c for c in args.checks.split(",") if c]
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise SystemExit(f"--checks: unknown {unknown}; choose from {list(CHECKS)}")
    out = Path(args.out)
    (out / "checks").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    gpus = [row[0] for row in nvidia_smi("name")]
    if not gpus and not args.smoke:
        print("acceptance: no GPU here (nvidia-smi found none); run with --smoke to check the script on the CPU")
        return 2
    if args.budget is None:
        args.budget = SMOKE_BUDGET if args.smoke else BUDGET
    t_start, results, context = time.perf_counter(), {}, {}
    with tempfile.TemporaryDirectory(dir=args.scratch, prefix="acceptance-") as scratch:
        for name in names:
            left = args.budget - (time.perf_counter() - t_start)
            if left < 20:
                results[name] = {"error": f"not run: {args.budget:.0f} s budget spent", "targets": [], "figures": {},
                                 "headline": "", "pass": False, "wall_s": 0.0, "cpu_s": 0.0}
            else:
                cap = SMOKE_CAP if args.smoke else CAPS[name]
                results[name] = run_check(name, args, out, Path(scratch), context, min(cap, left))
            r = results[name]
            context.update({k: v for k, v in r["figures"].items() if k == "trainer_samples_per_s"})
            print(f"{name:9s} {str(r['pass']):5s} {r['wall_s']:6.1f} s ({r.get('cpu_s', 0):.0f} CPU s)  "
                  f"{r.get('error') or r['headline']}", flush=True)
    wall = round(time.perf_counter() - t_start, 1)
    md = table(results)
    doc = {"device": ", ".join(gpus) if gpus and not args.smoke else "cpu (smoke: tiny models, not GPU figures)",
           "smoke": args.smoke, "date": time.strftime("%Y-%m-%d %H:%M"), "budget_s": args.budget, "wall_s": wall,
           "cpu_cores": os.cpu_count(), "load_average": os.getloadavg(),
           "all_pass": all(r["pass"] for r in results.values()), "checks": results}
    (out / "results.json").write_text(json.dumps(doc, indent=2, default=str))
    (out / "results.md").write_text(f"{doc['device']}, {doc['date']}, {wall} s\n\n{md}\n")
    print(f"\n{doc['device']}, {wall} s\n\n{md}\n\nwrote {out / 'results.json'} and {out / 'results.md'}")
    if any(r.get("error") for r in results.values()):
        return 2
    return 0 if args.smoke or doc["all_pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
