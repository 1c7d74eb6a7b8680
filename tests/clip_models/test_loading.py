"""One loader for every stage: checkpoint layouts, strictness, resizing, hub syntax, old configs."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import save_file

from clip_models.config import ModelConfig
from clip_models.loading import create_model, load_clip, model_name, read_state_dict
from tests.clip_models.conftest import REPO, TINY, TINY_JSON
from wds_tools.config import ConfigError, load_config


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trained(tiny) -> dict[str, torch.Tensor]:
    """The tiny model's weights moved away from the seeded init, so a load that did nothing shows."""
    return {k: v + 0.5 if v.is_floating_point() else v for k, v in tiny.state_dict().items()}


def _with(pretrained, **kw) -> ModelConfig:
    return dataclasses.replace(TINY, pretrained=str(pretrained), **kw)


def test_plain_open_clip_train_and_safetensors_checkpoints_load_the_same(tiny, tmp_path):
    sd = _trained(tiny)
    torch.save(sd, tmp_path / "RemoteCLIP-tiny.pt")
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
               tmp_path / "epoch_3.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "model.safetensors")
    models = [create_model(_with(tmp_path / f)) for f in ("RemoteCLIP-tiny.pt", "epoch_3.pt", "model.safetensors")]
    for m in models:
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert not _equal(models[0], tiny)


def test_no_random_init_warning_when_weights_follow(tiny, tmp_path, caplog):
    torch.save(tiny.state_dict(), tmp_path / "w.pt")
    with caplog.at_level(logging.INFO):
        create_model(_with(tmp_path / "w.pt"))
    assert "initialized randomly" not in caplog.text and "loaded" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        create_model(TINY)
    assert "initialized randomly" not in caplog.text and "seeded random weights" in caplog.text


def test_loading_is_strict_except_the_causal_mask(tiny, tmp_path):
    sd = tiny.state_dict()
    torch.save({**sd, "attn_mask": torch.zeros(77, 77)}, tmp_path / "old.pt")  # older open_clip saved it
    assert _equal(create_model(_with(tmp_path / "old.pt")), tiny)
    torch.save({**sd, "visual.extra": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match="1 unexpected keys.*visual.extra"):
        create_model(_with(tmp_path / "extra.pt"))
    torch.save({k: v for k, v in sd.items() if k != "logit_scale"}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match="1 missing keys.*logit_scale"):
        create_model(_with(tmp_path / "short.pt"))
    torch.save({**sd, "text_projection": torch.zeros(3, 3)}, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match="does not fit.*text_projection"):
        create_model(_with(tmp_path / "shape.pt"))


class Payload:
    """Any class: unpickling it would mean running the checkpoint's code."""


def test_checkpoints_never_unpickle_objects(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="refused.*weights_only"):
        read_state_dict(tmp_path / "evil.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_position_embeddings_are_resized_like_open_clip(tiny, tmp_path):
    big = json.loads(TINY_JSON.read_text())
    big["vision_cfg"]["image_size"] = 96  # a 6 x 6 patch grid instead of 4 x 4
    big["text_cfg"]["context_length"] = 40
    (tmp_path / "tiny-clip-96.json").write_text(json.dumps(big))
    torch.save(tiny.state_dict(), tmp_path / "w.pt")
    model = create_model(ModelConfig(name=str(tmp_path / "tiny-clip-96.json"), pretrained=str(tmp_path / "w.pt")))
    assert model.visual.positional_embedding.shape[0] == 37 and model.positional_embedding.shape[0] == 40
    torch.testing.assert_close(model.visual.positional_embedding[0], tiny.visual.positional_embedding[0])
    torch.testing.assert_close(model.visual.conv1.weight, tiny.visual.conv1.weight)


def test_hub_checkpoint_syntax_downloads_the_named_file(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    torch.save(tiny.state_dict(), tmp_path / "RemoteCLIP-tiny.pt")

    def fake_download(repo_id, filename):  # hub weights cannot be fetched here
        calls.append((repo_id, filename))
        return str(tmp_path / "RemoteCLIP-tiny.pt")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert _equal(create_model(_with("hf-hub:chendelong/RemoteCLIP/RemoteCLIP-tiny.pt")), tiny)
    assert calls == [("chendelong/RemoteCLIP", "RemoteCLIP-tiny.pt")]
    with pytest.raises(ValueError, match="hf-hub:<org>/<repo>/<file>"):
        create_model(_with("hf-hub:chendelong/RemoteCLIP"))


def test_a_filter_checkpoint_string_works_unchanged_in_stage2(tiny, tmp_path, monkeypatch):
    """The pretrained string of configs/filter/default.yaml, pasted into configs/train/tiny.yaml."""
    import huggingface_hub

    from builders.quality.config import QualityConfig
    from training.config import Stage2Config

    sd = _trained(tiny)
    torch.save(sd, tmp_path / "ckpt.pt")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename: str(tmp_path / "ckpt.pt"))
    hub = yaml.safe_load((REPO / "configs/filter/default.yaml").read_text())["model"]["pretrained"]
    for pretrained in (hub, str(tmp_path / "ckpt.pt")):
        # the filter's tiny config names the model by its JSON path, Stage 2's by name + config_file
        q = load_config(QualityConfig, REPO / "configs/filter/tiny.yaml", [f"model.pretrained={pretrained}"])
        s = load_config(Stage2Config, REPO / "configs/train/tiny.yaml", [f"model.pretrained={pretrained}"])
        scorer, size, _ = load_clip(q.model)
        trainer = create_model(s.model)
        assert model_name(q.model) == model_name(s.model) == "tiny-clip" and size == 64
        for m in (scorer, trainer):
            assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    # and the other way round: Stage 2's model section in the filter
    q = load_config(QualityConfig, REPO / "configs/filter/tiny.yaml",
                    ["model.name=tiny-clip", f"model.config_file={TINY_JSON}", f"model.pretrained={hub}"])
    assert _equal(load_clip(q.model)[0], create_model(s.model))


def test_old_stage2_weights_syntax_says_what_to_write(tmp_path):
    from training.config import Stage2Config

    old = yaml.safe_load((REPO / "configs/train/lora.yaml").read_text())
    old["model"].update(pretrained="chendelong/RemoteCLIP", hub_filename="RemoteCLIP-ViT-B-32.pt")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    want = "pretrained: hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt"
    with pytest.raises(ConfigError, match=f"model: hub_filename is no longer read.*{want}"):
        load_config(Stage2Config, tmp_path / "old.yaml")
    del old["model"]["hub_filename"]  # the file used to be derived from the model name
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=want):
        load_config(Stage2Config, tmp_path / "old.yaml")
    for cfg in ("configs/train/lora.yaml", "configs/filter/default.yaml"):
        from builders.quality.config import QualityConfig

        cls = Stage2Config if "train" in cfg else QualityConfig
        assert load_config(cls, REPO / cfg).model.pretrained == "hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt"


def test_bad_names_and_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match="'ViT-Q-99' is neither an open_clip model"):
        create_model(ModelConfig(name="ViT-Q-99"))
    with pytest.raises(ValueError, match="checkpoint not found: .*missing.pt"):
        create_model(_with(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="no-such.json' does not exist"):
        create_model(ModelConfig(name=str(tmp_path / "no-such.json")))
    with pytest.raises(ConfigError, match="precision must be one of"):
        load_config(ModelConfig, values={"precision": "fp8"})
