"""End-to-end real-set builds on tiny demo trees: layout, counts, captions, resume, CLI."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from builders.real.augment import rewrite_positions
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from wds_tools.config import ConfigError, load_config
from wds_tools.reader import decode_sample, iter_shard

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "build" / "real.yaml"
FAST = ["size=32", "images_per_shard=3", "workers=1", "m2b.analysis_size=32"]


def _cfg(inp, out, *extra):
    return load_config(RealBuildConfig, CONFIG, [f"input={inp}", f"output={out}", *FAST, *extra])


def _read(split_dir: Path) -> dict[str, list[dict]]:
    """shard name -> decoded samples, in shard order."""
    out = {}
    for tar in sorted(split_dir.glob("real-*.tar")):
        out[tar.name] = [decode_sample(s) for s in iter_shard(str(tar))]
    return out


def _sha(split_dir: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["sha256"] for p in sorted(split_dir.glob("*.stats.json"))}


def test_build_layout_counts_and_captions(caption_jsonl, tmp_path):
    out = tmp_path / "out"
    summary = build_real(_cfg(caption_jsonl, out), progress=False)
    train, val = _read(out / "train"), _read(out / "val")
    assert list(train) == ["real-train-000000.tar", "real-train-000001.tar"]
    assert list(val) == ["real-val-000000.tar", "real-val-000001.tar"]
    tr = [s for ss in train.values() for s in ss]
    va = [s for ss in val.values() for s in ss]
    # Held-out images: originals only, never in train shards.
    assert {s["json"]["kind"] for s in va} == {"original"} and len(va) == 5
    assert all(s["json"]["split"] == "val" for s in va)
    val_keys = {s["__key__"] for s in va}
    assert not val_keys & {s["__key__"] for s in tr}
    assert not val_keys & {s["json"]["parent"] for s in tr}
    kinds = [s["json"]["kind"] for s in tr]
    assert kinds.count("original") == 5 and kinds.count("augmented") == 25
    for s in tr + va:
        m = s["json"]
        assert s["txt"] == m["captions"][0] and len(m["captions"]) == len(m["caption_sources"])
        assert s["jpg"].size == (32, 32) and m["source"] == "real"
        if m["kind"] == "original":
            assert m["caption_sources"] == ["original", "original", "m2b_b2c"]
            assert any(b["source"] == "m2b" for b in m["boxes"])
    aug = next(s for s in tr if s["json"]["kind"] == "augmented")
    p = aug["json"]["aug"]
    cls = aug["json"]["class"]
    assert aug["txt"] == rewrite_positions(f"{cls} tile with the darkest part on the left",
                                           flip=p["flip"], rot90=p["rot90"])
    assert aug["json"]["parent"] == aug["__key__"].rsplit("_aug_", 1)[0]
    zooms = [s for s in tr if s["json"]["kind"] == "zoom_crop"]
    for z in zooms:
        assert z["json"]["caption_sources"] == ["zoom"] and z["txt"].startswith("A close-up aerial view of")
    index = json.loads((out / "train" / "dataset.json").read_text())
    assert (index["real_original"], index["real_augmented"], index["zoom_crops"]) == (5, 25, len(zooms))
    assert index["total_samples"] == len(tr) and index["stats"]["by_class"]["water"] == sum(
        s["json"]["class"] == "water" for s in tr)
    assert index["stats"]["by_caption_source"]["m2b_b2c"] == 30
    assert json.loads((out / "val" / "sizes.json").read_text()) == {k: len(v) for k, v in val.items()}
    assert summary["splits"]["train"]["samples"] == len(tr) and summary["skipped"] == {}
    with Image.open(out / "preview.png") as png:  # 6 columns of 160 px, 3 rows of samples
        assert png.format == "PNG" and png.size[0] == 6 * 160 and png.size[1] > 3 * 160


def test_resume_skips_finished_shards_and_overwrite_rebuilds(demo_tree, tmp_path):
    out = tmp_path / "out"
    build_real(_cfg(demo_tree, out), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}
    sha = _sha(out / "train")
    again = build_real(_cfg(demo_tree, out), progress=False)
    assert again["resumed_shards"] == len(before) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")} == before
    rebuilt = build_real(_cfg(demo_tree, out, "overwrite=true"), progress=False)
    assert rebuilt["resumed_shards"] == 0
    assert _sha(out / "train") == sha  # deterministic: byte-identical shards
    with pytest.raises(ConfigError, match="seed"):
        build_real(_cfg(demo_tree, out, "seed=5"), progress=False)
    Image.new("RGB", (40, 40), (30, 60, 140)).save(demo_tree / "beach" / "added.png")
    with pytest.raises(ConfigError, match="input of .* changed"):
        build_real(_cfg(demo_tree, out), progress=False)
    assert build_real(_cfg(demo_tree, out, "overwrite=true"), progress=False)["source_images"] == 11


def test_unreadable_images_are_counted_skips(demo_tree, tmp_path):
    (demo_tree / "water" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("RGB", (40, 30), (30, 60, 140)).save(demo_tree / "water" / "wide.png")
    out = tmp_path / "out"
    summary = build_real(_cfg(demo_tree, out), progress=False)
    assert summary["skipped"] == {"decode_error": 1}
    index = json.loads((out / "train" / "dataset.json").read_text())
    assert index["skipped"] == {"decode_error": 1} and index["real_original"] == 11
    keys = {s["__key__"] for ss in _read(out / "train").values() for s in ss}
    assert "water_wide" in keys and "water_broken" not in keys


def test_process_pool_writes_the_same_shards(demo_tree, tmp_path):
    build_real(_cfg(demo_tree, tmp_path / "one"), progress=False)
    build_real(_cfg(demo_tree, tmp_path / "two", "workers=2"), progress=False)
    assert _sha(tmp_path / "one" / "train") == _sha(tmp_path / "two" / "train")


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "builders.real", "--config", str(CONFIG), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_flags_and_config_errors(demo_tree, tmp_path):
    p = _cli("--input", str(demo_tree), "--output", str(tmp_path / "o"), "--overwrite", *FAST)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "10 images = 10 original + 50 augmented" in stdout and "skipped nothing" in stdout
    p = _cli("--input", str(demo_tree), "--output", str(tmp_path / "o"), "augment.per_imag=3")
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2 and "per_imag" in stderr and "per_image" in stderr


def test_kill_9_midway_then_rerun_equals_uninterrupted(tmp_path):
    from builders.demo_images import make_demo_tree

    src = make_demo_tree(tmp_path / "src", per_class=6, size=48, seed=2)
    args = ["--input", str(src), "size=48", "images_per_shard=2", "workers=1", "m2b.analysis_size=48"]
    ref = _cli(*args, "--output", str(tmp_path / "ref"))
    assert ref.wait(timeout=300) == 0
    victim = _cli(*args, "--output", str(tmp_path / "cut"))
    train = tmp_path / "cut" / "train"
    deadline = time.time() + 120
    while len(list(train.glob("*.stats.json"))) < 3 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    done_at_kill = len(list(train.glob("*.stats.json")))
    assert 3 <= done_at_kill < 15, "the build must be cut midway"
    rerun = _cli(*args, "--output", str(tmp_path / "cut"))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert f"{done_at_kill} shards kept" in stdout or f"{done_at_kill + 1} shards kept" in stdout
    ref_shards, cut_shards = _read(tmp_path / "ref" / "train"), _read(train)
    assert list(ref_shards) == list(cut_shards) and len(ref_shards) == 15
    for name in ref_shards:
        assert [s["__key__"] for s in ref_shards[name]] == [s["__key__"] for s in cut_shards[name]]
    assert _sha(tmp_path / "ref" / "train") == _sha(train)
    assert not list(train.glob("*.tmp-*"))


def test_ucm_sample_caption_list_builds(tmp_path):
    from tests.builders.conftest import UCM

    if not (UCM / "captions.json").exists():
        pytest.skip("ucm_sample not present")
    records = json.loads((UCM / "captions.json").read_text())[::16]  # one per class
    sub = tmp_path / "ucm10.json"
    sub.write_text(json.dumps(records))
    out = tmp_path / "out"
    build_real(_cfg(sub, out, f"image_root={UCM}", "augment.per_image=1"), progress=False)
    samples = [s for ss in _read(out / "train").values() for s in ss]
    originals = {s["json"]["class"]: s for s in samples if s["json"]["kind"] == "original"}
    assert len(originals) == 10
    for r in records:
        m = originals[r["class"]]["json"]
        assert m["captions"][: len(r["captions"])] == r["captions"]
        assert m["caption_sources"][-1] == "m2b_b2c"


def test_class_sorted_input_gives_class_mixed_shards_with_spread_augmentations(tmp_path):
    from builders.demo_images import make_demo_tree

    src = make_demo_tree(tmp_path / "src", per_class=4, size=32, seed=3)  # 5 class folders, sorted
    fast = ["size=32", "images_per_shard=4", "workers=1", "m2b.analysis_size=32", "preview=false"]
    build_real(load_config(RealBuildConfig, CONFIG, [f"input={src}", f"output={tmp_path / 'old'}", *fast,
                                                      "shard_order=sorted", "augment.spread_shards=1"]),
               progress=False)
    summary = build_real(load_config(RealBuildConfig, CONFIG, [f"input={src}", f"output={tmp_path / 'new'}",
                                                               *fast]), progress=False)
    old, new = _read(tmp_path / "old" / "train"), _read(tmp_path / "new" / "train")
    old_index = json.loads((tmp_path / "old" / "train" / "dataset.json").read_text())
    new_index = json.loads((tmp_path / "new" / "train" / "dataset.json").read_text())
    assert old_index["classes_per_shard"] == {"min": 1, "median": 1, "max": 1}
    assert new_index["classes_per_shard"]["min"] >= 3, new_index["classes_per_shard"]
    assert summary["splits"]["train"]["classes_per_shard"] == new_index["classes_per_shard"]
    for entry in new_index["shards"]:
        assert entry["classes"] == len(entry["by_class"]) and sum(entry["by_class"].values()) == entry["samples"]
    # The same samples, byte for byte, only placed differently.
    by_key = lambda shards: {s["__key__"]: s["jpg"].tobytes() for ss in shards.values() for s in ss}
    assert by_key(old) == by_key(new)
    shards_of: dict[str, set] = {}
    for name, samples in new.items():
        for s in samples:
            shards_of.setdefault(s["json"]["parent"] or s["__key__"], set()).add(name)
    assert len(shards_of) == 20 and all(len(v) == 3 for v in shards_of.values()), shards_of
    assert summary["source_images"] == 20 and summary["splits"]["train"]["real_augmented"] == 100
