"""The image preprocessing a CLIP model expects: input size, mean/std, bicubic resampling.

Both stages move uint8 images out of their decode workers and normalise on the device, so the
pieces are here as functions on uint8 ``(3, H, W)`` tensors rather than open_clip's PIL transform:
:func:`resize_center_crop` is open_clip's eval transform (shorter side to ``size``, centre crop),
:func:`resized_crop` the resampling of its training ``RandomResizedCrop``; both bicubic with
antialiasing like open_clip. :func:`normalize` maps uint8 to the model's normalised floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import InterpolationMode

INTERPOLATION = InterpolationMode.BICUBIC  # open_clip's default, train and eval


@dataclass(frozen=True)
class Preprocess:
    """What a model's image tower expects (from open_clip's per-model preprocess config)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"


def preprocess_of(model: nn.Module) -> Preprocess:
    """The :class:`Preprocess` of an open_clip model (OpenAI mean/std when it records none)."""
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocess(size=int(size), mean=tuple(cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN),
                      std=tuple(cfg.get("std") or open_clip.OPENAI_DATASET_STD),
                      interpolation=cfg.get("interpolation") or "bicubic")


def image_size(model: nn.Module) -> int:
    """Square input side of the image tower, in pixels."""
    return preprocess_of(model).size


def image_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the model's preprocessing normalises [0, 1] pixels with."""
    p = preprocess_of(model)
    return p.mean, p.std


def decode_uint8(data: bytes) -> torch.Tensor:
    """Image bytes -> uint8 ``(3, H, W)`` RGB with torchvision's decoders.

    Meant as the decoder of ``wds_tools.reader.decode_sample(image=decode_uint8)``, which checks
    the pixel limit from the header before calling it: torchvision's decoders have no limit.
    """
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def resize_center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip's eval transform on uint8 ``(3, H, W)``: bicubic resize of the shorter side, centre crop."""
    out = TF.resize(img, [size], interpolation=INTERPOLATION, antialias=True)
    return TF.center_crop(out, [size, size])


def resized_crop(img: torch.Tensor, *, top: int, left: int, height: int, width: int, size: int) -> torch.Tensor:
    """The crop ``(top, left, height, width)`` of uint8 ``img`` resampled to ``size`` x ``size`` (bicubic)."""
    return TF.resized_crop(img, top, left, height, width, [size, size], interpolation=INTERPOLATION, antialias=True)


def norm_tensors(model: nn.Module, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as ``(1, 3, 1, 1)`` float tensors on ``device``, scaled to uint8 pixel values."""
    mean, std = image_norm(model)
    as_t = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1) * 255.0  # noqa: E731
    return as_t(mean), as_t(std)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> the model's normalised float input (``mean``/``std`` from :func:`norm_tensors`)."""
    return (images.float() - mean) / std
