"""Cutting captions after the batch's last end-of-text token changes no feature, loss or gradient."""

import open_clip
import pytest
import torch

from tests.training.conftest import REPO
from training.config import ModelConfig, Stage2Config
from clip_models.loading import create_model
from clip_models.text_tower import encode_text, encode_text_tokens, keep_length, trim_text
from training.trainer import build_model, forward_losses

CAPTIONS = ["a harbour", "two planes parked on a runway next to the terminal", "", "many green fields"]


def _cfg(fine_grained: bool) -> Stage2Config:
    cfg = Stage2Config()
    cfg.model = ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json"))
    cfg.loss.use_fine_grained = fine_grained
    return cfg


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fine_grained", [False, True])
def test_losses_and_lora_gradients_are_unchanged_by_trimming(fine_grained):
    torch.manual_seed(0)
    cfg = _cfg(fine_grained)
    model, _ = build_model(cfg)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give the adapters weight
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    text = open_clip.get_tokenizer("tiny-clip")(CAPTIONS)
    batch = {"images": torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8), "weights": torch.ones(4)}
    results = []
    for t in (text, trim_text(model.clip, text)):
        model.zero_grad()
        terms = forward_losses(model, {**batch, "text": t}, cfg)
        terms["total_loss"].backward()
        results.append((t.shape[1], {k: v.detach() for k, v in terms.items()}, _grads(model)))
    (n_full, full, g_full), (n_cut, cut, g_cut) = results
    assert n_full == 77 and n_cut == 16  # the longest caption: start, 10 words, end; rounded up to 8s
    assert full.keys() == cut.keys() and ("fine_grained_loss" in full) == fine_grained
    for k in full:
        torch.testing.assert_close(cut[k], full[k], atol=1e-5, rtol=1e-4)
    assert g_full.keys() == g_cut.keys() and len(g_full) > 10
    for k in g_full:
        torch.testing.assert_close(g_cut[k], g_full[k], atol=1e-5, rtol=1e-3)


def test_encoders_on_cut_text_match_open_clip():
    model = create_model(_cfg(False).model).eval()
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
    model = create_model(_cfg(False).model)
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
