"""Lean LoRA layer: maths, gradients, peft adapter round trip, merge."""

from __future__ import annotations

import copy

import open_clip
import pytest
import torch
from torch import nn

from clip_models.attention import swap_attention
from clip_models.loading import create_model
from tests.training.conftest import REPO
from training.config import LoraConfig, ModelConfig
from training.lora import (
    LoraLinear,
    apply_lora,
    load_peft_adapter,
    lora_modules,
    mark_trainable,
    merge_lora,
    save_peft_adapter,
)

TINY = ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json"))


@pytest.fixture()
def lora_model():
    model = create_model(TINY)
    swap_attention(model)
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    torch.manual_seed(3)
    for mod in lora_modules(model).values():
        nn.init.normal_(mod.lora_B.weight, std=0.05)
    return model.eval()


def test_lora_linear_matches_dense_update_and_merges():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoraLinear(base=copy.deepcopy(base), rank=2, alpha=4)
    x = torch.randn(3, 8)
    torch.testing.assert_close(layer(x), base(x))  # B starts at zero
    nn.init.normal_(layer.lora_B.weight)
    dense = base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight
    torch.testing.assert_close(layer(x), x @ dense.T + base.bias)
    torch.testing.assert_close(layer.merged()(x), layer(x))
    with pytest.raises(ValueError, match="rank must be positive"):
        LoraLinear(base=base, rank=0, alpha=1)


def test_targets_trainables_and_gradients():
    model = create_model(TINY)
    with pytest.raises(ValueError, match="MultiheadAttention"):
        apply_lora(copy.deepcopy(model), LoraConfig())
    swap_attention(model)
    names = apply_lora(model, LoraConfig())
    assert len(names) == 2 * 2 * 6  # 2 towers x 2 blocks x (q, k, v, out, c_fc, c_proj)
    counts = mark_trainable(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"visual.proj", "text_projection", "logit_scale"} <= trainable
    assert all("lora_" in n or n in ("visual.proj", "text_projection", "logit_scale") for n in trainable)
    assert counts["trainable"] < counts["total"] / 20
    for mod in lora_modules(model).values():
        nn.init.normal_(mod.lora_B.weight, std=0.05)
    text = open_clip.get_tokenizer("tiny-clip")(["a river", "a bridge"])
    (model.encode_image(torch.randn(2, 3, 64, 64)).sum() + model.encode_text(text).sum()).backward()
    for name, mod in lora_modules(model).items():
        assert mod.lora_A.weight.grad.abs().sum() > 0, name
        assert mod.base.weight.grad is None


def test_peft_adapter_round_trip(lora_model, tmp_path):
    from peft import PeftModel

    folder = save_peft_adapter(lora_model, tmp_path / "adapter", cfg=LoraConfig(rank=4, alpha=8))
    base = create_model(TINY)
    swap_attention(base)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    img = torch.randn(2, 3, 64, 64)
    text = open_clip.get_tokenizer("tiny-clip")(["a harbour", "farmland"])
    with torch.no_grad():
        want_i, want_t = lora_model.encode_image(img), lora_model.encode_text(text)
        torch.testing.assert_close(peft_model.base_model.model.encode_image(img), want_i, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(peft_model.base_model.model.encode_text(text), want_t, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(base.encode_image(img), want_i, atol=1e-4)
    fresh = copy.deepcopy(base)
    apply_lora(fresh, LoraConfig(rank=4, alpha=8))
    load_peft_adapter(fresh, folder)
    merge_lora(fresh)
    assert not any(isinstance(m, LoraLinear) for m in fresh.modules())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval().encode_image(img), want_i, atol=1e-5, rtol=1e-4)


def test_resnet_tower_lora_on_text_and_attnpool_head_trained(tmp_path):
    import json

    from clip_models.image_tower import has_patch_tokens
    from training.lora import head_parameter_names

    cfg_path = tmp_path / "tiny-rn.json"
    cfg_path.write_text(json.dumps({
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}))
    model = create_model(ModelConfig(name="tiny-rn", config_file=str(cfg_path)))
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
