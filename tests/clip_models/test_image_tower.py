"""Per-patch token output of the image tower agrees with open_clip's pooled output."""

from __future__ import annotations

import open_clip
import torch

from clip_models.image_tower import encode_image_tokens, has_patch_tokens
from clip_models.text_tower import encode_text_tokens


def test_token_encoders_match_pooled_outputs(tiny):
    img = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("tiny-clip")(["a harbour", "two planes on a runway", ""])
    with torch.no_grad():
        pooled, patches = encode_image_tokens(tiny, img)
        torch.testing.assert_close(pooled, tiny.encode_image(img))
        pooled_t, words = encode_text_tokens(tiny, text)
        torch.testing.assert_close(pooled_t, tiny.encode_text(text))
    assert patches.shape == (3, 16, 32) and words.shape == (3, 77, 32)
    assert tiny.visual.output_tokens is False and has_patch_tokens(tiny)
