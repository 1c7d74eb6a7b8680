"""The per-image recipe: one source image -> original, augmentations and zoom crops.

Captions of a sample: ``txt`` holds ``captions[0]``, ``json["captions"]`` all of them and
``json["caption_sources"]`` where each came from, in this order:

1. the input's own captions ("original"), or, when the input has none, the class template
   ("class_template", e.g. "an aerial image of forest");
2. the VLM caption ("vlm") when a VLM is configured;
3. the M2B/B2C caption of this very image ("m2b_b2c").

Augmented copies carry the rewritten input and VLM captions (position words follow the flip
and rotation) and a fresh M2B/B2C caption of the augmented pixels; zoom crops carry one caption
about the cropped region ("zoom").
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from builders.common.inputs import SourceItem
from builders.real.augment import apply_aug, aug_params, resize_square, rewrite_positions, transform_box
from builders.real.b2c import regions_to_caption
from builders.real.config import RealBuildConfig
from builders.real.m2b import analyse
from builders.real.zoom import cut, select_crops
from wds_tools.sample import encode_image, make_key, make_sample

_BOX_FIELDS = ("box", "label", "score", "source", "area", "cell")


def base_captions(item: SourceItem, cfg: RealBuildConfig) -> tuple[list[str], list[str]]:
    """The input's captions, or the class template when it has none."""
    if item.captions:
        return list(item.captions), ["original"] * len(item.captions)
    if item.cls and cfg.class_caption:
        return [cfg.class_caption.format(cls=item.cls.replace("_", " "))], ["class_template"]
    return [], []


def m2b_caption(img: Image.Image, cfg: RealBuildConfig) -> tuple[str, list[dict]]:
    """B2C caption and M2B regions of ``img``."""
    if max(img.size) > cfg.m2b.analysis_size:
        # Region layout does not need full resolution; 128 px is ~4x cheaper than 256 px.
        img = img.resize((cfg.m2b.analysis_size,) * 2, Image.BILINEAR, reducing_gap=2.0)
    regions, fractions = analyse(np.asarray(img), grid=cfg.m2b.grid,
                                 min_cell_fraction=cfg.m2b.min_cell_fraction,
                                 min_area=cfg.m2b.min_area)
    caption = regions_to_caption(regions, fractions, max_regions=cfg.m2b.max_regions)
    return caption, regions


def _boxes(regions: list[dict]) -> list[dict]:
    return [{k: r[k] for k in _BOX_FIELDS if k in r} for r in regions]


def _sample(key: str, img: Image.Image, captions: list[str], sources: list[str], meta: dict,
            cfg: RealBuildConfig) -> dict:
    meta = {**meta, "source": "real", "captions": captions, "caption_sources": sources}
    return make_sample(key=key, image=encode_image(img, ext=cfg.image_ext, quality=cfg.quality),
                       caption=captions[0], meta=meta, image_ext=cfg.image_ext)


def build_item(key: str, item: SourceItem, square: Image.Image, split: str, cfg: RealBuildConfig,
               *, vlm_caption: str | None = None, owned: bool = True,
               augs: Sequence[int] | None = None) -> list[dict]:
    """Samples of one source image (``square``: its centred square crop, source size).

    ``owned``: write the original and its zoom crops; ``augs``: the augmentation indices to write
    (None: all of them). The shard planner spreads a source's samples over several units this way.
    Returns [] when the image ends up with no caption at all (the owner counts the skip).
    """
    caps, srcs = base_captions(item, cfg)
    if vlm_caption:
        caps, srcs = caps + [vlm_caption], srcs + ["vlm"]
    if augs is None:
        augs = range(cfg.augment.per_image)
    if not owned:
        return _augmented(key, square, caps, srcs, _detector(item), {"class": item.cls, "split": split},
                          cfg, augs)
    orig = resize_square(square, cfg.size)
    regions: list[dict] = []
    o_caps, o_srcs = list(caps), list(srcs)
    if cfg.m2b.enabled or cfg.zoom.enabled:
        text, regions = m2b_caption(orig, cfg)
        if cfg.m2b.enabled:
            o_caps, o_srcs = o_caps + [text], o_srcs + ["m2b_b2c"]
    if not o_caps:
        return []
    detector = _detector(item)
    common = {"class": item.cls, "split": split}
    out = [_sample(key, orig, o_caps, o_srcs, {
        **common, "kind": "original", "parent": None, "aug": None,
        "boxes": list(item.boxes) + (_boxes(regions) if cfg.m2b.enabled else [])}, cfg)]
    if split != "train" and not cfg.splits.augment_heldout:
        return out
    out += _augmented(key, square, caps, srcs, detector, common, cfg, augs)
    if cfg.zoom.enabled:
        out += _zoom_crops(key, square, regions, detector, common, cfg)
    return out


def _detector(item: SourceItem) -> list[dict]:
    return [b for b in item.boxes if b.get("source") == "detector"]


def _augmented(key, square, caps, srcs, detector, common, cfg, indices) -> list[dict]:
    a = cfg.augment
    out = []
    if a.per_image == 0 or not indices:
        return out
    params = aug_params(seed=cfg.seed, key=key, count=a.per_image, crop_scale=tuple(a.crop_scale),
                        brightness=a.brightness, contrast=a.contrast, saturation=a.saturation)
    for i in sorted(indices):
        p = params[i]
        img = apply_aug(square, p, cfg.size)
        a_caps = [rewrite_positions(c, flip=p["flip"], rot90=p["rot90"]) if a.rewrite_positions
                  else c for c in caps]
        a_srcs = list(srcs)
        boxes = []
        for b in detector:
            nb = transform_box(b["box"], p)
            if nb is not None:
                boxes.append({**b, "box": nb})
        if cfg.m2b.enabled and a.m2b_captions:
            text, regions = m2b_caption(img, cfg)
            a_caps, a_srcs = a_caps + [text], a_srcs + ["m2b_b2c"]
            boxes += _boxes(regions)
        if not a_caps:
            continue
        out.append(_sample(make_key(key, "aug", i), img, a_caps, a_srcs, {
            **common, "kind": "augmented", "parent": key, "aug": p, "boxes": boxes}, cfg))
    return out


def _zoom_crops(key, square, regions, detector, common, cfg) -> list[dict]:
    z = cfg.zoom
    crops = select_crops(regions, detector, max_crops=z.max_per_image, min_area=z.min_area,
                         max_box_area=z.max_box_area, min_score=z.min_score,
                         detector_min_score=z.detector_min_score, margin=z.margin,
                         min_side=z.min_side, max_side=z.max_side)
    out = []
    for j, c in enumerate(crops):
        img = cut(square, c.box, cfg.size)
        out.append(_sample(make_key(key, "zoom", j), img, [c.caption], ["zoom"], {
            **common, "kind": "zoom_crop", "parent": key,
            "aug": {"zoom_box": c.box, "origin": c.origin, "label": c.label,
                    "region_box": c.region_box},
            "boxes": []}, cfg))
    return out
