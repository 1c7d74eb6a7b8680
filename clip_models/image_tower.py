"""Per-patch token output of open_clip image towers (for word-region alignment)."""

from __future__ import annotations

import torch
from torch import nn


def has_patch_tokens(model: nn.Module) -> bool:
    """True when the image tower can return per-patch tokens (ViT, not RN50)."""
    return hasattr(model.visual, "output_tokens") and getattr(model.visual, "proj", None) is not None


def encode_image_tokens(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled embedding, projected patch tokens B x P x D) of a ViT image tower."""
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    return pooled, tokens @ visual.proj
