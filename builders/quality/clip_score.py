"""CLIP scoring of uint8 image batches against tokenised captions (in the scoring process or a decode worker)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_models.device import autocast
from clip_models.preprocess import norm_tensors, normalize
from clip_models.text_tower import encode_text  # the text tower up to the longest caption


class ClipScorer:
    """Cosine similarity between each image and its own caption (each distinct caption encoded once).

    Images arrive as uint8 ``(B, 3, S, S)`` (resized in the workers); scaling to [0, 1] and the
    model's mean/std normalisation happen on the device, so the workers move 4x fewer bytes.
    """

    def __init__(self, *, model: torch.nn.Module, device: torch.device, precision: str = "auto"):
        self.model, self.device, self.precision = model, device, precision
        self.mean, self.std = norm_tensors(model, device)
        autocast(precision, device)  # a bad precision fails here, not at the first batch

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float32 cosine similarities on the CPU."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
        if images.shape[0] == 0:
            return torch.empty(0)
        non_blocking = self.device.type == "cuda"
        x = normalize(images.to(self.device, non_blocking=non_blocking), self.mean, self.std)
        # a real set repeats each caption over an original and its augmentations, which sit
        # together in a shard: encode each distinct caption of the batch once
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        t = unique.to(self.device, non_blocking=non_blocking)
        with autocast(self.precision, self.device):
            img = self.model.encode_image(x)
            txt = encode_text(self.model, t)[inverse.to(self.device)]
        return (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1).cpu()
