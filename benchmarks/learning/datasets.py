"""Benchmark data: real aerial tiles (UCM sample) or procedural demo tiles, split three ways.

Per class, ``train`` holds the images the stand-in base is briefly trained on and that Stage 2 and
the full fine-tune then learn from, ``test`` the held-out images. Both are built by
``builders.real`` (train with the full recipe: augmentations, M2B/B2C captions, zoom crops).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from wds_tools.config import parse_cli

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# The development sample beside the checkout (../shared/data/ucm_sample); --ucm points elsewhere.
UCM_DIR = REPO.parent / "shared" / "data" / "ucm_sample"


def ucm_records(root: Path, *, test: int = 4) -> list[dict]:
    """Caption records with a split per image: per class the last ``test`` originals held out,
    the rest (and every black-border copy) for training."""
    rows = json.loads((root / "captions.json").read_text())
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["image"]):
        by_class[r["class"]].append(r)
    out = []
    for cls, items in sorted(by_class.items()):
        originals = [r for r in items if not r.get("augmented_black_border")]
        copies = [r for r in items if r.get("augmented_black_border")]
        if len(originals) <= test:
            raise ValueError(f"class {cls!r} has {len(originals)} originals, need > {test}")
        for i, r in enumerate(originals):
            split = "test" if i >= len(originals) - test else "train"
            out.append({**r, "image": str(root / r["image"]), "split": split})
        out += [{**r, "image": str(root / r["image"]), "split": "train"} for r in copies]
    return out


def demo_records(folder: Path, *, per_class: int, test: int, seed: int = 0) -> list[dict]:
    """Draw demo tiles (builders.demo_images) and split them like :func:`ucm_records`."""
    from builders.demo_images import make_demo_tree

    make_demo_tree(folder, per_class=per_class, size=128, seed=seed)
    out = []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(cls_dir.glob("*.png"))
        for i, f in enumerate(files):
            split = "test" if i >= len(files) - test else "train"
            out.append({"image": str(f), "class": cls_dir.name, "split": split,
                        "captions": [f"an aerial image of {cls_dir.name.replace('_', ' ')}"]})
    return out


def build_splits(records: list[dict], out: Path, *, size: int, images_per_shard: int) -> dict[str, str]:
    """Write the caption file and build the splits; returns {split: shard folder}."""
    out.mkdir(parents=True, exist_ok=True)
    caption_file = out / "captions.json"
    caption_file.write_text(json.dumps(records))
    shards = out / "shards"
    if not (shards / "build_summary.json").exists():
        cfg = parse_cli(RealBuildConfig, ["--config", str(REPO / "configs/build/real.yaml"),
                                          f"input={caption_file}", f"output={shards}",
                                          f"size={size}", f"images_per_shard={images_per_shard}",
                                          "workers=1", "preview=false"],
                        prog="bench_learning", description="", default_config=None)
        build_real(cfg, progress=False)
    return {s: str(shards / s) for s in ("train", "test")}
