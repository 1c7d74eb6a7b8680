"""End-to-end tiny runs: outputs, kill -9 + deterministic resume, NaN abort, export, peft loading."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from clip_models.attention import swap_attention
from clip_models.loading import create_model
from tests.training.conftest import REPO, TINY_CONFIG
from training.config import Stage2Config
from training.export import export_merged, load_trained
from training.lora import apply_lora, load_lora_state_dict
from training.trainer import train
from wds_tools.config import load_config


def _overrides(shard_dirs, out: Path, *extra: str) -> list[str]:
    return [f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
            f"train.output={out}", "train.max_steps=7", "train.checkpoint_every=3",
            "train.log_sample_keys=true", "eval.before=false", "eval.after=false", *extra]


def _keys_by_step(out: Path) -> dict[tuple[int, int], list[str]]:
    # A resumed run re-runs the steps after its checkpoint: the last record of a step wins.
    lines = (out / "sample_keys.rank0.jsonl").read_text().splitlines()
    return {(r["step"], r["micro"]): r["keys"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def reference_run(shard_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    cfg = load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, out, f"eval.shards=[{shard_dirs['val']}]", "eval.before=true", "eval.after=true"))
    return out, cfg, train(cfg)


def test_outputs_and_log_format(reference_run):
    out, cfg, log = reference_run
    saved = json.loads((out / "training_log.json").read_text())
    assert list(saved)[0] == "config" and saved["config"]["train"]["max_steps"] == 7
    assert [e["step"] for e in saved["training_log"]] == list(range(1, 8))
    for entry in saved["training_log"]:
        for key in ("epoch", "total_loss", "clip_loss", "fine_grained_loss", "acc_i2t", "acc_t2i", "synthetic_share"):
            assert key in entry, key
        # batch mix of 4-sample batches over 4 classes (a resampled sample may repeat: a same-source pair)
        assert 1 <= entry["classes_per_batch"] <= 4 and 0 <= entry["same_source_pairs_per_batch"] <= 6
        assert entry["masked_pairs"] >= 0
        total = entry["clip_loss"] + cfg.loss.fine_grained_weight * entry["fine_grained_loss"]
        assert entry["total_loss"] == pytest.approx(total, rel=1e-4)
    counters = saved["summary"]["counters"]
    assert counters["samples_real"] + counters["samples_synthetic"] == 7 * cfg.train.batch_size
    assert counters["quality_dropped"] > 0  # every 4th synthetic sample fails the quality sidecar
    assert saved["summary"]["realised_synthetic_share"] == pytest.approx(
        counters["samples_synthetic"] / (7 * cfg.train.batch_size))
    assert saved["summary"]["rare_classes"] == ["airport"]
    for when in ("before", "after"):
        ev = saved["evaluation"][when]
        assert ev["num_images"] == 8 and ev["num_captions"] == 16
        assert 0 <= ev["retrieval"]["mean_recall"] <= 100 and ev["zeroshot"]["num_classes"] == 4
    for name in ("lora_final.pt", "projection_heads_final.pt", "config.yaml"):
        assert (out / name).is_file(), name
    with Image.open(out / "training_curves.png") as img:
        assert img.size[0] > 500
    heads = torch.load(out / "projection_heads_final.pt", weights_only=True)
    assert set(heads) == {"visual.proj", "text_projection", "logit_scale"}
    # Keys of sample_keys never contain quality-dropped samples (every 4th synthetic index).
    dropped = {f"synthetic_{s}_{i}" for s in range(3) for i in range(24) if i % 4 == 3}
    assert not dropped & {k for keys in _keys_by_step(out).values() for k in keys}


def test_peft_adapter_and_merged_export_reproduce_the_trained_model(reference_run, tmp_path):
    from peft import PeftModel

    out, cfg, _ = reference_run
    lean = create_model(cfg.model)
    swap_attention(lean)
    apply_lora(lean, cfg.lora)
    load_lora_state_dict(lean, torch.load(out / "lora_final.pt", weights_only=True))
    heads = torch.load(out / "projection_heads_final.pt", weights_only=True)
    with torch.no_grad():
        for name, t in heads.items():
            dict(lean.named_parameters())[name].copy_(t)
    base = create_model(cfg.model)
    swap_attention(base)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(out / "peft_adapter"))
    with torch.no_grad():
        for name, t in heads.items():
            dict(peft_model.base_model.model.named_parameters())[name].copy_(t)
    img = torch.randn(2, 3, 64, 64)
    text = open_clip.get_tokenizer(cfg.model.name)(["a forest", "an airport with two runways"])
    with torch.no_grad():
        want = lean.encode_image(img), lean.encode_text(text)
        got = peft_model.base_model.model.encode_image(img), peft_model.base_model.model.encode_text(text)
        assert not torch.allclose(want[0], base.encode_image(img), atol=1e-4)  # training changed the model
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)

    merged_path = export_merged(cfg, merged=str(tmp_path / "merged.pt"))
    stock = open_clip.create_model(cfg.model.name, pretrained=str(merged_path)).eval()
    assert any(isinstance(m, torch.nn.MultiheadAttention) for m in stock.modules())
    with torch.no_grad():
        torch.testing.assert_close(stock.encode_image(img), want[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(stock.encode_text(text), want[1], atol=1e-4, rtol=1e-4)
    assert load_trained(cfg, None) is not None


def test_evaluate_reads_the_adapter_of_train_output_and_matches_the_log_after(reference_run, shard_dirs, tmp_path,
                                                                              capsys):
    """What the demo's step 10 runs: ``training.evaluate --output DIR`` evaluates DIR/peft_adapter
    (it evaluated the base model before), with the figures of the training log's "after"."""
    from training.evaluate import main as evaluate

    out, _, _ = reference_run
    saved = json.loads((out / "training_log.json").read_text())["evaluation"]
    assert saved["after"] != saved["before"]  # else this test could not tell the two apart
    base = ["--config", str(TINY_CONFIG), "--shards", str(shard_dirs["val"]), "model.device=cpu"]
    assert evaluate([*base, "--output", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == saved["after"]
    assert evaluate([*base, "eval.base_only=true"]) == 0
    assert json.loads(capsys.readouterr().out) == saved["before"]

    typo = tmp_path / "stage2_lroa"
    assert evaluate([*base, "--output", str(typo)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no trained adapter at '{typo / 'peft_adapter'}'" in err[0], err


def test_kill9_then_resume_sees_the_same_samples(reference_run, shard_dirs, tmp_path):
    ref_out, _, _ = reference_run
    args = _overrides(shard_dirs, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--config", str(TINY_CONFIG), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = tmp_path / "checkpoints" / "step_0000003"  # appears by an atomic rename
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_dir():
            os.kill(proc.pid, signal.SIGKILL)  # 4 steps and the final save are still to come
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    proc.stderr.close()
    assert checkpoint.is_dir()
    assert not (tmp_path / "training_log.json").exists()
    # nothing in a checkpoint needs an unpickle to load (Accelerate's custom objects would)
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    saved_lr = json.loads((checkpoint / "trainer_state.json").read_text())["scheduler"]["_last_lr"]
    assert saved_lr[0] > 0

    train(load_config(Stage2Config, TINY_CONFIG, args))  # train.resume=auto picks step 3

    resumed, reference = _keys_by_step(tmp_path), _keys_by_step(ref_out)
    assert sorted(resumed) == [(s, 0) for s in range(7)]
    assert resumed == reference
    log = json.loads((tmp_path / "training_log.json").read_text())
    ref_log = json.loads((ref_out / "training_log.json").read_text())
    assert [e["step"] for e in log["training_log"]] == list(range(1, 8))
    for a, b in zip(log["training_log"], ref_log["training_log"]):
        assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-4)
    ours = torch.load(tmp_path / "lora_final.pt", weights_only=True)
    ref = torch.load(ref_out / "lora_final.pt", weights_only=True)
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], atol=1e-5, rtol=1e-4)


def test_nonfinite_losses_are_skipped_then_abort(shard_dirs, tmp_path):
    # An absurd learning rate drives the weights to inf after the first update: real NaN losses.
    cfg = load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, tmp_path, "train.learning_rate=1.0e+30", "train.warmup_steps=0", "train.max_nonfinite_steps=2",
        "train.checkpoint_every=0", "loss.use_fine_grained=false"))
    with pytest.raises(RuntimeError, match="aborting: 3 steps with NaN/inf loss"):
        train(cfg)


def test_stage2_model_normalises_uint8_on_device():
    from clip_models.config import ModelConfig
    from training.trainer import Stage2Model

    tiny = create_model(ModelConfig(name=str(REPO / "configs/models/tiny-clip.json"))).eval()
    model = Stage2Model(clip=copy.deepcopy(tiny), fine_grained=False).eval()
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    text = open_clip.get_tokenizer("tiny-clip")(["a", "b"])
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(img, text)
        want = torch.nn.functional.normalize(tiny.encode_image((img.float() / 255 - mean) / std), dim=-1)
    torch.testing.assert_close(out["image"], want)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


TRIM_CAPTIONS = ["a harbour", "two planes parked on a runway next to the terminal", "", "many green fields"]


@pytest.mark.parametrize("fine_grained", [False, True])
def test_losses_and_lora_gradients_are_unchanged_by_trimming(fine_grained):
    """Cutting captions after the batch's last end-of-text token changes no loss or gradient."""
    from clip_models.config import ModelConfig
    from clip_models.text_tower import trim_text
    from training.trainer import build_model, forward_losses

    torch.manual_seed(0)
    cfg = Stage2Config()
    cfg.model = ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json"))
    cfg.loss.use_fine_grained = fine_grained
    model, _ = build_model(cfg)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0): give the adapters weight
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    text = open_clip.get_tokenizer("tiny-clip")(TRIM_CAPTIONS)
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
