"""B2C ("box to caption"): turn M2B regions into a sentence that is true of the picture.

The caption names a scene type from the label shares, then the largest regions with a spatial
phrase derived from each region's box ("in the lower half", "in the upper left", "along the
left side", "across the image") and a short element description from its texture
("trees or shrubs" for busy vegetation, "grass or low vegetation" for smooth vegetation).
"""
from __future__ import annotations

from wds_tools.caption_geometry import COLUMN_WORDS as _COLS
from wds_tools.caption_geometry import ROW_ADJECTIVES
from wds_tools.caption_geometry import ROW_WORDS as _ROWS

_ELEMENTS = {
    # label -> (smooth description, busy description)
    # Worded from what the pixels show (colour, texture): grey texture may be roofs, cars or
    # ploughed rows, so it is not called "buildings".
    "water": ("open water", "rippled water"),
    "vegetation": ("grass or low vegetation", "trees or shrubs"),
    "urban": ("grey ground", "textured grey surfaces"),
    "road": ("smooth grey surfaces", "grey paved surfaces"),
    "bare soil": ("bare soil", "rough bare ground"),
    "sand": ("light sand", "light sandy ground"),
}


def _band(lo: float, hi: float) -> int | None:
    """Index 0/1/2 for a span lying within the first/middle/last third, else None."""
    c = (lo + hi) / 2
    return 0 if c < 1 / 3 else (2 if c > 2 / 3 else 1)


def spatial_phrase(box: list[float], *, area: float = 1.0) -> str:
    """Position phrase for a normalised [x0, y0, x1, y1] box covering ``area`` of the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    row, col = _band(y0, y1), _band(x0, x1)
    if w >= 0.75 and h >= 0.75:
        # A wide box with little label inside it is a scatter, not a blanket.
        return "across the image" if area >= 0.35 else "scattered across the image"
    if w >= 0.75:
        if h <= 0.6 and y1 >= 0.95 and y0 >= 0.3:
            return "in the lower half" if y0 < 0.6 else "along the bottom"
        if h <= 0.6 and y0 <= 0.05 and y1 <= 0.7:
            return "in the upper half" if y1 > 0.4 else "along the top"
        return ("along the top", "across the middle", "along the bottom")[row]
    if h >= 0.75:
        if w <= 0.6 and x1 >= 0.95 and x0 >= 0.3:
            return "on the right side" if x0 < 0.6 else "along the right edge"
        if w <= 0.6 and x0 <= 0.05 and x1 <= 0.7:
            return "on the left side" if x1 > 0.4 else "along the left edge"
        return ("along the left side", "down the center", "along the right side")[col]
    if row == 1 and col == 1:
        return "at the center"
    if row == 1:
        return f"on the {_COLS[col]}"
    if col == 1:
        return f"at the {_ROWS[row]}"
    return f"in the {ROW_ADJECTIVES[row]} {_COLS[col]}"


def describe_element(region: dict, *, busy_threshold: float = 0.09) -> str:
    """Element description for one region, from its label and edge density."""
    smooth, busy = _ELEMENTS.get(region["label"], (region["label"], region["label"]))
    return busy if region.get("edge_density", 0.0) >= busy_threshold else smooth


def scene_type(fractions: dict[str, float]) -> str:
    """Scene noun phrase from whole-image label shares (see m2b.label_fractions)."""
    f = {k: v for k, v in fractions.items() if k != "shadow"}
    water, veg = f.get("water", 0.0), f.get("vegetation", 0.0)
    built = f.get("urban", 0.0) + f.get("road", 0.0)
    dry = f.get("sand", 0.0) + f.get("bare soil", 0.0)
    if water >= 0.15 and f.get("sand", 0.0) >= 0.15:
        return "a shoreline"
    if water >= 0.15 and built >= 0.25:
        return "a waterfront"
    if water >= 0.5:
        return "a body of water"
    if veg >= 0.6:
        return "a vegetated area"
    if built >= 0.6:
        return "an area of mostly grey surfaces"  # grey alone does not prove buildings
    if dry >= 0.6:
        return "an area of open dry land"
    if water >= 0.15 and veg >= 0.25:
        return "water among vegetation"
    return "a mixed landscape"


def regions_to_caption(regions: list[dict], fractions: dict[str, float], *,
                       max_regions: int = 3, busy_threshold: float = 0.09) -> str:
    """One caption: scene type, then up to ``max_regions`` regions with positions."""
    scene = scene_type(fractions)
    parts, seen = [], set()
    for reg in sorted(regions, key=lambda r: -r["area"]):
        where = spatial_phrase(reg["box"], area=reg["area"])
        phrase = f"{describe_element(reg, busy_threshold=busy_threshold)} {where}"
        if phrase in seen:
            continue
        seen.add(phrase)
        parts.append(phrase)
        if len(parts) == max_regions:
            break
    if not parts:
        return f"An aerial view of {scene}."
    if len(parts) == 1:
        listing = parts[0]
    else:
        listing = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"An aerial view of {scene}, with {listing}."


def crop_caption(label: str, *, description: str | None = None) -> str:
    """Caption for a zoom crop centred on one region or detector box."""
    what = description or label
    return f"A close-up aerial view of {what}."
