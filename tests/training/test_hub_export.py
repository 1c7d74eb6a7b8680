"""training.export --format open_clip-hub: open_clip's local-dir: loading, the peft adapter, the model card."""

from __future__ import annotations

import copy
import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clip_models.attention import swap_attention
from clip_models.loading import create_model
from training.export import export_merged
from training.export import main as export_main
from training.hub_export import export_hub


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    out, cfg = trained_run
    tmp = tmp_path_factory.mktemp("hub")
    merged = export_merged(cfg, merged=str(tmp / "merged.pt"))
    hub = export_hub(cfg, out=str(tmp / "hub"), command="python -m training.export --format open_clip-hub")
    return out, cfg, merged, hub


def _embed(model, img, text):
    with torch.no_grad():
        return model.eval().encode_image(img), model.encode_text(text)


def test_local_dir_loads_the_same_model_as_the_merged_checkpoint(exported):
    _, cfg, merged, hub = exported
    assert sorted(p.name for p in hub.iterdir()) == [
        "README.md", "open_clip_config.json", "open_clip_model.safetensors", "peft_adapter", "training_config.yaml"]
    assert not list(hub.parent.glob("*.tmp-partial"))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{hub}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{hub}")
    stock = open_clip.create_model(cfg.model.name, pretrained=str(merged))
    img, text = torch.randn(3, 3, 64, 64), tokenizer(["a forest", "an airport", "two runways"])
    for got, want in zip(_embed(model, img, text), _embed(stock, img, text)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    base = create_model(cfg.model)
    assert not torch.allclose(_embed(base, img, text)[0], _embed(stock, img, text)[0], atol=1e-4)  # trained
    config = json.loads((hub / "open_clip_config.json").read_text())
    assert config["model_cfg"] == open_clip.get_model_config(cfg.model.name)
    assert config["preprocess_cfg"]["size"] == 64
    assert config["preprocess_cfg"]["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert any(type(t).__name__ == "Normalize" and list(t.mean) == config["preprocess_cfg"]["mean"]
               for t in preprocess.transforms)


def test_peft_adapter_on_the_same_base_gives_the_same_embeddings(exported):
    from peft import PeftModel

    _, cfg, _, hub = exported
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{hub}")
    base = create_model(cfg.model)
    swap_attention(base)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(hub / "peft_adapter"))
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, t in load_file(str(hub / "peft_adapter" / "projection_heads.safetensors")).items():
            dict(inner.named_parameters())[name].copy_(t)
    img = torch.randn(2, 3, 64, 64)
    text = open_clip.get_tokenizer(f"local-dir:{hub}")(["a forest", "an airport with two runways"])
    for got, want in zip(_embed(inner, img, text), _embed(model, img, text)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_model_card_describes_the_run(exported):
    out, cfg, _, hub = exported
    card = (hub / "README.md").read_text()
    saved = json.loads((out / "training_log.json").read_text())
    assert card.startswith("---\nlibrary_name: open_clip\n")
    assert "- open_clip model: `tiny-clip`" in card
    assert f"rank {cfg.lora.rank}, alpha {cfg.lora.alpha}" in card
    share = saved["summary"]["realised_synthetic_share"]
    assert f"requested synthetic share {cfg.data.synthetic_ratio}, realised {share:.3f}" in card
    # the fixtures' selections: threshold 0.3; the synthetic source keeps 3 of every 4 samples
    assert "threshold 0.3000" in card
    assert "- synthetic source of this run: 18 kept samples in 3 shards (beach 6, river 12)" in card
    assert "- real source of this run: 24 kept samples in 4 shards (airport 4, forest 20)" in card
    for when in ("before", "after"):
        mean = saved["evaluation"][when]["retrieval"]["mean_recall"]
        assert f"| {when} Stage 2 | 8 | 16 |" in card and f"| {mean:.1f} |" in card
    assert "python -m training.export --format open_clip-hub" in card


def test_unknown_format_is_a_one_line_error(trained_run, capsys):
    out, _ = trained_run
    assert export_main(["--format", "onnx", "--output", str(out)]) == 2
    assert "--format must be open_clip" in capsys.readouterr().err
