"""One training run from the base, scored on the held-out split: Stage 2 (in process) or
open_clip's own trainer (``open_clip_train.main``, full fine-tune, a subprocess)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from clip_models.config import ModelConfig
from clip_models.loading import create_model
from clip_models.text_tower import build_tokenizer, tokenizer_spec
from training.config import Stage2Config
from training.evaluate import EvalSet, evaluate_model
from wds_tools.config import config_to_dict, parse_cli

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
MODEL_JSON = REPO / "configs" / "models" / "tiny-clip.json"
MODEL_NAME = MODEL_JSON.stem
TEMPLATES = Stage2Config().eval.templates
# The Stage 2 arms start from the shipped defaults (a saved run records the whole config they
# resolve to, so --resume trains again a run whose defaults changed).
STAGE2_DEFAULTS = REPO / "configs" / "train" / "lora.yaml"
# open_clip 3.3.0's trainer needs webdataset <= 0.2.86; it is installed beside the venv.
TRAIN_WDS = Path(sys.prefix) / "openclip-train-wds"


def base_model_config(base: str) -> ModelConfig:
    """The benchmark's model: the tiny CLIP config with the stand-in base weights."""
    return ModelConfig(name=MODEL_NAME, config_file=str(MODEL_JSON), pretrained=base, swap_attention=True)


def score(model: torch.nn.Module, heldout: EvalSet) -> dict:
    """Held-out figures: zero-shot accuracy and retrieval on human captions."""
    tok = build_tokenizer(tokenizer_spec(MODEL_NAME))
    r = evaluate_model(model, heldout, tokenizer=tok, templates=TEMPLATES, batch_size=128)
    return {"zeroshot": r["zeroshot"]["accuracy"], "mean_recall": r["retrieval"]["mean_recall"],
            "retrieval": r["retrieval"], "num_images": r["num_images"], "num_captions": r["num_captions"],
            "zeroshot_classes": r["zeroshot"]["num_classes"]}


def score_checkpoint(path: str, heldout: EvalSet) -> dict:
    """Score an open_clip state dict (base or open_clip_train checkpoint)."""
    return score(create_model(base_model_config(path)), heldout)


def stand_in_base(train_dir: str, out: Path, *, steps: int, batch_size: int) -> dict:
    """The project's stand-in base (training.standin_base, configs/train/base-tiny.yaml) trained on the train
    split; a finished one with the same data and steps is reused."""
    from training.standin_base import BaseConfig, train_base

    argv = ["--config", str(REPO / "configs/train/base-tiny.yaml"), f"data.real={json.dumps([train_dir])}",
            f"train.output={out}", f"train.steps={steps}", f"train.batch_size={batch_size}",
            "data.num_workers=0", "train.device=cpu", f"train.log_every={max(1, steps // 10)}"]
    cfg = parse_cli(BaseConfig, argv, prog="bench_learning", description="", default_config=None)
    log_file = out / "base_log.json"
    saved = json.loads(log_file.read_text()) if log_file.exists() and (out / "base.pt").exists() else None
    if saved and saved["config"]["train"] == json.loads(json.dumps(config_to_dict(cfg)["train"])) \
            and saved["config"]["data"]["real"] == [train_dir]:
        log.info("reusing the stand-in base in %s", out)
    else:
        saved = train_base(cfg)
    entries = saved["training_log"]
    return {"path": str(out / "base.pt"), "steps": steps, "batch_size": batch_size,
            "seconds": saved["summary"]["seconds"], "loss_first": entries[0]["total_loss"],
            "loss_last": entries[-1]["total_loss"]}


def file_digest(path: Path) -> str:
    """blake2b of a file's bytes (which base a saved run started from)."""
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


RUN_RESULT = "bench_run.json"


def run_spec(*, kind: str, real: list[str], synthetic: list[str], overrides: list[str], seed: int,
             samples: int, batch_size: int, base: str, config: Stage2Config | None = None) -> dict:
    """What a saved run must match to be read back: its settings, the base's digest and, for a
    Stage 2 run, the digest of the whole ``config`` (the shipped defaults with its overrides)."""
    spec = {"kind": kind, "real": real, "synthetic": synthetic, "overrides": overrides, "seed": seed,
            "samples": samples, "batch_size": batch_size, "base": base}
    if config is not None:
        text = json.dumps(config_to_dict(config), sort_keys=True, default=str)
        spec["config"] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return spec


def save_run(run_dir: Path, spec: dict, result: dict) -> None:
    """The run's settings and figures beside its outputs (written whole, then renamed)."""
    tmp = run_dir / (RUN_RESULT + ".tmp")
    tmp.write_text(json.dumps({"spec": spec, "result": result}))
    tmp.replace(run_dir / RUN_RESULT)


def saved_run(run_dir: Path, spec: dict) -> dict | None:
    """The figures saved by :func:`save_run` under the same settings, else None."""
    f = run_dir / RUN_RESULT
    if not f.exists():
        return None
    doc = json.loads(f.read_text())
    if doc.get("spec") != json.loads(json.dumps(spec)):
        return None
    log.info("reusing %s", run_dir)
    return doc["result"]


def stage2_config(*, base: str, real: list[str], synthetic: list[str], out: Path, seed: int,
                  samples: int, batch_size: int, overrides: list[str]) -> Stage2Config:
    """The shipped defaults (configs/train/lora.yaml) with the benchmark's model, data and budget."""
    steps = max(1, samples // batch_size)
    argv = ["--config", str(STAGE2_DEFAULTS),
            f"model.name={MODEL_NAME}", f"model.config_file={MODEL_JSON}", f"model.pretrained={base}",
            f"data.real={json.dumps(real)}", f"data.synthetic={json.dumps(synthetic)}",
            "lora.compile=false", "data.num_workers=0", f"train.output={out}", f"train.seed={seed}",
            f"train.batch_size={batch_size}", f"train.max_steps={steps}",
            f"train.warmup_steps={max(1, steps // 10)}", "train.mixed_precision='no'",
            "train.checkpoint_every=0", "train.resume=", f"train.log_every={max(1, steps // 20)}",
            "eval.before=false", "eval.after=false", *overrides]
    return parse_cli(Stage2Config, argv, prog="bench_learning", description="", default_config=None)


def run_stage2(cfg: Stage2Config, heldout: EvalSet) -> dict:
    """Train with training.trainer.train, merge the adapter and score it."""
    from training.export import load_trained
    from training.trainer import train

    t0 = time.time()
    result = train(cfg)
    wall = time.time() - t0
    entries = result.get("entries") or result.get("training_log") or []
    model = load_trained(cfg, str(Path(cfg.train.output) / "peft_adapter"))
    return {**score(model, heldout), "samples_per_s": entries[-1]["samples_per_s"] if entries else None,
            "wall_s": round(wall, 1), "loss_first": entries[0]["total_loss"] if entries else None,
            "loss_last": entries[-1]["total_loss"] if entries else None,
            "loss_curve": [(e["step"], e["total_loss"]) for e in entries],
            "realised_synthetic_share": result["summary"].get("realised_synthetic_share"),
            "quality_dropped": result["summary"]["counters"].get("quality_dropped", 0)}


_RUNNER = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def open_clip_available() -> str | None:
    """None when open_clip_train can run here, else why not."""
    try:
        import open_clip_train  # noqa: F401
    except ImportError:
        return "open_clip_train is not installed"
    if not (TRAIN_WDS / "webdataset").exists():
        return f"open_clip_train's webdataset (0.2.86) is not installed at {TRAIN_WDS}"
    return None


def run_open_clip(*, base: str, train_dir: str, out: Path, seed: int, samples: int, batch_size: int,
                  lr: float, heldout: EvalSet) -> dict:
    """Full fine-tune with open_clip_train on the same shards (resampled, as Stage 2 reads them)."""
    tars = sorted(Path(train_dir).glob("*.tar"))
    urls = "::".join(str(t) for t in tars)
    steps = max(1, samples // batch_size)
    argv = ["--train-data", urls, "--dataset-type", "webdataset", "--dataset-resampled",
            "--train-num-samples", str(samples), "--model", MODEL_NAME, "--pretrained", base,
            "--batch-size", str(batch_size), "--epochs", "1", "--workers", "1", "--device", "cpu",
            "--precision", "fp32", "--lr", str(lr), "--wd", "0.01", "--warmup", str(max(1, steps // 10)),
            "--seed", str(seed), "--logs", str(out), "--name", "ft", "--save-frequency", "1",
            "--report-to", "", "--log-every-n-steps", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TRAIN_WDS)}
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(MODEL_JSON.parent), *argv], capture_output=True,
                          text=True, timeout=1800, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    text = (out / "ft" / "out.log").read_text()
    batch_t = [float(x) for x in re.findall(r"Batch \(t\): ([0-9.]+)", text)]
    losses = [float(x) for x in re.findall(r"Contrastive_loss: ([0-9.]+)", text)]
    ckpt = out / "ft" / "checkpoints" / "epoch_1.pt"
    return {**score_checkpoint(str(ckpt), heldout),
            "samples_per_s": round(batch_size / statistics.median(batch_t), 2) if batch_t else None,
            "wall_s": round(wall, 1), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None,
            "loss_curve": list(enumerate(losses, start=1))}
