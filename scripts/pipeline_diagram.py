"""Draw docs/pipeline.png: the pipeline's stages, what each writes, and what reads it.

    python scripts/pipeline_diagram.py [--out docs/pipeline.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

# (x, y, width, height, title, body, colour)
BOXES = {
    "images": (0.2, 6.2, 2.6, 1.3, "aerial images", "folder tree (class = folder)\nor caption file", "#eeeeee"),
    "real": (3.4, 6.0, 3.2, 1.7, "builders.real", "originals + augmentations\nM2B/B2C, VLM captions, zoom\n"
                                                   "-> real/{train,val,test}/*.tar", "#d6e9f8"),
    "synth": (3.4, 3.6, 3.2, 1.9, "builders.synthetic", "upscale -> describe -> ground\n-> segment -> generate\n"
                                                        "-> synthetic/train/*.tar", "#fde2c8"),
    "quality": (7.3, 4.9, 3.1, 1.7, "builders.quality", "CLIP / sanity / image quality\n-> X.quality.tar sidecars\n"
                                                        "+ selection.json, report", "#e3f4d7"),
    "train": (11.1, 4.9, 3.2, 1.7, "training.train",
              "shards + sidecars, weighted mix\n(80% synthetic), LoRA, accelerate\n-> adapter, heads, log", "#f3d9f0"),
    "eval": (11.1, 2.4, 3.2, 1.4, "training.evaluate / export", "retrieval, zero-shot\nmerged open_clip checkpoint",
             "#f3d9f0"),
    "base": (7.3, 1.9, 3.1, 1.4, "clip_models", "one loader for RemoteCLIP,\nopen_clip_train, safetensors", "#fff6bf"),
    "wds": (0.2, 1.9, 6.4, 1.2, "wds_tools", "shard writer + index, URL lists, safe reader, sidecars, materialize",
            "#fff6bf"),
}
ARROWS = [("images", "real"), ("real", "synth"), ("real", "quality"), ("synth", "quality"), ("quality", "train"),
          ("train", "eval")]


def _anchor(box: tuple, toward: tuple) -> tuple[float, float]:
    """The middle of the side of ``box`` that faces ``toward``."""
    x, y, w, h = box[:4]
    tx, ty, tw, th = toward[:4]
    cx, cy, ox, oy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    if abs(ox - cx) * h > abs(oy - cy) * w:
        return (x + w, cy) if ox > cx else (x, cy)
    return (cx, y + h) if oy > cy else (cx, y)


def draw(out: Path) -> Path:
    """Write the diagram to ``out`` and return it."""
    fig, ax = plt.subplots(figsize=(14.5, 6.6))
    ax.set_xlim(0, 14.5)
    ax.set_ylim(1.5, 8.0)
    ax.axis("off")
    for x, y, w, h, title, body, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#555555"))
        ax.text(x + w / 2, y + h - 0.25, title, ha="center", va="top", fontsize=11, weight="bold", family="monospace")
        ax.text(x + w / 2, y + h - 0.62, body, ha="center", va="top", fontsize=9)
    for a, b in ARROWS:
        start, end = _anchor(BOXES[a], BOXES[b]), _anchor(BOXES[b], BOXES[a])
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#333333", lw=1.2))
    ax.text(0.2, 7.85, "Stage 1 writes shards and sidecars; Stage 2 streams them. Lower layers never import upper "
                       "ones: wds_tools < clip_models < builders | training.", fontsize=10, color="#333333")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "pipeline.png"))
    print(draw(Path(ap.parse_args(argv).out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
