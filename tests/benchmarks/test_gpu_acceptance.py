"""benchmarks/gpu/acceptance.py --smoke: every GPU check runs on the CPU with tiny models and records
its targets and figures in one results.json; a check that cannot finish is recorded and the next runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import acceptance
from benchmarks.gpu.acceptance_checks import CHECKS, LEVEL_TOLERANCE, WHAT

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("acceptance")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "acceptance.py"), "--smoke",
                           "--out", str(out), "--scratch", str(out)], env=ENV, capture_output=True, text=True,
                          timeout=1500)
    return proc, out, json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else None


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the fixture runs the whole smoke: about 90 CPU seconds, longer on a busy machine
def test_smoke_runs_every_check_and_records_targets_and_figures(smoke):
    proc, out, doc = smoke
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert doc["smoke"] is True and list(doc["checks"]) == list(CHECKS)
    for name, r in doc["checks"].items():
        assert not r.get("error"), (name, r["error"])
        assert r["figures"] and r["headline"] and r["targets"], name
        assert r["pass"] in (True, False, None)
        for t in r["targets"]:
            assert set(t) == {"name", "target", "value", "pass"} and t["pass"] in (True, False, None), (name, t)
    md = (out / "results.md").read_text()
    assert all(WHAT[name] in md for name in CHECKS)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_figures_are_what_each_check_measured(smoke):
    _, _, doc = smoke
    c = doc["checks"]
    pool = c["pool"]["figures"]  # two pretend GPUs: one worker pinned to each, both used
    assert pool["done"] == pool["tasks"] and not pool["errors"]
    assert sorted(p for w in pool["workers"] for p in w["pins"]) == ["0", "1"]
    assert len({w["pid"] for w in pool["workers"]}) == 2
    inp = c["inpaint"]["figures"]  # the replayed call reproduces the stage's pixels under one of the decodes
    assert inp["pipeline_calls"] == 1 and inp["pixels_compared"] > 0
    assert min(inp["mean_abs_to_shifted_decode"], inp["mean_abs_to_unshifted_decode"]) <= LEVEL_TOLERANCE
    assert inp["shift_effect_mean_abs"] > LEVEL_TOLERANCE
    train = c["train"]["figures"]["variants"]
    assert train["lora_eager"]["trainable"] < train["full_ft"]["trainable"]
    assert all(v["samples_per_s"] > 0 for v in train.values())
    q = c["quality"]["figures"]
    assert q["ratio"] == pytest.approx(q["filter_images_per_s"] / q["bare_encode_image_per_s"])
    loader = c["loader"]["figures"]  # the trainer's figure came from the train check
    assert loader["samples_per_s"] > 0
    assert loader["trainer_samples_per_s"] == pytest.approx(train["lora_eager"]["samples_per_s"])
    syn = c["synthetic"]["figures"]
    assert set(syn["stages"]) == {"upscale", "describe", "ground", "segment", "generate"}
    assert all(s["s_per_image"] > 0 for s in syn["stages"].values()) and syn["resident"]["s_per_image_all_stages"] > 0


def test_a_check_that_cannot_finish_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(acceptance, "SMOKE_CAP", 0.5)  # no interpreter starts in half a second
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    code = acceptance.main(["--smoke", "--out", str(tmp_path), "--checks", "pool,loader"])
    doc = json.loads((tmp_path / "results.json").read_text())
    assert code == 2 and list(doc["checks"]) == ["pool", "loader"]
    for r in doc["checks"].values():
        assert r["pass"] is False and "ran past its" in r["error"]
    assert "did not finish" in (tmp_path / "results.md").read_text()


def test_unknown_check_names_the_value():
    with pytest.raises(SystemExit, match="unknown \\['gpu'\\]"):
        acceptance.main(["--smoke", "--checks", "pool,gpu"])
