"""Benchmark data: real aerial tiles (UCM sample, rsicd_dev) or procedural demo tiles, split three ways.

Per class, ``base`` holds the images the stand-in base is briefly trained on, ``train`` other
images that Stage 2 and the full fine-tune then learn from, ``test`` the held-out images. The base
sees the whole vocabulary (every class name, the recipe's generated captions) but not the fine-tune
images, as RemoteCLIP knows the aerial domain but not a user's new tiles: a base trained on the
fine-tune images themselves leaves nothing for a fine-tune to add. All three are built by
``builders.real`` (base and train with the full recipe: augmentations, M2B/B2C captions, zoom crops).

rsicd_dev (human captions, 30 classes) differs: the base is trained on the human captions alone of
the train images of half of the classes, and Stage 2 on all of train (base images included), as
in its SOURCE.md; see :func:`rsicd_records` and :func:`build_rsicd_splits`.
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
RSICD_DIR = REPO.parent / "shared" / "data" / "rsicd_dev"
RSICD_JSON = "dataset_rsicd_dev.json"
# rsicd_dev's class names are glued words ("denseresidential"); zero-shot prompts need words
# the tokenizer splits as a caption writes them ("dense residential").
RSICD_CLASS_NAMES = {
    "bareland": "bare_land", "baseballfield": "baseball_field", "denseresidential": "dense_residential",
    "mediumresidential": "medium_residential", "sparseresidential": "sparse_residential",
    "railwaystation": "railway_station", "storagetanks": "storage_tanks", "parking": "parking_lot",
}
# The stand-in base only (see rsicd_records): no augmentations, generated captions or zoom crops.
HUMAN_ONLY_RECIPE = ["augment.per_image=0", "m2b.enabled=false", "zoom.enabled=false"]


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


def rsicd_records(root: Path, *, base: str = "classes", train_per_class: int = 0,
                  val_per_class: int = 0) -> list[dict]:
    """rsicd_dev's images with their five human captions; split ``train``, ``test`` (rsicd_dev's
    ``val``) and, for the stand-in base, ``base``: copies of train images that stay in ``train``.

    ``base="classes"``: every train image of every other class (sorted names; 15 of 30), so
    Stage 2 teaches the base classes it has never seen. ``base="images"``: the first half of each
    class's train images (sorted file names). ``*_per_class`` > 0 keeps only that many images
    per class and split (smoke runs).
    """
    root = root.resolve()
    data = json.loads((root / RSICD_JSON).read_text())
    by_split: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for img in sorted(data["images"], key=lambda r: r["filename"]):
        split = {"train": "train", "val": "test"}.get(img["split"])
        if split is None:
            raise ValueError(f"{root / RSICD_JSON}: {img['filename']} has split {img['split']!r}; "
                             "expected train or val")
        cls = RSICD_CLASS_NAMES.get(img["class"], img["class"])
        by_split[(split, cls)].append({"image": str(root / "images" / img["filename"]), "class": cls,
                                       "captions": [s["raw"] for s in img["sentences"]], "split": split})
    classes = sorted({cls for _, cls in by_split})
    base_classes = set(classes[::2])
    out: list[dict] = []
    for (split, cls), items in sorted(by_split.items()):
        limit = train_per_class if split == "train" else val_per_class
        items = items[:limit] if limit > 0 else items
        out += items
        if split == "train":
            if base == "classes":
                out += [{**r, "split": "base"} for r in items] if cls in base_classes else []
            elif base == "images":
                out += [{**r, "split": "base"} for r in items[: len(items) // 2]]
            else:
                raise ValueError(f"base must be 'classes' or 'images', got {base!r}")
    return out


def build_rsicd_splits(records: list[dict], out: Path, *, size: int, images_per_shard: int) -> dict[str, str]:
    """The base images with their human captions only, and all train (full recipe) plus the
    held-out images as one real set; returns {split: shard folder}."""
    base = [{**r, "split": "train"} for r in records if r["split"] == "base"]
    rest = [r for r in records if r["split"] != "base"]
    base_dir = _build(base, out / "base_set", size=size, images_per_shard=images_per_shard,
                      extra=HUMAN_ONLY_RECIPE)
    main_dir = _build(rest, out / "finetune_set", size=size, images_per_shard=images_per_shard)
    return {"base": str(base_dir / "train"), "train": str(main_dir / "train"), "test": str(main_dir / "test")}


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


def _build(records: list[dict], out: Path, *, size: int, images_per_shard: int,
           extra: list[str] | tuple[str, ...] = ()) -> Path:
    """One builders.real run over ``records`` with ``extra`` overrides of the recipe (reused when
    finished with the same records and overrides)."""
    out.mkdir(parents=True, exist_ok=True)
    caption_file, recipe_file = out / "captions.json", out / "recipe.json"
    text, recipe = json.dumps(records), json.dumps(list(extra))
    shards = out / "shards"
    if (caption_file.exists() and caption_file.read_text() != text) or \
            (recipe_file.read_text() if recipe_file.exists() else "[]") != recipe:
        shutil.rmtree(shards, ignore_errors=True)
    caption_file.write_text(text)
    recipe_file.write_text(recipe)
    if not (shards / "build_summary.json").exists():
        cfg = parse_cli(RealBuildConfig, ["--config", str(REPO / "configs/build/real.yaml"),
                                          f"input={caption_file}", f"output={shards}",
                                          f"size={size}", f"images_per_shard={images_per_shard}",
                                          "workers=1", "preview=false", *extra],
                        prog="bench_learning", description="", default_config=None)
        build_real(cfg, progress=False)
    return shards
