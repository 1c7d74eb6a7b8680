"""The learning benchmark's rsicd_dev data set: its splits (on a tiny Karpathy file, always) and
a tiny end-to-end run on the real folder (skipped where it is absent)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.learning.datasets import RSICD_DIR, RSICD_JSON, rsicd_records

REPO = Path(__file__).resolve().parents[2]
# RSICD_DEV points elsewhere (e.g. from a checkout that is not beside ../shared)
RSICD = Path(os.environ.get("RSICD_DEV", RSICD_DIR))


def _karpathy(root: Path, classes=("airport", "bareland", "beach", "storagetanks"), train=4, val=3) -> Path:
    images = []
    for cls in classes:
        for split, n in (("train", train), ("val", val)):
            for i in range(n):
                images.append({"filename": f"{cls}/{cls}_{split}_{i}.jpg", "split": split, "class": cls,
                               "sentences": [{"raw": f"{cls} {split} {i} caption {k} ."} for k in range(5)]})
    root.mkdir(parents=True, exist_ok=True)
    (root / RSICD_JSON).write_text(json.dumps({"dataset": "rsicd", "images": images}))
    return root


def test_rsicd_records_base_on_every_other_class(tmp_path):
    recs = rsicd_records(_karpathy(tmp_path))
    counts = Counter((r["split"], r["class"]) for r in recs)
    # readable class names for the zero-shot prompts; val is the held-out split
    assert set(c for _, c in counts) == {"airport", "bare_land", "beach", "storage_tanks"}
    assert {c: n for (s, c), n in counts.items() if s == "test"} == dict.fromkeys(
        ["airport", "bare_land", "beach", "storage_tanks"], 3)
    assert {c: n for (s, c), n in counts.items() if s == "train"} == dict.fromkeys(
        ["airport", "bare_land", "beach", "storage_tanks"], 4)
    # the base: every train image of classes 0 and 2 (sorted), none of the others, none of val
    assert {c: n for (s, c), n in counts.items() if s == "base"} == {"airport": 4, "beach": 4}
    base = {r["image"] for r in recs if r["split"] == "base"}
    assert base <= {r["image"] for r in recs if r["split"] == "train"}
    assert all(len(r["captions"]) == 5 and Path(r["image"]).is_absolute() for r in recs)


def test_rsicd_records_base_on_half_of_each_class_and_limits(tmp_path):
    root = _karpathy(tmp_path)
    recs = rsicd_records(root, base="images")
    assert Counter(r["class"] for r in recs if r["split"] == "base") == dict.fromkeys(
        ["airport", "bare_land", "beach", "storage_tanks"], 2)
    small = rsicd_records(root, train_per_class=2, val_per_class=1)
    assert Counter(r["split"] for r in small) == {"train": 8, "test": 4, "base": 4}
    with pytest.raises(ValueError, match="base must be"):
        rsicd_records(root, base="half")


def test_rsicd_records_refuse_an_unknown_split(tmp_path):
    root = _karpathy(tmp_path)
    doc = json.loads((root / RSICD_JSON).read_text())
    doc["images"][0]["split"] = "test"
    (root / RSICD_JSON).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="split 'test'"):
        rsicd_records(root)


@pytest.mark.slow  # about a minute of CPU: a 180-image build, a 3-step base and three 2-step runs
@pytest.mark.skipif(not (RSICD / RSICD_JSON).exists(), reason=f"rsicd_dev is absent ({RSICD})")
def test_bench_learning_rsicd_quick(tmp_path):
    pytest.importorskip("matplotlib")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_learning", "--quick", "--datasets", "rsicd",
                           "--rsicd", str(RSICD), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads((tmp_path / "results.json").read_text())["datasets"]["rsicd"]
    # 2 val images of each of 30 classes, scored on their 5 human captions each, zero-shot over 30
    assert d["heldout_images"] == 60 and d["base"]["num_captions"] == 300 and d["base"]["zeroshot_classes"] == 30
    base_records = json.loads((tmp_path / "rsicd" / "base_set" / "captions.json").read_text())
    assert len({r["class"] for r in base_records}) == 15 and len(base_records) == 60
    assert d["synthetic"]["available"] is False and "rsicd" in d["synthetic"]["reason"]
    arms = d["runs"]
    assert {"lora_default", "plain"} <= set(arms)
    assert arms["lora_default"]["seeds"][0]["quality_dropped"] > 0  # the filter acts on the defaults
    assert arms["plain"]["seeds"][0]["quality_dropped"] == 0
    if d["full_ft_unavailable"] is None:
        assert arms["full_ft"]["seeds"][0]["loss_curve"]
    for name, arm in arms.items():
        assert 0.0 <= arm["figures"]["mean_recall"]["mean"] <= 100.0, name
        assert arm["seeds"][0]["num_captions"] == 300, name
    # --resume reads every run back instead of training it again
    again = subprocess.run([sys.executable, "-m", "benchmarks.bench_learning", "--quick", "--datasets", "rsicd",
                            "--rsicd", str(RSICD), "--out", str(tmp_path), "--resume"],
                           capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reusing") >= len(arms) + 2, again.stderr[-3000:]  # the base, the filter, every run
    d2 = json.loads((tmp_path / "results.json").read_text())["datasets"]["rsicd"]
    assert {k: v["figures"] for k, v in d2["runs"].items()} == {k: v["figures"] for k, v in arms.items()}
