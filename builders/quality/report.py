"""``quality_report.json`` plus pictures: score histograms by source, a best/worst grid, an HTML page."""

from __future__ import annotations

import html
import io
import math
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wds_tools.atomic import atomic_open  # noqa: E402
from wds_tools.images import check_image_pixels  # noqa: E402
from wds_tools.reader import iter_tar_samples  # noqa: E402

SCORES = ("clip", "sanity", "sanity_count", "sanity_spatial", "brightness", "contrast", "blur",
          "border_fraction", "blank_fraction", "quality", "composite")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def _value(rec: dict, name: str) -> float | None:
    return rec.get("composite") if name == "composite" else rec["scores"].get(name)


def distribution(values: list[float | None]) -> dict:
    """Count, missing count and summary statistics of one score."""
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    out: dict = {"count": int(present.size), "missing": len(values) - int(present.size)}
    if present.size:
        q = np.percentile(present, [5, 25, 50, 75, 95])
        out.update(mean=float(present.mean()), std=float(present.std()), min=float(present.min()),
                   p05=float(q[0]), p25=float(q[1]), p50=float(q[2]), p75=float(q[3]), p95=float(q[4]),
                   max=float(present.max()))
    return out


def summarise(records: list[dict], threshold: float | None) -> dict:
    """Counts kept/dropped overall, by source and by reason; distributions overall and by source."""
    by_source: dict[str, Counter] = defaultdict(Counter)
    by_reason: Counter = Counter()
    first_reason: Counter = Counter()
    for r in records:
        src = str(r.get("source"))
        by_source[src]["total"] += 1
        by_source[src]["kept" if r["keep"] else "dropped"] += 1
        by_reason.update(r["reasons"])
        if r["reasons"]:
            first_reason[r["reasons"][0]] += 1
    sources = sorted(by_source)
    return {
        "threshold": threshold,
        "total": len(records),
        "kept": sum(r["keep"] for r in records),
        "dropped": sum(not r["keep"] for r in records),
        "by_source": {s: dict(by_source[s]) for s in sources},
        "by_reason": dict(by_reason.most_common()),
        "by_first_reason": dict(first_reason.most_common()),
        "distributions": {
            name: {"all": distribution([_value(r, name) for r in records]),
                   **{s: distribution([_value(r, name) for r in records if str(r.get("source")) == s])
                      for s in sources}}
            for name in SCORES
        },
    }


def plot_histograms(records: list[dict], path: Path, *, threshold: float | None, bins: int) -> Path:
    """One panel per score, one histogram per source; the composite panel marks the threshold."""
    sources = sorted({str(r.get("source")) for r in records})
    cols = 4
    rows = math.ceil(len(SCORES) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows))
    for ax, name in zip(axes.flat, SCORES):
        for src in sources:
            vals = [_value(r, name) for r in records if str(r.get("source")) == src]
            vals = [v for v in vals if v is not None]
            if vals:
                ax.hist(vals, bins=bins, alpha=0.55, label=f"{src} ({len(vals)})")
        if name == "composite" and threshold is not None:
            ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold:.3f}")
        ax.set_title(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no values\n(nothing to check)", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([]), ax.set_yticks([])
    for ax in list(axes.flat)[len(SCORES):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return path


def load_thumbnails(records: list[dict], size: int) -> dict[tuple[str, str], tuple[Image.Image | None, str]]:
    """``(thumbnail, caption)`` of the given records, read back from their shards (sidecars hold
    scores only); each shard is read once and only up to its last wanted key."""
    wanted: dict[str, set[str]] = defaultdict(set)
    for r in records:
        wanted[r["url"]].add(r["key"])
    out: dict[tuple[str, str], tuple[Image.Image | None, str]] = {}
    for url, keys in wanted.items():
        for sample in iter_tar_samples(url):
            if sample["__key__"] not in keys:
                continue
            ext = next((e for e in _IMAGE_EXTS if e in sample), None)
            try:
                if ext:
                    check_image_pixels(sample[ext])  # header only: a bomb shows as a blank tile
                img = Image.open(io.BytesIO(sample[ext])).convert("RGB") if ext else None
                if img is not None:
                    img.thumbnail((size, size))
            except Exception:  # noqa: BLE001 - an undecodable image shows as a blank tile
                img = None
            out[(url, sample["__key__"])] = (img, sample.get("txt", b"").decode("utf-8", "replace"))
            keys.discard(sample["__key__"])
            if not keys:
                break
    return out


def plot_grid(best: list[dict], worst: list[dict], path: Path, *, thumb_size: int) -> Path:
    """Top row(s) the best samples, bottom row(s) the worst, each with caption and scores."""
    thumbs = load_thumbnails(best + worst, thumb_size)
    cols = max(len(best), len(worst), 1)
    fig, axes = plt.subplots(2, cols, figsize=(2.6 * cols, 2 * 3.4), squeeze=False)
    for row, (label, recs) in enumerate((("best", best), ("worst", worst))):
        for col in range(cols):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(recs):
                continue
            r = recs[col]
            img, caption = thumbs.get((r["url"], r["key"]), (None, ""))
            if img is not None:
                ax.imshow(img)
            s = r["scores"]
            fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            caption = textwrap.fill(caption or "(no caption)", 30)
            ax.set_title(
                f"{label} {col + 1}: comp {fmt(r['composite'])}\nclip {fmt(s.get('clip'))} "
                f"san {fmt(s.get('sanity'))} q {fmt(s.get('quality'))}\n{caption}",
                fontsize=7, loc="left",
            )
    fig.tight_layout()
    return _save(fig, path)


def write_html(report: dict, path: Path, pictures: dict[str, str]) -> Path:
    """A small page showing the counts, the threshold and the pictures together."""
    rows = "".join(
        f"<tr><td>{html.escape(src)}</td><td>{c.get('total', 0)}</td><td>{c.get('kept', 0)}</td>"
        f"<td>{c.get('dropped', 0)}</td></tr>"
        for src, c in report["by_source"].items()
    )
    reasons = "".join(f"<li>{html.escape(r)}: {n}</li>" for r, n in report["by_reason"].items())
    pics = "".join(f"<h2>{html.escape(t)}</h2><img src='{html.escape(f)}' style='max-width:100%'>"
                   for t, f in pictures.items())
    thr = report["threshold"]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Quality filter report</title></head><body>"
        f"<h1>Quality filter report</h1><p>{report['total']} samples, {report['kept']} kept, "
        f"{report['dropped']} dropped; global composite threshold "
        f"{'none' if thr is None else f'{thr:.4f}'} (keep top {report['keep_top_percent']:.0%}), "
        f"synthetic CLIP floor {report['min_clip_score_synthetic']}.</p>"
        f"<table border='1'><tr><th>source</th><th>total</th><th>kept</th><th>dropped</th></tr>{rows}</table>"
        f"<h2>Reasons</h2><ul>{reasons}</ul>{pics}</body></html>"
    )
    with atomic_open(path, "w") as f:
        f.write(page)
    return path
