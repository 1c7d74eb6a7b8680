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


def test_rslora_scaling_matches_peft_and_is_checked_on_load(tmp_path):
    from peft import PeftModel

    cfg = LoraConfig(rank=4, alpha=8, rslora=True)
    model = create_model(TINY)
    swap_attention(model)
    base = copy.deepcopy(model)
    apply_lora(model, cfg)
    mods = lora_modules(model)
    assert all(m.scaling == pytest.approx(8 / 2) for m in mods.values())  # alpha / sqrt(4), not alpha / 4
    torch.manual_seed(5)
    for mod in mods.values():
        nn.init.normal_(mod.lora_B.weight, std=0.05)
    folder = save_peft_adapter(model.eval(), tmp_path / "adapter", cfg=cfg)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(peft_model.base_model.model.encode_image(img), model.encode_image(img),
                                   atol=1e-5, rtol=1e-5)
    plain = copy.deepcopy(base)
    apply_lora(plain, LoraConfig(rank=4, alpha=8))
    with pytest.raises(ValueError, match="use_rslora"):
        load_peft_adapter(plain, folder)


def test_full_parameters_beside_lora_follow_the_config():
    model = create_model(TINY)
    swap_attention(model)
    apply_lora(model, LoraConfig())
    heads = {"visual.proj", "text_projection", "logit_scale"}

    def trainable(cfg):
        mark_trainable(model, cfg)
        return {n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n}

    assert trainable(LoraConfig()) == heads
    assert trainable(LoraConfig(train_heads=False)) == set()
    with_ln = trainable(LoraConfig(train_layernorms=True))
    norms = {n for n in with_ln - heads}
    assert norms and all(".ln" in n or n.startswith(("ln_", "visual.ln_")) for n in norms), norms
    assert {"ln_final.weight", "ln_final.bias", "visual.ln_post.weight"} <= norms
    assert trainable(LoraConfig(train_token_embedding=True)) == heads | {"token_embedding.weight"}


def test_schedule_and_optimizer_groups():
    from training.config import Stage2Config
    from training.optim import cosine_with_warmup, make_optimizer

    model = create_model(TINY)
    swap_attention(model)
    cfg = Stage2Config()
    cfg.lora.train_layernorms = True
    apply_lora(model, cfg.lora)
    mark_trainable(model, cfg.lora)
    cfg.train.learning_rate, cfg.train.full_param_lr_scale = 1e-3, 0.1
    opt = make_optimizer(model, cfg)
    lrs = {(g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert lrs == {(1e-3, cfg.train.weight_decay), (1e-4, cfg.train.weight_decay), (1e-4, 0.0)}
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert by_id[id(params["ln_final.weight"])]["weight_decay"] == 0.0
    assert by_id[id(params["visual.proj"])]["lr"] == pytest.approx(1e-4)
    factors = {}
    for schedule in ("cosine", "constant"):
        sched = cosine_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                   warmup=2, total=10, schedule=schedule)
        factors[schedule] = [sched.lr_lambdas[0](s) for s in range(10)]
    assert factors["constant"][:2] == [0.5, 1.0] and factors["constant"][2:] == [1.0] * 8
    assert factors["cosine"][2] == 1.0 and factors["cosine"][-1] < 0.05
    with pytest.raises(ValueError, match="train.schedule"):
        cosine_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), warmup=1, total=2,
                           schedule="linear")


def test_lora_plus_puts_b_factors_at_their_own_learning_rate():
    from training.config import Stage2Config
    from training.trainer import make_optimizer

    model = create_model(TINY)
    swap_attention(model)
    cfg = Stage2Config()
    apply_lora(model, cfg.lora)
    mark_trainable(model, cfg.lora)
    cfg.train.learning_rate = 1e-3
    plain_groups = len(make_optimizer(model, cfg).param_groups)
    cfg.train.lora_b_lr_scale = 16.0
    opt = make_optimizer(model, cfg)
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    lrs = {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    b = {n: lr for n, lr in lrs.items() if ".lora_B." in n}
    a = {n: lr for n, lr in lrs.items() if ".lora_A." in n}
    assert b and a and all(v == pytest.approx(16e-3) for v in b.values()) and set(a.values()) == {1e-3}
    assert lrs["visual.proj"] == 1e-3  # the heads follow full_param_lr_scale, not LoRA+
    assert len(opt.param_groups) == plain_groups + 1  # only the B factors move to a group of their own
    cfg.train.lora_b_lr_scale = 0.0
    with pytest.raises(ValueError, match="lora_b_lr_scale must be > 0, got 0.0"):
        cfg.train.validate()


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
