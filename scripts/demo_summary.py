"""The demo's closing table: samples per stage, the realised synthetic share, held-out figures.

    python scripts/demo_summary.py DEMO_OUT

Reads what the demo's steps wrote (dataset.json of each shard set, the quality report, the Stage 2
training log) and prints one table plus where each picture is. A missing piece is shown as
"missing" rather than failing, so a partial demo still says what it did.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _total(path: Path) -> str:
    d = _json(path)
    return "missing" if d is None else str(d.get("total_samples", d.get("num_samples", "?")))


def _eval_row(evaluation: dict, when: str) -> str:
    r = evaluation.get(when)
    if not r:
        return "missing"
    acc = r.get("zeroshot", {}).get("accuracy")
    return (f"mean recall {r['retrieval']['mean_recall']:.1f}, "
            f"zero-shot {'n/a' if acc is None else f'{acc:.1f}%'}")


def _kept(quality: dict) -> str:
    if "total" not in quality:
        return "missing"
    by_source = quality.get("by_source") or {}
    parts = ", ".join(f"{name} {d['kept']} of {d['total']}" for name, d in sorted(by_source.items()))
    return f"{quality['total']} / {quality['kept']}" + (f" ({parts})" if parts else "")


def _class_shares(quality: dict) -> str:
    by_class = quality.get("by_class") or {}
    if not by_class:
        return "missing"
    return ", ".join(f"{c} {d['kept_share']:.0%}" for c, d in sorted(by_class.items()))


def summary(out: Path) -> str:
    """The table as text."""
    log = _json(out / "stage2_lora" / "training_log.json") or {}
    real_only = _json(out / "stage2_real" / "training_log.json") or {}
    quality = _json(out / "quality" / "quality_report.json") or {}
    base = _json(out / "base" / "base_log.json")
    share = (log.get("summary") or {}).get("realised_synthetic_share")
    rows = [
        ("real samples (train)", _total(out / "shards" / "real" / "train" / "dataset.json")),
        ("synthetic samples (train)", _total(out / "shards" / "synthetic" / "train" / "dataset.json")),
        ("scored / kept by the filter", _kept(quality)),
        ("kept share per class", _class_shares(quality)),
        ("base model", "stand-in tiny CLIP trained on other demo tiles' captions (not RemoteCLIP)" if base
         else "given checkpoint (REMOTECLIP)"),
        ("Stage 2 processes", str((log.get("summary") or {}).get("world_size", "missing"))),
        ("realised synthetic share", "missing" if share is None else f"{share:.2f} (requested 0.80)"),
        ("held-out before Stage 2", _eval_row(log.get("evaluation") or {}, "before")),
        ("held-out after Stage 2 (0.80 mix)", _eval_row(log.get("evaluation") or {}, "after")),
        ("held-out after Stage 2 (real only)", _eval_row(real_only.get("evaluation") or {}, "after")),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "Demo summary", "-" * (width + 50)]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    pictures = [out / "shards" / "real" / "preview.png", out / "shards" / "synthetic" / "preview.png",
                out / "base" / "base_curves.png", out / "quality" / "quality_report.html",
                out / "stage2_lora" / "training_curves.png", out / "stage2_real" / "training_curves.png"]
    lines += ["", "Pictures:"] + [f"  {p}{'' if p.exists() else '  (missing)'}" for p in pictures]
    tensorboard, hub = out / "stage2_lora" / "tensorboard", out / "stage2_lora" / "open_clip_hub"
    lines += ["", "For other tools:",
              f"  TensorBoard events: {tensorboard}{'' if tensorboard.is_dir() else '  (missing)'}"
              f"  (tensorboard --logdir {tensorboard})",
              f"  open_clip hub folder with model card: {hub}{'' if (hub / 'README.md').exists() else '  (missing)'}"
              f"  (open_clip.create_model_and_transforms('local-dir:{hub}'))"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python scripts/demo_summary.py DEMO_OUT", file=sys.stderr)
        return 2
    print(summary(Path(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
