"""Shards written by this project train unchanged in open_clip's own trainer (open_clip_train)."""

import json
import os
import subprocess
import sys

# open_clip_torch 3.3.0 declares webdataset<=0.2.86 for its trainer, whose sample grouping does not
# accept webdataset 1.x's end-of-shard markers. `make test` installs that webdataset beside the
# venv (not into it), so the trainer runs exactly as open_clip ships it.
from pathlib import Path

import pytest

TRAIN_WDS = Path(sys.prefix) / "openclip-train-wds"

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}

_RUNNER = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""


def test_open_clip_trainer_runs_an_epoch(shard_dir, tmp_path):
    pytest.importorskip("open_clip_train")
    if not (TRAIN_WDS / "webdataset").exists():
        pytest.skip(f"open_clip_train's webdataset is not installed at {TRAIN_WDS} (make test installs it)")
    cfg_dir = tmp_path / "model_configs"
    cfg_dir.mkdir()
    (cfg_dir / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    argv = ["--train-data", f"{shard_dir}/real-train-{{000000..000002}}.tar", "--dataset-type", "webdataset",
            "--model", "tiny-clip", "--batch-size", "2", "--epochs", "1", "--workers", "1", "--device", "cpu",
            "--precision", "fp32", "--warmup", "1", "--logs", str(tmp_path / "logs"), "--name", "compat",
            "--save-frequency", "1", "--report-to", ""]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(TRAIN_WDS)}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(cfg_dir), *argv], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "logs" / "compat" / "checkpoints" / "epoch_1.pt").exists()
    log = (tmp_path / "logs" / "compat" / "out.log").read_text()
    assert "Train Epoch: 0 [10/10" in log  # all 10 samples, counted from our sizes.json
