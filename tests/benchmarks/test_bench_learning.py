"""Smoke run of the learning benchmark (--quick): every arm runs end to end and reports figures."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # about 1 minute of CPU; several minutes of wall time on a busy 2-core machine
def test_bench_learning_quick_study(tmp_path):
    pytest.importorskip("matplotlib")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_learning", "--quick", "--study",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "learning.png").stat().st_size > 10_000
    demo = results["datasets"]["demo"]
    assert demo["heldout_images"] == 20  # 2 of 8 tiles per class, 10 classes (2 more for the base only)
    arms = demo["runs"]
    assert {"lora_default", "lr1e-3"} <= set(arms)
    for name, arm in arms.items():
        for metric in ("zeroshot", "mean_recall"):
            value = arm["figures"][metric]["mean"]
            assert 0.0 <= value <= 100.0, (name, metric, value)
        assert arm["seeds"][0]["loss_curve"], name
        assert math.isfinite(arm["seeds"][0]["loss_last"])
    assert arms["lora_default"]["seeds"][0]["samples_per_s"] > 0
    assert arms["lora_default"]["seeds"][0]["quality_dropped"] > 0  # the filter (scored by the base) is on
    if demo["full_ft_unavailable"] is None:
        assert arms["full_ft"]["seeds"][0]["loss_curve"]
    else:
        assert "full_ft" not in arms
    syn = demo["synthetic"]
    assert syn["available"] == ("lora_mix" in arms)
    if not syn["available"]:
        assert syn["reason"] and "not available" in proc.stdout
    else:  # both sets scored together by the base: the joint filter sees real and synthetic samples
        joint = syn["filter_joint"]["by_source"]
        assert joint["real"]["total"] > 0 and joint["synthetic"]["total"] > 0
        assert {"lora_mix", "lora_mix_share_0.5"} <= set(arms)
        for arm, name in (("lora_mix_joint_filter", "filter_joint"), ("lora_mix_inpaint_joint_filter",
                                                                    "filter_joint_inpaint")):
            kept = syn[name]["by_source"]["synthetic"].get("kept", 0)
            assert (arm in arms) == (kept > 0) and (kept > 0 or f"{name}_arm" in syn), (arm, kept)
    ref = demo["peft_reference"]
    assert ref["max_abs_diff"] < 1e-4 and ref["trainable_lean"] == ref["trainable_peft"]
    assert set(demo["verdict"]) == {"zeroshot", "mean_recall"}


def test_resume_trains_again_a_run_whose_defaults_changed(tmp_path, monkeypatch):
    from benchmarks.learning import runs

    def spec(overrides):
        cfg = runs.stage2_config(base="base.pt", real=["train"], synthetic=[], out=tmp_path / "run", seed=0,
                                 samples=64, batch_size=32, overrides=overrides)
        return runs.run_spec(kind="stage2", real=["train"], synthetic=[], overrides=overrides, seed=0, samples=64,
                             batch_size=32, base="digest", config=cfg)

    (tmp_path / "run").mkdir()
    runs.save_run(tmp_path / "run", spec([]), {"mean_recall": 1.0})
    assert runs.saved_run(tmp_path / "run", spec([])) == {"mean_recall": 1.0}
    changed = tmp_path / "lora.yaml"  # the shipped defaults with one default changed
    text = runs.STAGE2_DEFAULTS.read_text()
    assert "random_caption: true" in text
    changed.write_text(text.replace("random_caption: true", "random_caption: false"))
    monkeypatch.setattr(runs, "STAGE2_DEFAULTS", changed)
    assert runs.saved_run(tmp_path / "run", spec([])) is None  # same overrides, other defaults: trained again
    # an arm that sets the changed value itself resolves to the same config under either file
    under_changed = spec(["data.random_caption=true"])["config"]
    monkeypatch.setattr(runs, "STAGE2_DEFAULTS", runs.REPO / "configs" / "train" / "lora.yaml")
    assert under_changed == spec(["data.random_caption=true"])["config"] == spec([])["config"]


def test_filter_selection_is_chosen_again_when_the_filter_defaults_change(tmp_path, monkeypatch):
    from benchmarks.learning import filtering

    calls = []
    monkeypatch.setattr(filtering, "run_filter", lambda train_dir, **kw: calls.append(train_dir) or {"kept": 1})
    defaults = tmp_path / "default.yaml"
    defaults.write_text("selection:\n  per_class: false\n")
    monkeypatch.setattr(filtering, "FILTER_DEFAULTS", defaults)
    base = tmp_path / "base.pt"
    base.write_bytes(b"weights")
    report = tmp_path / "report"
    report.mkdir()

    def select():
        return filtering.cached_filter("train", base=str(base), report_dir=report, reuse=True)

    assert select() == select() == {"kept": 1} and len(calls) == 1  # the second reads the first back
    defaults.write_text("selection:\n  per_class: true\n")  # another cut: the saved selection is stale
    select()
    assert len(calls) == 2
