"""CLIP text-tower encoders that run only up to the batch's longest caption.

open_clip's ``CLIP`` text tower is causal and pools at the end-of-text token (``argmax`` or
``eos`` pooling), so the padding after that token cannot change the pooled feature, nor the
per-token features before it: cutting every caption of a batch after the batch's last
end-of-text token gives the same features (up to float rounding) and the same gradients, for a
fraction of the work, since captions are short and the context is 77 tokens. Towers that pool
otherwise (or attend both ways, as ``CustomTextCLIP``'s Hugging Face towers do) are left alone.

Shared by Stage 2 (trainer and evaluation) and the quality filter's scorer, as are the tokenizer
(:func:`tokenizer_spec` / :func:`build_tokenizer`, a picklable description rebuilt inside loader
workers) and :class:`CachedTokenizer`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import open_clip
import torch
from open_clip.transformer import text_global_pool
from torch import nn

ROUND_TO = 8  # few distinct lengths: torch.compile and cuDNN/cuBLAS plans see a handful of shapes


def keep_length(model: nn.Module, text: torch.Tensor) -> int | None:
    """Tokens to keep so every caption keeps its end-of-text token, rounded up to a multiple of
    ``ROUND_TO`` (at most the context); None when cutting is not exact."""
    if not text.shape[0] or not isinstance(model, open_clip.CLIP) or getattr(model, "attn_mask", None) is None:
        return None
    if model.text_pool_type == "argmax":  # the end-of-text token has the largest id
        pool = text.argmax(dim=-1)
    elif model.text_pool_type == "eos" and getattr(model, "text_eos_id", None) is not None:
        pool = (text == model.text_eos_id).int().argmax(dim=-1)
    else:
        return None
    return min(-(-(int(pool.max()) + 1) // ROUND_TO) * ROUND_TO, text.shape[1])


def trim_text(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``text`` cut after the batch's last end-of-text token (unchanged where that is not exact).

    Call it on the CPU tokens before moving them: it reads the positions back.
    """
    n = keep_length(model, text)
    return text if n is None or n >= text.shape[1] else text[:, :n]


def _tower(model: nn.Module, text: torch.Tensor) -> torch.Tensor:
    """``(B, L, W)`` final-layer-normed token states of a ``CLIP`` text tower, for any L <= context."""
    n = text.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
    return model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))


def _project(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    proj = model.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def encode_text(model: nn.Module, text: torch.Tensor, *, trim: bool = True) -> torch.Tensor:
    """``model.encode_text(text)``, cut to the longest caption first (``trim=False``: already cut)."""
    if trim:
        text = trim_text(model, text)
    if hasattr(model, "text") or text.shape[1] >= model.positional_embedding.shape[0]:
        return model.encode_text(text)
    pooled = text_global_pool(_tower(model, text), text, model.text_pool_type,
                              eos_token_id=getattr(model, "text_eos_id", None))
    return _project(model, pooled)


def encode_text_tokens(model: nn.Module, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled embedding, projected per-token embeddings B x L x D) for CLIP and CustomTextCLIP.

    ``text`` may be cut with :func:`trim_text` first; L is then the cut length.
    """
    if hasattr(model, "text"):
        model.text.output_tokens = True
        try:
            pooled, tokens = model.text(text)
        finally:
            model.text.output_tokens = False
        return pooled, _project(model.text, tokens)
    x = _tower(model, text)
    pooled = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return _project(model, pooled), _project(model, x)


def tokenizer_spec(model_name: str) -> dict:
    """Picklable description of the tokenizer of open_clip model ``model_name`` (a registered name)."""
    text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
    return {"hf_name": text_cfg.get("hf_tokenizer_name") or None,
            "context_length": int(text_cfg.get("context_length", 77))}


def build_tokenizer(spec: dict) -> Callable[[list[str]], torch.Tensor]:
    """Tokenizer from :func:`tokenizer_spec` output."""
    if spec["hf_name"]:
        return open_clip.tokenizer.HFTokenizer(spec["hf_name"], context_length=spec["context_length"])
    return open_clip.tokenizer.SimpleTokenizer(context_length=spec["context_length"])


class CachedTokenizer:
    """A tokenizer that remembers the tokens of its most recent ``max_entries`` distinct captions.

    A real set repeats a caption over an original and its augmentations, which sit together in a
    shard, and open_clip's tokenizer cleans and splits every caption in Python; the misses of a
    batch go to the wrapped tokenizer in one call. Picklable when the wrapped tokenizer is.
    """

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor], *, max_entries: int = 8192):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.tokenizer, self.max_entries = tokenizer, max_entries
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return self.tokenizer([])
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.tokenizer(missing).clone()))
        rows = [self._cache[t] for t in texts]
        for t in dict.fromkeys(texts):  # most recently used last, then evict the oldest
            self._cache.move_to_end(t)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return torch.stack(rows)
