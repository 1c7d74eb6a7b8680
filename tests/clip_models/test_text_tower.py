"""Cutting captions after the batch's last end-of-text token changes no feature (Stage 2's losses and
gradients: tests/training/test_trainer.py)."""

import open_clip
import pytest
import torch

from clip_models.config import ModelConfig
from clip_models.loading import create_model
from clip_models.text_tower import encode_text, encode_text_tokens, keep_length, trim_text
from tests.clip_models.conftest import REPO

CAPTIONS = ["a harbour", "two planes parked on a runway next to the terminal", "", "many green fields"]


def _model_cfg() -> ModelConfig:
    return ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json"))


def test_encoders_on_cut_text_match_open_clip():
    model = create_model(_model_cfg()).eval()
    text = open_clip.get_tokenizer("tiny-clip")(CAPTIONS)
    cut = trim_text(model, text)
    assert keep_length(model, text) == cut.shape[1] < 77
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, text), model.encode_text(text), atol=1e-5, rtol=1e-4)
        pooled, words = encode_text_tokens(model, cut)
        full_pooled, full_words = encode_text_tokens(model, text)
    torch.testing.assert_close(pooled, full_pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(words, full_words[:, :cut.shape[1]], atol=1e-5, rtol=1e-4)


def test_text_that_fills_the_context_is_not_cut():
    model = create_model(_model_cfg())
    text = open_clip.get_tokenizer("tiny-clip")(["field " * 100])
    assert trim_text(model, text) is text


def test_cached_tokenizer_equals_the_tokenizer_and_tokenises_each_caption_once():
    import pickle

    from clip_models.text_tower import CachedTokenizer

    tok = open_clip.get_tokenizer("tiny-clip")
    calls = []

    def counting(texts):
        calls.append(list(texts))
        return tok(texts)

    cached = CachedTokenizer(counting, max_entries=3)
    batch1 = ["a river", "a river", "two planes", "a river"]
    batch2 = ["two planes", "a forest", "a lake", "a river"]
    assert torch.equal(cached(batch1), tok(batch1)) and torch.equal(cached(batch2), tok(batch2))
    assert calls == [["a river", "two planes"], ["a forest", "a lake"]]  # misses only, once each
    # the cache holds the 3 most recently used: "a river" was used last, "two planes" was evicted
    assert list(cached._cache) == ["a forest", "a lake", "a river"]
    assert torch.equal(cached(["two planes"]), tok(["two planes"])) and calls[-1] == ["two planes"]
    assert cached([]).shape == (0, 77)
    assert torch.equal(pickle.loads(pickle.dumps(CachedTokenizer(tok)))(batch1), tok(batch1))
    with pytest.raises(ValueError, match="max_entries must be >= 1, got 0"):
        CachedTokenizer(tok, max_entries=0)
