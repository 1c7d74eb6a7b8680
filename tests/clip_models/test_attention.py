"""Attention swap: MultiheadAttention <-> Linears + SDPA, same outputs both ways."""

from __future__ import annotations

import copy

import open_clip
import torch
from torch import nn

from clip_models.attention import SdpaAttention, swap_attention, unswap_attention


def test_swap_reproduces_stock_outputs_and_maps_back(tiny):
    img = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("tiny-clip")(["a harbour", "two planes on a runway", ""])
    swapped = copy.deepcopy(tiny)
    assert swap_attention(swapped) == 4
    assert not any(isinstance(m, nn.MultiheadAttention) for m in swapped.modules())
    assert sum(isinstance(m, SdpaAttention) for m in swapped.modules()) == 4
    with torch.no_grad():
        torch.testing.assert_close(swapped.encode_image(img), tiny.encode_image(img), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(swapped.encode_text(text), tiny.encode_text(text), atol=1e-5, rtol=1e-4)
    assert unswap_attention(swapped) == 4
    for k, v in tiny.state_dict().items():
        torch.testing.assert_close(swapped.state_dict()[k], v)


def test_sdpa_attention_matches_mha_with_masks():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=False).eval()
    sdpa = SdpaAttention.from_mha(mha)
    x = torch.randn(5, 2, 16)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    with torch.no_grad():
        for kwargs in ({}, {"attn_mask": causal}, {"attn_mask": causal.isinf()}, {"key_padding_mask": pad}):
            want = mha(x, x, x, need_weights=False, **kwargs)[0]
            torch.testing.assert_close(sdpa(x, x, x, **kwargs)[0], want, atol=1e-5, rtol=1e-4)
