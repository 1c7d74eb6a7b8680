"""Benchmark data: real aerial tiles (UCM sample) or procedural demo tiles, split three ways.

Per class, ``base`` holds the images the stand-in base is briefly trained on, ``train`` other
images that Stage 2 and the full fine-tune then learn from, ``test`` the held-out images. The base
sees the whole vocabulary (every class name, the recipe's generated captions) but not the fine-tune
images, as RemoteCLIP knows the aerial domain but not a user's new tiles: a base trained on the
fine-tune images themselves leaves nothing for a fine-tune to add. All three are built by
``builders.real`` (base and train with the full recipe: augmentations, M2B/B2C captions, zoom crops).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from pathlib import Path

from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from wds_tools.config import parse_cli

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
# The development sample beside the checkout (../shared/data/ucm_sample); --ucm points elsewhere.
UCM_DIR = REPO.parent / "shared" / "data" / "ucm_sample"


def ucm_records(root: Path, *, base: int = 4, test: int = 4) -> list[dict]:
    """Caption records with a split per image: per class the first ``base`` originals for the base,
    the last ``test`` held out, the rest (and every black-border copy) for fine-tuning."""
    root = root.resolve()  # the caption file written beside the shards holds absolute paths
    rows = json.loads((root / "captions.json").read_text())
    by_class: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["image"]):
        by_class[r["class"]].append(r)
    out = []
    for cls, items in sorted(by_class.items()):
        originals = [r for r in items if not r.get("augmented_black_border")]
        copies = [r for r in items if r.get("augmented_black_border")]
        if len(originals) <= base + test:
            raise ValueError(f"class {cls!r} has {len(originals)} originals, need > {base + test}")
        for i, r in enumerate(originals):
            split = "base" if i < base else "test" if i >= len(originals) - test else "train"
            out.append({**r, "image": str(root / r["image"]), "split": split})
        out += [{**r, "image": str(root / r["image"]), "split": "train"} for r in copies]
    return out


def demo_records(folder: Path, *, per_class: int, base: int, test: int, seed: int = 0,
                 tile_set: str = "hard") -> list[dict]:
    """Draw demo tiles (builders.demo_images, ``tile_set`` one of its ``SETS``) and split them
    like :func:`ucm_records`."""
    from builders.demo_images import SETS, make_demo_tree

    classes, variation = SETS[tile_set]
    if folder.exists():  # another set or size drawn here before: its class folders would stay
        shutil.rmtree(folder)
    make_demo_tree(folder, per_class=per_class, size=128, seed=seed, classes=classes, variation=variation)
    out = []
    for cls_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(cls_dir.glob("*.png"))
        for i, f in enumerate(files):
            split = "base" if i < base else "test" if i >= len(files) - test else "train"
            out.append({"image": str(f.resolve()), "class": cls_dir.name, "split": split,
                        "captions": [f"an aerial image of {cls_dir.name.replace('_', ' ')}"]})
    return out


def build_splits(records: list[dict], out: Path, *, size: int, images_per_shard: int) -> dict[str, str]:
    """Build the base images and the train/test images as two real sets; returns {split: shard folder}."""
    base = [{**r, "split": "train"} for r in records if r["split"] == "base"]
    rest = [r for r in records if r["split"] != "base"]
    base_dir = _build(base, out / "base_set", size=size, images_per_shard=images_per_shard)
    main_dir = _build(rest, out / "finetune_set", size=size, images_per_shard=images_per_shard)
    return {"base": str(base_dir / "train"), "train": str(main_dir / "train"), "test": str(main_dir / "test")}


def _build(records: list[dict], out: Path, *, size: int, images_per_shard: int) -> Path:
    """One builders.real run over ``records`` (reused when finished with the same records)."""
    out.mkdir(parents=True, exist_ok=True)
    caption_file = out / "captions.json"
    text = json.dumps(records)
    shards = out / "shards"
    if caption_file.exists() and caption_file.read_text() != text:
        shutil.rmtree(shards, ignore_errors=True)
    caption_file.write_text(text)
    if not (shards / "build_summary.json").exists():
        cfg = parse_cli(RealBuildConfig, ["--config", str(REPO / "configs/build/real.yaml"),
                                          f"input={caption_file}", f"output={shards}",
                                          f"size={size}", f"images_per_shard={images_per_shard}",
                                          "workers=1", "preview=false"],
                        prog="bench_learning", description="", default_config=None)
        build_real(cfg, progress=False)
    return shards
