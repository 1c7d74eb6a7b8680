"""Attention swap: ``nn.MultiheadAttention`` <-> four Linears + ``scaled_dot_product_attention``.

open_clip 3.3.0 runs attention through ``nn.MultiheadAttention``, which reads ``in_proj_weight`` and
``out_proj.weight`` directly, so adapters on those Linears get no gradient and peft's whole-module
wrapping is slow. :func:`swap_attention` replaces every such module by :class:`SdpaAttention` (four
real Linears + ``scaled_dot_product_attention``), numerically equivalent; :func:`unswap_attention`
maps the Linears back so a merged model loads into a stock open_clip model.

RN50 has no transformer in its image tower: its attention pooling (``AttentionPool2d``) calls
``F.multi_head_attention_forward`` with the raw weights of its q/k/v/c Linears. It is left as is;
LoRA covers the text tower and the pooling's output Linear ``visual.attnpool.c_proj`` (the image
projection head of RN50) is trained in full (see :mod:`training.lora`).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class SdpaAttention(nn.Module):
    """Drop-in replacement for a batch-first-or-not ``nn.MultiheadAttention`` with separate Linears."""

    def __init__(self, *, embed_dim: int, num_heads: int, batch_first: bool, dropout: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.batch_first, self.dropout = embed_dim, num_heads, batch_first, dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> SdpaAttention:
        """Copy the weights of a MultiheadAttention (q, k, v are the thirds of ``in_proj_weight``)."""
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(f"unsupported MultiheadAttention variant: {mha}")
        bias = mha.in_proj_bias is not None
        new = cls(embed_dim=mha.embed_dim, num_heads=mha.num_heads, batch_first=mha.batch_first,
                  dropout=mha.dropout, bias=bias)
        w = mha.in_proj_weight.detach().chunk(3, dim=0)
        b = mha.in_proj_bias.detach().chunk(3, dim=0) if bias else (None, None, None)
        with torch.no_grad():
            for lin, wi, bi in zip((new.q_proj, new.k_proj, new.v_proj), w, b):
                lin.weight.copy_(wi)
                if bi is not None:
                    lin.bias.copy_(bi)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if bias:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def to_mha(self) -> nn.MultiheadAttention:
        """Inverse of :meth:`from_mha` (weights of plain Linears; merge LoRA first)."""
        lins = (self.q_proj, self.k_proj, self.v_proj, self.out_proj)
        plain = [getattr(m, "base", m) if not hasattr(m, "merged") else m.merged() for m in lins]
        bias = plain[0].bias is not None
        mha = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout, bias=bias,
                                    batch_first=self.batch_first)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([p.weight for p in plain[:3]], dim=0))
            mha.out_proj.weight.copy_(plain[3].weight)
            if bias:
                mha.in_proj_bias.copy_(torch.cat([p.bias for p in plain[:3]], dim=0))
                mha.out_proj.bias.copy_(plain[3].bias)
        return mha.to(plain[0].weight.device, plain[0].weight.dtype)

    def _mask(self, attn_mask, key_padding_mask, batch: int, q_len: int, k_len: int, dtype):
        mask = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # MHA: True = masked out
                attn_mask = torch.zeros_like(attn_mask, dtype=dtype).masked_fill(attn_mask, float("-inf"))
            mask = attn_mask.to(dtype)
            if mask.dim() == 3:  # (B*H, L, S)
                mask = mask.view(batch, self.num_heads, q_len, k_len)
        if key_padding_mask is not None:
            kpm = key_padding_mask
            if kpm.dtype == torch.bool:
                kpm = torch.zeros_like(kpm, dtype=dtype).masked_fill(kpm, float("-inf"))
            kpm = kpm.to(dtype).view(batch, 1, 1, k_len)
            mask = kpm if mask is None else mask + kpm
        return mask

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights: bool = False,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        """Same call convention as ``nn.MultiheadAttention``; returns ``(output, None)``."""
        key = query if key is None else key
        value = key if value is None else value
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, lq, _ = query.shape
        lk = key.shape[1]
        h, d = self.num_heads, self.embed_dim // self.num_heads
        q = self.q_proj(query).view(b, lq, h, d).transpose(1, 2)
        k = self.k_proj(key).view(b, lk, h, d).transpose(1, 2)
        v = self.v_proj(value).view(b, lk, h, d).transpose(1, 2)
        mask = self._mask(attn_mask, key_padding_mask, b, lq, lk, q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None


def _replace(model: nn.Module, kind: type, make) -> int:
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, kind)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(mod))
    return len(targets)


def swap_attention(model: nn.Module) -> int:
    """Replace every ``nn.MultiheadAttention`` by :class:`SdpaAttention`; returns the count."""
    n = _replace(model, nn.MultiheadAttention, SdpaAttention.from_mha)
    if n == 0:
        log.warning("no nn.MultiheadAttention found to swap (convolutional image tower?)")
    return n


def unswap_attention(model: nn.Module) -> int:
    """Map every :class:`SdpaAttention` back to ``nn.MultiheadAttention`` (LoRA merged in)."""
    return _replace(model, SdpaAttention, lambda m: m.to_mha())
