"""Zoom crops: object-level crops around M2B regions and detector boxes, with their captions.

A candidate is an M2B region that is neither tiny nor most of the image, or a detector box in
the sample's input ``boxes`` (``source`` "detector"). The crop is the box grown by ``margin``
on each side, squared and widened to at least ``min_side``, and clamped inside the image; the
caption names what the box holds ("A close-up aerial view of dense trees and shrubs.").
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from builders.real.augment import resize_square
from builders.real.b2c import crop_caption, describe_element


@dataclass
class ZoomCrop:
    """One crop: its square box in the source (0..1), caption and where the box came from."""

    box: list[float]
    caption: str
    label: str
    origin: str          # "m2b" or "detector"
    region_box: list[float]


def square_box(box: list[float], *, margin: float, min_side: float) -> list[float]:
    """Grow ``box`` by ``margin`` of its size, make it square (>= min_side), keep it inside 0..1."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    side = min(1.0, max(w * (1 + 2 * margin), h * (1 + 2 * margin), min_side))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    nx0 = min(max(cx - side / 2, 0.0), 1.0 - side)
    ny0 = min(max(cy - side / 2, 0.0), 1.0 - side)
    return [round(nx0, 4), round(ny0, 4), round(nx0 + side, 4), round(ny0 + side, 4)]


def _box_area(box: list[float]) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def select_crops(regions: list[dict], detector_boxes: list[dict], *, max_crops: int = 2,
                 min_area: float = 0.04, max_box_area: float = 0.5, min_score: float = 0.3,
                 detector_min_score: float = 0.3, margin: float = 0.1,
                 min_side: float = 0.25, max_side: float = 0.6,
                 busy_threshold: float = 0.09) -> list[ZoomCrop]:
    """Pick up to ``max_crops`` crops: detector boxes first (best score), then M2B regions."""
    crops: list[ZoomCrop] = []
    dets = sorted((b for b in detector_boxes if b.get("source") == "detector"
                   and float(b.get("score", 0.0)) >= detector_min_score),
                  key=lambda b: -float(b.get("score", 0.0)))
    for b in dets:
        label = str(b.get("label", "object"))
        article = "an" if label[:1].lower() in "aeiou" else "a"
        crops.append(ZoomCrop(square_box(b["box"], margin=margin, min_side=min_side),
                              crop_caption(label, description=f"{article} {label}"), label,
                              "detector", list(b["box"])))
    for r in sorted(regions, key=lambda r: -r["area"]):
        if r["area"] < min_area or r["score"] < min_score or _box_area(r["box"]) > max_box_area:
            continue
        box = square_box(r["box"], margin=margin, min_side=min_side)
        if box[2] - box[0] > max_side:
            continue  # a long strip squares up to nearly the whole image: no zoom at all
        desc = describe_element(r, busy_threshold=busy_threshold)
        crops.append(ZoomCrop(box,
                              crop_caption(r["label"], description=desc), r["label"], "m2b",
                              list(r["box"])))
    return crops[:max_crops]


def cut(square: Image.Image, box: list[float], size: int) -> Image.Image:
    """The crop ``box`` of a square source image, resized to size x size."""
    w, h = square.size
    x0, y0, x1, y1 = box
    return resize_square(square.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))), size)
