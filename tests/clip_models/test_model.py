"""Attention swap and token encoders on tiny open_clip models (ViT and a ResNet image tower)."""

from __future__ import annotations

import copy
import json

import open_clip
import pytest
import torch
from torch import nn

from tests.training.conftest import REPO
from training.config import LoraConfig, ModelConfig
from training.lora import apply_lora, head_parameter_names, mark_trainable
from clip_models.model import (SdpaAttention, create_clip, encode_image_tokens, has_patch_tokens,
                            swap_attention, unswap_attention)
from clip_models.text_tower import encode_text_tokens
from training.trainer import Stage2Model

TINY = ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json"))


@pytest.fixture(scope="module")
def tiny():
    return create_clip(TINY).eval()


def _inputs(model):
    img = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    text = open_clip.get_tokenizer("tiny-clip")(["a harbour", "two planes on a runway", ""])
    return img, text


def test_swap_reproduces_stock_outputs_and_maps_back(tiny):
    img, text = _inputs(tiny)
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


def test_token_encoders_match_pooled_outputs(tiny):
    img, text = _inputs(tiny)
    with torch.no_grad():
        pooled, patches = encode_image_tokens(tiny, img)
        torch.testing.assert_close(pooled, tiny.encode_image(img))
        pooled_t, words = encode_text_tokens(tiny, text)
        torch.testing.assert_close(pooled_t, tiny.encode_text(text))
    assert patches.shape == (3, 16, 32) and words.shape == (3, 77, 32)
    assert tiny.visual.output_tokens is False


def test_stage2_model_normalises_uint8_on_device(tiny):
    model = Stage2Model(clip=copy.deepcopy(tiny), fine_grained=False).eval()
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    text = open_clip.get_tokenizer("tiny-clip")(["a", "b"])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(img, text)
        want = torch.nn.functional.normalize(tiny.encode_image((img.float() / 255 - mean) / std), dim=-1)
    torch.testing.assert_close(out["image"], want)


def test_pretrained_checkpoint_loads_with_weights_only(tiny, tmp_path):
    path = tmp_path / "RemoteCLIP-tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny.state_dict().items()}}, path)
    loaded = create_clip(ModelConfig(name="tiny-clip", pretrained=str(path)))
    for k, v in tiny.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="not an open_clip model"):
        create_clip(ModelConfig(name="ViT-Q-99"))
    with pytest.raises(ValueError, match="neither a checkpoint file nor a hub repo id"):
        create_clip(ModelConfig(name="tiny-clip", pretrained=str(tmp_path / "missing.pt")))


def test_resnet_tower_lora_on_text_and_attnpool_head_trained(tmp_path):
    cfg_path = tmp_path / "tiny-rn.json"
    cfg_path.write_text(json.dumps({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}))
    model = create_clip(ModelConfig(name="tiny-rn", config_file=str(cfg_path)))
    swap_attention(model)
    names = apply_lora(model, LoraConfig())
    assert names and all(not n.startswith("visual.") for n in names)
    mark_trainable(model)
    assert not has_patch_tokens(model)
    assert "visual.attnpool.c_proj.weight" in head_parameter_names(model)
    img = torch.randn(2, 3, 64, 64)
    model.encode_image(img).sum().backward()
    assert model.visual.attnpool.c_proj.weight.grad.abs().sum() > 0
    assert model.visual.attnpool.q_proj.weight.grad is None


def test_hub_id_resolves_to_the_remoteclip_file(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    from clip_models.model import hub_filename

    calls = []
    local = tmp_path / "RemoteCLIP-tiny.pt"
    torch.save(tiny.state_dict(), local)

    def fake_download(repo_id, filename):  # hub weights cannot be fetched here
        calls.append((repo_id, filename))
        return str(local)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    create_clip(ModelConfig(name="tiny-clip", pretrained="chendelong/RemoteCLIP", hub_filename="RemoteCLIP-tiny.pt"))
    assert calls == [("chendelong/RemoteCLIP", "RemoteCLIP-tiny.pt")]
    assert hub_filename(ModelConfig(name="ViT-B-32-quickgelu")) == "RemoteCLIP-ViT-B-32.pt"
    assert hub_filename(ModelConfig(name="RN50")) == "RemoteCLIP-RN50.pt"


def test_cli_flags_fill_the_config(tmp_path):
    from training.config import CLI_FLAGS, Stage2Config
    from wds_tools.config import parse_cli

    cfg = parse_cli(Stage2Config, ["--config", str(REPO / "configs/train/lora.yaml"), "--real", "a,b",
                                   "--synthetic", "s", "--output", str(tmp_path), "--max-steps", "5",
                                   "loss.fine_grained_weight=0.5"], prog="t", description="t", flags=CLI_FLAGS)
    assert cfg.data.real == ["a", "b"] and cfg.data.synthetic == ["s"] and cfg.train.max_steps == 5
    assert cfg.train.output == str(tmp_path) and cfg.loss.fine_grained_weight == 0.5
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.data.synthetic_ratio, cfg.train.batch_size) == (8, 16.0, 0.8, 32)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.mixed_precision == "bf16" and cfg.train.num_epochs == 10
    with pytest.raises(SystemExit):
        parse_cli(Stage2Config, ["--config", str(REPO / "configs/train/lora.yaml"), "lora.rnak=4"],
                  prog="t", description="t", flags=CLI_FLAGS)
