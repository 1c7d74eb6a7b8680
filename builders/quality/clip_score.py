"""Main-process CLIP scoring of uint8 image batches against tokenised captions."""

from __future__ import annotations

import contextlib

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from builders.quality.clip_model import autocast_dtype


def _pool_index(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """Per caption, the token position the text tower pools from; None if it pools otherwise."""
    if not isinstance(model, open_clip.CLIP) or getattr(model, "attn_mask", None) is None:
        return None
    if model.text_pool_type == "argmax":  # the end-of-text token has the largest id
        return tokens.argmax(dim=-1)
    eos = getattr(model, "text_eos_id", None)
    if model.text_pool_type == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return None


def encode_text(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)``, run only up to the batch's longest caption when that is exact.

    CLIP's text tower is causal and pools from the end-of-text token, so the padding after it
    cannot change the result: cutting every caption to the batch's longest one gives the same
    features (up to float rounding) for a fraction of the work, since captions are short and the
    context is 77 tokens. Towers that pool otherwise (or attend both ways) get the full call.
    """
    pool = _pool_index(model, tokens)
    if pool is None or tokens.shape[0] == 0:
        return model.encode_text(tokens)
    n = int(pool.max()) + 1
    if n >= tokens.shape[1]:
        return model.encode_text(tokens)
    tokens = tokens[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is None:
        return x
    return model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection


class ClipScorer:
    """Cosine similarity between each image and its own caption (each distinct caption encoded once).

    Images arrive as uint8 ``(B, 3, S, S)`` (resized in the workers); scaling to [0, 1] and the
    model's mean/std normalisation happen on the device, so the workers move 4x fewer bytes.
    """

    def __init__(self, *, model: torch.nn.Module, device: torch.device, precision: str = "auto"):
        self.model, self.device = model, device
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1) * 255.0
        self.dtype = autocast_dtype(precision, device)

    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``(B,)`` float32 cosine similarities on the CPU."""
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
        if images.shape[0] == 0:
            return torch.empty(0)
        non_blocking = self.device.type == "cuda"
        x = (images.to(self.device, non_blocking=non_blocking).float() - self.mean) / self.std
        # a real set repeats each caption over an original and its augmentations, which sit
        # together in a shard: encode each distinct caption of the batch once
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        t = unique.to(self.device, non_blocking=non_blocking)
        with self._autocast():
            img = self.model.encode_image(x)
            txt = encode_text(self.model, t)[inverse.to(self.device)]
        return (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1).cpu()
