"""Vectorised image-quality measures over a batch of uint8 images.

All measures run on a ``(B, 3, H, W)`` uint8 tensor (the worker resizes every image to one fixed
size first, so the Laplacian variance is comparable across samples) and return one value per
image:

- ``border_fraction``: share of pixels in near-black runs that touch the image edge (the fill of
  rotated, sheared or shifted tiles); computed with cumulative products from each of the four sides.
- ``blank_fraction``: share of ``block x block`` cells whose luma standard deviation is below
  ``blank_std`` (flat fill of any colour, including whole blank images).
- ``brightness`` / ``contrast``: mean and standard deviation of luma in [0, 1] over the non-border
  pixels (the fill would otherwise fake contrast).
- ``blur``: variance of the 3x3 Laplacian of luma (0..255 scale) over non-border pixels; low = blurry.
- ``quality`` in [0, 1]: mean of the three normalised terms below, times ``1 - max(border, blank)``:
  brightness is 1 inside ``[brightness_low, brightness_high]`` and falls linearly to 0 at 0 and 1;
  contrast is ``min(contrast / contrast_ref, 1)``; sharpness is ``min(log1p(blur) / log1p(blur_ref), 1)``;
  the blank term only counts flat cells beyond ``blank_allow`` (calm water is flat too):
  ``clamp((blank - blank_allow) / (1 - blank_allow), 0, 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCORE_NAMES = ("brightness", "contrast", "blur", "border_fraction", "blank_fraction", "quality")


@dataclass
class ImageQualityConfig:
    """Thresholds and normalisation references for the image-quality measures."""

    size: int = 128
    black_threshold: int = 28
    blank_block: int = 8
    blank_std: float = 1.0
    blank_allow: float = 0.5
    # where the measures run: "worker" (decode processes), "device" (the model's device, e.g. the
    # GPU), or "auto" (device when it is CUDA, else worker)
    where: str = "auto"
    brightness_low: float = 0.12
    brightness_high: float = 0.88
    contrast_ref: float = 0.12
    blur_ref: float = 400.0


def _run_length(seen: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of False along the last axis (the full length when all False)."""
    first = seen.to(torch.uint8).argmax(dim=-1)
    hit = seen.gather(-1, first.unsqueeze(-1)).squeeze(-1)  # argmax is 0 when nothing is True
    return torch.where(hit, first, torch.full_like(first, seen.shape[-1]))


def pool2(x: torch.Tensor) -> torch.Tensor:
    """Mean of each 2x2 cell over the last two axes (even sizes).

    The same as ``F.avg_pool2d(x, 2)``, but adding neighbour pairs through views is ~5x faster
    on the CPU for single-channel maps.
    """
    *lead, h, w = x.shape
    pairs = x.reshape(*lead, h, w // 2, 2)
    cols = pairs[..., 0] + pairs[..., 1]
    rows = cols.reshape(*lead, h // 2, 2, w // 2)
    return (rows[..., 0, :] + rows[..., 1, :]) * 0.25


def edge_runs(content: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per row and column of a ``(B, H, W)`` bool map: non-content run lengths from each side."""
    # reductions along the last, contiguous axis are several times faster
    content_t = content.transpose(1, 2).contiguous()
    return (_run_length(content), _run_length(content.flip(2)),
            _run_length(content_t), _run_length(content_t.flip(2)))


def runs_to_mask(runs: tuple[torch.Tensor, ...], h: int, w: int, grow: int = 0) -> torch.Tensor:
    """``(B, H, W)`` bool mask of the edge runs, each extended inwards by ``grow`` pixels."""
    left, right, top, bottom = (r + grow for r in runs)
    cols = torch.arange(w, device=left.device).view(1, 1, w)
    rows = torch.arange(h, device=left.device).view(1, h, 1)
    return (
        (cols < left.unsqueeze(2)) | (cols >= w - right.unsqueeze(2))
        | (rows < top.unsqueeze(1)) | (rows >= h - bottom.unsqueeze(1))
    )


def edge_black_mask(images: torch.Tensor, threshold: int, grow: int = 0) -> torch.Tensor:
    """``(B, H, W)`` bool: near-black pixels in runs touching an edge along a row or a column.

    Run lengths (argmax of the first non-black pixel from each side) keep this a handful of
    reductions instead of a flood fill.
    """
    content = images.amax(dim=1) > threshold
    return runs_to_mask(edge_runs(content), *content.shape[1:], grow=grow)


def _masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = mask.to(x.dtype)
    n = m.sum(dim=(1, 2)).clamp_min(1.0)
    mean = (x * m).sum(dim=(1, 2)) / n
    var = (((x - mean.view(-1, 1, 1)) ** 2) * m).sum(dim=(1, 2)) / n
    return mean, var


CHUNK = 32  # images per pass: keeps the float intermediates of 128 px images in cache


def image_quality_scores(images: torch.Tensor, cfg: ImageQualityConfig) -> dict[str, torch.Tensor]:
    """Raw measures and the combined ``quality`` for each image of a uint8 ``(B, 3, H, W)`` batch."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a uint8 (B, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
    if images.shape[2] % 2 or images.shape[3] % 2 or min(images.shape[2:]) < 8:
        raise ValueError(f"image side must be even and >= 8, got {tuple(images.shape[2:])}")
    chunk = CHUNK if images.device.type == "cpu" else max(1, images.shape[0])
    parts = [_scores(images[i:i + chunk], cfg) for i in range(0, images.shape[0], chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in SCORE_NAMES}


def _scores(images: torch.Tensor, cfg: ImageQualityConfig) -> dict[str, torch.Tensor]:
    """One chunk of :func:`image_quality_scores`.

    The fill mask, brightness, contrast and blank cells use a 2x2-pooled grid (a quarter of the
    work, same fractions); the Laplacian runs on the full grid with its moments pooled to the
    half grid for masking, so H and W must be even.
    """
    # (R + 2G + B) / 4 in int16: a close luma approximation at a fraction of a float RGB->Y cost
    chans = images.to(torch.int16)
    y = (chans[:, 0] + 2 * chans[:, 1] + chans[:, 2]).unsqueeze(1).float() * 0.25  # (B, 1, H, W), 0..255
    peak = torch.maximum(torch.maximum(images[:, 0], images[:, 1]), images[:, 2]).unsqueeze(1)
    # a half-resolution cell is content when its mean brightest channel clears the threshold;
    # averaging 2x2 keeps single JPEG-ringing pixels from cutting a fill run short
    content = pool2(peak.squeeze(1).float()) > cfg.black_threshold
    h2, w2 = content.shape[1:]
    runs = edge_runs(content)
    border = runs_to_mask(runs, h2, w2)
    y_half = pool2(y.squeeze(1))
    brightness, var = _masked_mean_std(y_half / 255.0, ~border)
    contrast = var.sqrt()

    # Laplacian at full resolution, its moments pooled per 2x2 cell so the masking runs at half size
    lap = y[:, :, :-2, 1:-1] + y[:, :, 2:, 1:-1] + y[:, :, 1:-1, :-2] + y[:, :, 1:-1, 2:] - 4.0 * y[:, :, 1:-1, 1:-1]
    lap = F.pad(lap, (1, 1, 1, 1))
    lap = lap.squeeze(1)
    lap_m1 = pool2(lap)
    lap_m2 = pool2(lap * lap)
    # a Laplacian touching the fill edge measures the fill, not the picture; nor does the zero pad
    keep = ~runs_to_mask(runs, h2, w2, grow=1)
    keep[:, 0], keep[:, -1], keep[:, :, 0], keep[:, :, -1] = False, False, False, False
    k = keep.float()
    n = k.sum(dim=(1, 2)).clamp_min(1.0)
    mean = (lap_m1 * k).sum(dim=(1, 2)) / n
    blur = ((lap_m2 * k).sum(dim=(1, 2)) / n - mean**2).clamp_min(0)

    block = max(1, cfg.blank_block // 2)
    pooled = F.avg_pool2d(y_half.unsqueeze(1), block)
    pooled_sq = F.avg_pool2d((y_half * y_half).unsqueeze(1), block)
    block_std = (pooled_sq - pooled**2).clamp_min(0).sqrt()
    blank = (block_std < cfg.blank_std).float().mean(dim=(1, 2, 3))
    border_fraction = border.float().mean(dim=(1, 2))

    bright_s = torch.where(
        brightness < cfg.brightness_low,
        brightness / cfg.brightness_low,
        torch.where(brightness > cfg.brightness_high, (1 - brightness) / (1 - cfg.brightness_high), 1.0),
    ).clamp(0, 1)
    contrast_s = (contrast / cfg.contrast_ref).clamp(0, 1)
    sharp_s = (torch.log1p(blur) / math.log1p(cfg.blur_ref)).clamp(0, 1)
    # flat cells are normal in calm water or bare sand; only mostly-flat images count as blank
    blank_penalty = ((blank - cfg.blank_allow) / (1.0 - cfg.blank_allow)).clamp(0, 1)
    fill = torch.maximum(border_fraction, blank_penalty)
    quality = (bright_s + contrast_s + sharp_s) / 3.0 * (1.0 - fill)
    return {
        "brightness": brightness,
        "contrast": contrast,
        "blur": blur,
        "border_fraction": border_fraction,
        "blank_fraction": blank,
        "quality": quality,
    }
