import open_clip
import pytest
import torch

from builders.quality.clip_score import ClipScorer, encode_text
from clip_models.config import ModelConfig
from clip_models.loading import load_clip
from tests.builders.quality.conftest import REPO

TINY = str(REPO / "configs" / "models" / "tiny-clip.json")
CAPTIONS = ["a river", "two buildings next to a road in the upper left of a dense residential area",
            "many cars in a parking lot", ""]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_clip(ModelConfig(name=TINY, device="cpu", precision="fp32"))


def test_trimmed_text_features_equal_the_full_context(tiny):
    model, _, tokenizer = tiny
    tokens = tokenizer(CAPTIONS)
    assert tokens.shape[1] == 77 and int(tokens.argmax(-1).max()) < 20  # there is padding to trim
    with torch.inference_mode():
        full, trimmed = model.encode_text(tokens), encode_text(model, tokens)
    assert trimmed.shape == full.shape
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-4)
    # per caption, not only as a batch: each one pooled at its own end-of-text token
    with torch.inference_mode():
        alone = torch.cat([encode_text(model, tokens[i:i + 1]) for i in range(len(CAPTIONS))])
    torch.testing.assert_close(alone, full, atol=1e-5, rtol=1e-4)


def test_a_caption_filling_the_context_is_not_trimmed(tiny):
    model, _, tokenizer = tiny
    tokens = tokenizer(["field " * 100, "a river"])  # the first is cut to 77 tokens, EOT last
    assert int(tokens.argmax(-1)[0]) == 76
    with torch.inference_mode():
        torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens))


def test_towers_that_do_not_pool_at_the_end_token_get_the_full_call(tiny):
    model, _, tokenizer = tiny
    tokens = tokenizer(CAPTIONS)
    model.text_pool_type = "last"  # the last position sees the padding: trimming would change it
    try:
        with torch.inference_mode():
            torch.testing.assert_close(encode_text(model, tokens), model.encode_text(tokens))
    finally:
        model.text_pool_type = "argmax"


def test_scorer_uses_the_trimmed_text_and_matches_the_plain_cosine(tiny):
    model, size, tokenizer = tiny
    images = torch.randint(0, 256, (len(CAPTIONS), 3, size, size), dtype=torch.uint8)
    tokens = tokenizer(CAPTIONS)
    sims = ClipScorer(model=model, device=torch.device("cpu"), precision="fp32")(images, tokens)
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        img = model.encode_image((images.float() / 255 - mean) / std, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(sims, (img * txt).sum(-1), atol=1e-5, rtol=1e-4)


def test_repeated_captions_are_encoded_once_with_the_same_scores(tiny):
    model, size, tokenizer = tiny
    captions = ["a river", "a river", "two buildings", "a river", "two buildings", "a forest"]
    images = torch.randint(0, 256, (len(captions), 3, size, size), dtype=torch.uint8)
    scorer = ClipScorer(model=model, device=torch.device("cpu"), precision="fp32")
    seen = []
    hook = model.token_embedding.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    try:
        sims = scorer(images, tokenizer(captions))
    finally:
        hook.remove()
    assert seen == [3]  # three distinct captions went through the text tower
    alone = torch.cat([scorer(images[i:i + 1], tokenizer(captions[i:i + 1])) for i in range(len(captions))])
    torch.testing.assert_close(sims, alone, atol=1e-5, rtol=1e-4)
