"""``quality_report.json`` plus pictures: kept shares by class and caption source, score histograms
by source, a best/worst grid, an HTML page."""

from __future__ import annotations

import html
import io
import logging
import math
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from builders.quality.keep_rules import class_key  # noqa: E402
from builders.quality.selection_file import caption_counts  # noqa: E402
from wds_tools.atomic import atomic_open  # noqa: E402
from wds_tools.images import check_image_pixels  # noqa: E402
from wds_tools.reader import iter_tar_samples  # noqa: E402

log = logging.getLogger(__name__)
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


def by_class(records: list[dict]) -> dict[str, dict]:
    """Per class: total, kept, dropped and kept share, most-cut class first."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        c = counts[class_key(r)]
        c["total"] += 1
        c["kept" if r["keep"] else "dropped"] += 1
    rows = {k: {"total": c["total"], "kept": c["kept"], "dropped": c["dropped"],
                "kept_share": c["kept"] / c["total"]} for k, c in counts.items()}
    return dict(sorted(rows.items(), key=lambda kv: (kv[1]["kept_share"], kv[0])))


def class_warnings(classes: dict[str, dict], warn_below: float) -> list[str]:
    """One line per class that keeps less than ``warn_below`` of its samples."""
    return [f"class {name!r} keeps {row['kept']} of {row['total']} samples ({row['kept_share']:.1%}), "
            f"below {warn_below:.0%}: the cut reshapes the class mix (see selection.per_class / "
            f"selection.min_class_share)"
            for name, row in classes.items() if row["kept_share"] < warn_below]


def summarise(records: list[dict], threshold: float | None, *, warn_below: float = 0.5) -> dict:
    """Counts kept/dropped overall, by source, class, caption source and reason; distributions
    overall and by source; a warning per class that keeps less than ``warn_below``."""
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
    classes = by_class(records)
    return {
        "by_class": classes,
        "by_caption_source": caption_counts(records),
        "warnings": class_warnings(classes, warn_below),
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


def plain(text: object) -> str:
    """User text (a class name, a caption) for matplotlib, shown as typed: an unescaped ``$`` pair
    would be parsed as math text, and a malformed formula raises at draw time."""
    return str(text).replace("$", r"\$")


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
                ax.hist(vals, bins=bins, alpha=0.55, label=f"{plain(src)} ({len(vals)})")
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


def plot_kept_shares(report: dict, path: Path) -> Path:
    """Bars: kept share per class (left, warnings in red) and per caption source (right)."""
    classes, caps = report["by_class"], report["by_caption_source"]
    fig, axes = plt.subplots(1, 2, figsize=(12, max(3.0, 0.3 * max(len(classes), len(caps), 1) + 1.5)),
                             squeeze=False)
    warn = report.get("warn_class_kept_below", 0.5)
    names = list(classes)
    shares = [classes[n]["kept_share"] for n in names]
    ax = axes[0][0]
    ax.barh([plain(n) for n in names], shares, color=["tab:red" if v < warn else "tab:blue" for v in shares])
    for y, n in enumerate(names):
        ax.text(0.01, y, f"{classes[n]['kept']}/{classes[n]['total']}", va="center", fontsize=7, color="white")
    ax.axvline(warn, color="red", linestyle=":", label=f"warning below {warn:.0%}")
    kept_all = report["kept"] / report["total"] if report["total"] else 0.0
    ax.axvline(kept_all, color="black", linestyle="--", label=f"all samples {kept_all:.0%}")
    ax.set_xlim(0, 1), ax.set_title("kept share by class"), ax.legend(fontsize=7)
    ax = axes[0][1]
    cap_names = list(caps)
    ax.barh([plain(n) for n in cap_names],
            [caps[n]["kept"] / caps[n]["total"] if caps[n]["total"] else 0 for n in cap_names], color="tab:green")
    for y, n in enumerate(cap_names):
        ax.text(0.01, y, f"{caps[n]['kept']}/{caps[n]['total']}", va="center", fontsize=7)
    ax.set_xlim(0, 1), ax.set_title("kept share of captions by caption source")
    if not cap_names:
        ax.text(0.5, 0.5, "no per-caption scores", ha="center", va="center", transform=ax.transAxes)
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
            caption = plain(textwrap.fill(caption or "(no caption)", 30))
            ax.set_title(
                f"{label} {col + 1}: comp {fmt(r['composite'])}\nclip {fmt(s.get('clip'))} "
                f"san {fmt(s.get('sanity'))} q {fmt(s.get('quality'))}\n{caption}",
                fontsize=7, loc="left",
            )
    fig.tight_layout()
    return _save(fig, path)


def draw_pictures(report: dict, records: list[dict], report_dir: Path, *, threshold: float | None,
                  bins: int, thumb_size: int, grid_samples: int) -> dict[str, str]:
    """The three report pictures, ``{title: file name}`` of those drawn. A picture that fails is
    one logged warning and left out: the pictures come after the selection and never block it."""
    ranked = sorted((r for r in records if r["composite"] is not None), key=lambda r: r["composite"], reverse=True)
    best, worst = ranked[:grid_samples], ranked[::-1][:grid_samples] if len(ranked) > grid_samples else []
    classes, histograms, grid = (report_dir / f"quality_{n}.png" for n in ("classes", "histograms", "grid"))
    jobs = {
        "Kept share by class and by caption source": (classes, lambda: plot_kept_shares(report, classes)),
        "Score histograms by source": (histograms, lambda: plot_histograms(records, histograms, threshold=threshold,
                                                                            bins=bins)),
        "Best (top) and worst (bottom) samples": (grid, lambda: plot_grid(best, worst, grid, thumb_size=thumb_size)),
    }
    drawn = {}
    for title, (path, draw) in jobs.items():
        try:
            with plt.rc_context({"text.usetex": False}):  # a user's matplotlibrc must not turn on LaTeX
                drawn[title] = draw().name
        except Exception as e:  # noqa: BLE001 - a picture is a view of the selection, not part of it
            plt.close("all")
            log.debug("report picture %s failed", path, exc_info=True)
            log.warning("report picture %s not drawn (the selection is written): %s: %s", path,
                        type(e).__name__, " ".join(str(e).split())[:300])
    return drawn


def _table(header: list[str], rows: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table border='1'><tr>{cells}</tr>{body}</table>"


def write_html(report: dict, path: Path, pictures: dict[str, str]) -> Path:
    """A small page showing the counts (by source, class and caption source), the warnings, the
    threshold and the pictures together."""
    sources = _table(["source", "total", "kept", "dropped"],
                     [[s, c.get("total", 0), c.get("kept", 0), c.get("dropped", 0)]
                      for s, c in report["by_source"].items()])
    classes = _table(["class", "total", "kept", "dropped", "kept share"],
                     [[k, c["total"], c["kept"], c["dropped"], f"{c['kept_share']:.1%}"]
                      for k, c in report["by_class"].items()])
    captions = _table(["caption source", "captions", "passed floor", "kept (in kept samples)", "kept share"],
                      [[k, c["total"], c.get("passed_floor", 0), c.get("kept", 0),
                        f"{c.get('kept', 0) / c['total']:.1%}" if c["total"] else "-"]
                       for k, c in report["by_caption_source"].items()])
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report.get("warnings", []))
    warnings = f"<h2 style='color:#b00'>Warnings</h2><ul>{warnings}</ul>" if warnings else ""
    reasons = "".join(f"<li>{html.escape(r)}: {n}</li>" for r, n in report["by_reason"].items())
    pics = "".join(f"<h2>{html.escape(t)}</h2><img src='{html.escape(f)}' style='max-width:100%'>"
                   for t, f in pictures.items())
    thr = report["threshold"]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Quality filter report</title></head><body>"
        f"<h1>Quality filter report</h1><p>{report['total']} samples, {report['kept']} kept, "
        f"{report['dropped']} dropped; global composite threshold "
        f"{'none' if thr is None else f'{thr:.4f}'} (keep top {report['keep_top_percent']:.0%}, "
        f"selection {html.escape(str(report.get('selection_mode', 'global')))}), "
        f"synthetic CLIP floor {report['min_clip_score_synthetic']}.</p>{warnings}"
        f"<h2>By source</h2>{sources}<h2>By class</h2>{classes}<h2>By caption source</h2>{captions}"
        f"<h2>Reasons</h2><ul>{reasons}</ul>{pics}</body></html>"
    )
    with atomic_open(path, "w") as f:
        f.write(page)
    return path
