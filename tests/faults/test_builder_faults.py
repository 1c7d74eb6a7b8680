"""The real-set builder under hostile input, concurrent runs, damaged outputs and kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders.common.output import LOCK_NAME, NothingWritten
from builders.demo_images import make_demo_tree
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.builders.conftest import caption_jsonl, demo_tree  # noqa: F401 - the builders' own fixtures
from tests.faults.conftest import processes_left
from wds_tools.config import load_config
from wds_tools.lock import LockHeld
from wds_tools.writer import shard_problem

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "build" / "real.yaml"
FAST = ["size=32", "images_per_shard=3", "workers=1", "m2b.analysis_size=32", "preview=false"]


def _cfg(inp, out, *extra) -> RealBuildConfig:
    return load_config(RealBuildConfig, CONFIG, [f"input={inp}", f"output={out}", *FAST, *extra])


def _cli(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "builders.real", "--config", str(CONFIG), *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _sha(split_dir: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["sha256"] for p in sorted(split_dir.glob("*.stats.json"))}


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding ``path`` (a builder of another recipe, as far as the lock can tell)."""
    code = ("import sys, time; from wds_tools.lock import OutputLock; "
            f"OutputLock({str(path)!r}, tool='builders.real').acquire(); print('held', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_builder_fails_fast_naming_the_holder(demo_tree, tmp_path):
    out = tmp_path / "out"
    holder = _hold_lock(out / LOCK_NAME)
    try:
        for extra in ([], ["seed=7"]):  # same recipe and another one: both refused before any work
            with pytest.raises(LockHeld, match=rf"in use by builders.real pid {holder.pid} on "):
                build_real(_cfg(demo_tree, out, *extra), progress=False)
        assert not (out / "train").exists() and not (out / "build_config.yaml").exists()
        t = time.monotonic()
        p = _cli("--input", str(demo_tree), "--output", str(out), *FAST)
        _, stderr = p.communicate(timeout=120)
        assert p.returncode == 2, stderr
        assert "Traceback" not in stderr and f"pid {holder.pid}" in stderr and LOCK_NAME in stderr
        assert time.monotonic() - t < 60
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale (dead pid on this host) and is taken over
    summary = build_real(_cfg(demo_tree, out), progress=False)
    assert summary["splits"]["train"]["source_images"] == 10
    assert not (out / LOCK_NAME).exists()
    for tar in (out / "train").glob("*.tar"):
        assert shard_problem(tar, verify=True) is None


def test_two_builders_with_different_recipes_never_mix(demo_tree, tmp_path):
    out = tmp_path / "out"
    a = _cli("--input", str(demo_tree), "--output", str(out), *FAST)
    b = _cli("--input", str(demo_tree), "--output", str(out), *FAST, "seed=7", "augment.per_image=2")
    (_, err_a), (_, err_b) = a.communicate(timeout=300), b.communicate(timeout=300)
    # the loser is refused by the lock, or (when it starts after the winner ended) by the recipe check
    assert sorted([a.returncode, b.returncode]) == [0, 2], (err_a, err_b)
    loser = err_b if b.returncode else err_a
    assert "Traceback" not in loser and ("is in use by builders.real pid" in loser or "different settings" in loser)
    seed = 0 if a.returncode == 0 else 7
    assert load_config(RealBuildConfig, out / "build_config.yaml").seed == seed
    per_image = 5 if seed == 0 else 2
    index = json.loads((out / "train" / "dataset.json").read_text())
    assert index["real_augmented"] == per_image * index["real_original"]
    for tar in (out / "train").glob("*.tar"):
        assert shard_problem(tar, verify=True) is None


def test_lone_surrogate_caption_is_a_counted_skip_and_the_rerun_runs(caption_jsonl, tmp_path, caplog):
    lines = caption_jsonl.read_text().splitlines()
    rec = json.loads(lines[0])
    lines[0] = lines[0].replace(json.dumps(rec["captions"][0]), '"broken \\ud800 caption"')
    caption_jsonl.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    summary = build_real(_cfg(caption_jsonl, out), progress=False)
    assert summary["skipped"] == {"invalid_caption": 1}
    key = Path(rec["image"]).parent.name + "_" + Path(rec["image"]).stem
    assert any("invalid_caption" in r.message and key in r.message and rec["image"] in r.message
               for r in caplog.records)
    again = build_real(_cfg(caption_jsonl, out), progress=False)
    assert again["skipped"] == {"invalid_caption": 1} and again["resumed_shards"] == 4


def test_build_where_every_input_fails_exits_non_zero_with_the_cause(caption_jsonl, tmp_path):
    moved = tmp_path / "elsewhere" / "captions.jsonl"
    moved.parent.mkdir()
    caption_jsonl.rename(moved)  # relative paths now resolve against the wrong folder
    out = tmp_path / "out"
    with pytest.raises(NothingWritten) as e:
        build_real(_cfg(moved, out), progress=False)
    msg = str(e.value)
    assert "missing_file: 10" in msg and str(moved.parent) in msg and "image_root" in msg
    assert str(moved.parent / "beach" / "beach_000.png") in msg
    # empty shards would count as finished on the next run: none is left
    assert not list(out.rglob("*.tar")) and not (out / "build_config.yaml").exists()
    summary = build_real(_cfg(moved, out, f"image_root={caption_jsonl.parent}"), progress=False)
    assert summary["source_images"] == 10 and summary["skipped"] == {}


def test_damaged_finished_shard_is_rebuilt(demo_tree, tmp_path):
    out = tmp_path / "out"
    build_real(_cfg(demo_tree, out), progress=False)
    sha = _sha(out / "train")
    cut, edited = sorted((out / "train").glob("*.tar"))[:2]
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    data = bytearray(edited.read_bytes())
    data[1000] ^= 0xFF  # same size: only the sha256 can tell
    edited.write_bytes(bytes(data))
    again = build_real(_cfg(demo_tree, out), progress=False)
    assert again["rebuilt_shards"] == 1 and again["resumed_shards"] == 3
    assert shard_problem(cut, verify=True) is None and shard_problem(edited, verify=True) is not None
    verified = build_real(_cfg(demo_tree, out, "verify=true"), progress=False)
    assert verified["rebuilt_shards"] == 1
    assert _sha(out / "train") == sha and all(shard_problem(p, verify=True) is None
                                              for p in (out / "train").glob("*.tar"))


def test_user_errors_are_one_line_messages(demo_tree, tmp_path):
    latin = tmp_path / "captions.csv"
    latin.write_bytes("image,caption\nwater/water_000.png,caf\xe9 by the lake\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{latin} is not UTF-8 text \(byte b'\\xe9' at offset 37, line 2\)"):
        build_real(_cfg(latin, tmp_path / "o1", f"image_root={demo_tree}"), progress=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        with pytest.raises(ValueError, match=f"{afile} is .* but it is a file"):
            build_real(_cfg(demo_tree, out), progress=False)
    (demo_tree / "water" / "water_000.png").rename(demo_tree / "water" / "a.b.png")
    (demo_tree / "water" / "water_001.png").rename(demo_tree / "water" / "a-b.png")
    p = _cli("--input", str(demo_tree), "--output", str(tmp_path / "o2"), *FAST)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2 and "Traceback" not in stderr
    assert "'water/a-b.png' and 'water/a.b.png' both map to key 'water_a-b'" in stderr


@pytest.mark.parametrize("size", ["0", "8", "-3", "100000"])
def test_demo_images_bad_sizes(tmp_path, size):
    p = subprocess.run([sys.executable, "-m", "builders.demo_images", "--output", str(tmp_path / "d"),
                        "--size", size], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"tile size must be in 16..4096 px, got {size}" in p.stderr


def test_kill_9_with_workers_leaves_no_process_and_rerun_equals_uninterrupted(tmp_path):
    src = make_demo_tree(tmp_path / "src", per_class=6, size=48, seed=2)
    args = ["size=48", "images_per_shard=2", "m2b.analysis_size=48", "preview=false"]
    ref = tmp_path / "ref"
    load = lambda out, *extra: load_config(RealBuildConfig, CONFIG, [f"input={src}", f"output={out}", *args, *extra])
    build_real(load(ref, "workers=1"), progress=False)
    cut = tmp_path / "cut"
    victim = _cli("--input", str(src), "--output", str(cut), "workers=2", *args, start_new_session=True)
    train = cut / "train"
    deadline = time.monotonic() + 120
    while len(list(train.glob("*.stats.json"))) < 2:
        assert victim.poll() is None and time.monotonic() < deadline, "the build must be cut midway"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert processes_left(victim.pid) == [], "pool workers and the fork server must not outlive the builder"
    # nothing partial under a final name: a tar is whole, or it is a temp file
    finished = [t for t in train.glob("*.tar") if (train / t.name.replace(".tar", ".stats.json")).exists()]
    assert 2 <= len(finished) < 15 and all(shard_problem(t, verify=True) is None for t in finished)
    assert (cut / LOCK_NAME).exists()  # left by the killed builder: stale, taken over by the rerun
    rerun = _cli("--input", str(src), "--output", str(cut), "workers=2", *args)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr
    assert _sha(train) == _sha(ref / "train") and len(_sha(train)) == 15
    assert not list(train.glob("*.tmp-*")) and not (cut / LOCK_NAME).exists()
    assert json.loads((train / "dataset.json").read_text())["shards"] == \
        json.loads((ref / "train" / "dataset.json").read_text())["shards"]


# The builder (one worker, in-process) SIGKILLs itself just before the k-th rename onto a final
# name ending in ``suffix``: that file's temp is complete and left behind.
_KILL_AT = """
import os, signal, sys
suffix, k, n = sys.argv[1], int(sys.argv[2]), [0]
real = os.replace
def replace(src, dst, *a, **kw):
    if str(dst).endswith(suffix):
        n[0] += 1
        if n[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **kw)
os.replace = replace
from builders.real.__main__ import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("suffix,k", [(".tar", 3), ("dataset.json", 1)], ids=["mid-shard", "indexing"])
def test_kill_9_at_a_rename_then_rerun_equals_uninterrupted(demo_tree, tmp_path, suffix, k):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    build_real(_cfg(demo_tree, ref), progress=False)
    args = ["--config", str(CONFIG), "--input", str(demo_tree), "--output", str(cut), *FAST]
    p = subprocess.run([sys.executable, "-c", _KILL_AT, suffix, str(k), *args], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr
    train = cut / "train"
    finished = sorted(train.glob("*.stats.json"))
    assert len(finished) == (k - 1 if suffix == ".tar" else 4)
    assert len(list(cut.rglob("*.tmp-*"))) == 1  # the file being renamed
    assert not (train / "dataset.json").exists()
    for tar in train.glob("*.tar"):  # every tar under its final name is whole
        assert shard_problem(tar, verify=True) is None
    summary = build_real(_cfg(demo_tree, cut), progress=False)
    assert summary["resumed_shards"] == len(finished) and summary["rebuilt_shards"] == 0
    assert _sha(train) == _sha(ref / "train") and not list(cut.rglob("*.tmp-*"))
    got, want = (json.loads((d / "train" / "dataset.json").read_text()) for d in (cut, ref))
    for key in ("shards", "total_samples", "stats", "real_original", "real_augmented", "zoom_crops", "skipped"):
        assert got[key] == want[key], key
