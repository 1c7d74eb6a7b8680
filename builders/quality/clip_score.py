"""CLIP scoring of uint8 image batches against tokenised captions (in the scoring process or a decode worker)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clip_models.device import autocast
from clip_models.preprocess import norm_tensors, normalize
from clip_models.text_tower import encode_text  # the text tower up to the longest caption


class ClipScorer:
    """Cosine similarity between images and their captions (each distinct caption encoded once).

    Images arrive as uint8 ``(B, 3, S, S)`` (resized in the workers); scaling to [0, 1] and the
    model's mean/std normalisation happen on the device, so the workers move 4x fewer bytes.
    """

    def __init__(self, *, model: torch.nn.Module, device: torch.device, precision: str = "auto"):
        self.model, self.device, self.precision = model, device, precision
        self.mean, self.std = norm_tensors(model, device)
        autocast(precision, device)  # a bad precision fails here, not at the first batch

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, owner: torch.Tensor | None = None) -> torch.Tensor:
        """``(T,)`` float32 cosines on the CPU: caption ``t`` against image ``owner[t]``.

        Without ``owner`` there is one caption per image, in order. Each image is encoded once
        however many captions it has.
        """
        if owner is None:
            if images.shape[0] != tokens.shape[0]:
                raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
            owner = torch.arange(images.shape[0])
        if owner.shape[0] != tokens.shape[0]:
            raise ValueError(f"{tokens.shape[0]} captions but {owner.shape[0]} owners")
        if tokens.shape[0] == 0:
            return torch.empty(0)
        if int(owner.max()) >= images.shape[0] or int(owner.min()) < 0:
            raise ValueError(f"caption owners must index the {images.shape[0]} images, got {owner.tolist()[:8]}")
        non_blocking = self.device.type == "cuda"
        x = normalize(images.to(self.device, non_blocking=non_blocking), self.mean, self.std)
        # a real set repeats each caption over an original and its augmentations, which sit
        # together in a shard: encode each distinct caption of the batch once
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        t = unique.to(self.device, non_blocking=non_blocking)
        with autocast(self.precision, self.device):
            img = self.model.encode_image(x)
            txt = encode_text(self.model, t)[inverse.to(self.device)]
        img = F.normalize(img.float(), dim=-1)[owner.to(self.device)]
        return (img * F.normalize(txt.float(), dim=-1)).sum(-1).cpu()
