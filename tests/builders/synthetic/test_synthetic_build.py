"""The synthetic builder end to end on real tiny shards (builders.real over the demo tiles) with
tiny random-weight models of all five stages: contract, determinism, resume, skips, refusals."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders.synthetic import unit as unit_mod
from builders.synthetic.build import build_synthetic, format_summary
from builders.synthetic.sources import SplitRefused
from tests.builders.synthetic.build_fixtures import REPO, TINY, model_overrides, real_shards, shard_hashes, syn_cfg  # noqa: F401
from wds_tools.config import ConfigError
from wds_tools.reader import decode_sample, iter_shard
from wds_tools.shard_identity import shard_identity
from wds_tools.sidecar import shard_keys, write_sidecar


def _samples(out: Path) -> list[dict]:
    return [decode_sample(s) for tar in sorted((out / "train").glob("synthetic-train-*.tar"))
            for s in iter_shard(str(tar))]


def _real_train(real: Path) -> dict[str, dict]:
    return {s["__key__"]: s for tar in sorted((real / "train").glob("*.tar"))
            for s in map(decode_sample, iter_shard(str(tar)))}


@pytest.fixture(scope="module")
def built(real_shards, model_overrides, tmp_path_factory):  # noqa: F811
    """One build of the synthetic set from the real train shards, shared by the checks below."""
    from builders.synthetic.config import SyntheticBuildConfig
    from tests.builders.synthetic.build_fixtures import FAST
    from wds_tools.config import load_config

    out = tmp_path_factory.mktemp("syn") / "out"
    cfg = load_config(SyntheticBuildConfig, TINY, [f"input={real_shards / 'train'}", f"output={out}",
                                                   *FAST, *model_overrides, "preview=true"])
    summary = build_synthetic(cfg, progress=False)
    return cfg, out, summary


def test_layout_contract_and_index(built, real_shards):  # noqa: F811
    cfg, out, summary = built
    real = _real_train(real_shards)
    originals = {k for k, s in real.items() if s["json"]["kind"] == "original"}
    n_real_shards = len(list((real_shards / "train").glob("real-train-*.tar")))
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [
        f"synthetic-train-{i:06d}.tar" for i in range(n_real_shards)]
    for name in ("dataset.json", "sizes.json"):
        assert (out / "train" / name).exists()
    for name in ("build_config.yaml", "build_plan.json", "build_summary.json", "preview.png"):
        assert (out / name).exists()
    manifest = json.loads((out / "train" / "dataset.json").read_text())
    samples = _samples(out)
    assert manifest["total_samples"] == len(samples) > 0
    syn = manifest["stats"]["synthetic"]
    assert sum(syn["by_mode"].values()) == len(samples) and syn["source_images"] == len(originals)
    assert manifest["stats"]["by_source"] == {"synthetic": len(samples)}
    for s in samples:
        m = s["json"]
        assert m["source"] == "synthetic" and m["split"] == "train"
        assert m["parent"] in originals                       # originals only, train only
        assert m["class"] == real[m["parent"]]["json"]["class"]
        assert m["mode"] in syn["by_mode"] and m["kind"] == m["mode"]
        for field in ("prompt", "negative_prompt", "seed", "strength", "steps", "guidance", "boxes"):
            assert field in m, field
        assert set(m["models"]) == {"upscale", "describe", "ground", "segment", "generate"}
        assert s["txt"] == m["captions"][0] and len(m["captions"]) == len(m["caption_sources"])
        assert s["jpg"].size == (32, 32)
        if m["mode"].startswith("inpaint"):
            assert s["mask.png"].size == (32, 32) and m["verify"]["expect"] in ("present", "absent")
            assert m["verify"]["model"] == cfg.ground.model
        else:
            assert "mask.png" not in s and m["verify"] is None
        assert all(b["source"] == "grounding_dino" and 0 <= min(b["box"]) <= max(b["box"]) <= 1
                   for b in m["boxes"])
    # skips are counted with their stage, and the summary adds up the shards' skip files
    per_shard = {}
    for p in (out / "train").glob("*.skips.json"):
        for k, v in json.loads(p.read_text()).items():
            per_shard[k] = per_shard.get(k, 0) + v
    assert summary["skipped"] == dict(sorted(per_shard.items()))
    assert all(":" in k for k in summary["skipped"])


def _check_fallbacks(summary: dict, out: Path) -> dict:
    """The summary's per-mode fallback counts agree with the samples and the last log lines."""
    from builders.synthetic.build import format_summary

    fallbacks = summary["synthetic"]["inpaint_fallbacks"]
    on_disk = json.loads((out / "build_summary.json").read_text())["synthetic"]
    assert on_disk["inpaint_fallbacks"] == fallbacks and on_disk["fallback_mode"] == "img2img"
    samples = [s["json"] for s in _samples(out)]
    assert not any(k.startswith(("generate:", "plan:")) for k in summary["skipped"])
    # every variant drew one mode; what an inpaint mode could not take became an img2img sample
    # whose fallback names the mode and the reason
    drawn_elsewhere = sum(m["mode"] in ("img2img", "text2img") and not m["fallback"] for m in samples)
    assert sum(f["drawn"] for f in fallbacks.values()) + drawn_elsewhere == len(samples)
    for mode, f in fallbacks.items():
        fell = [m["fallback"].split(":", 1)[1] for m in samples if (m["fallback"] or "").startswith(mode)]
        assert f["fell_back"] == len(fell) == sum(f["reasons"].values())
        assert f["reasons"] == {r: fell.count(r) for r in sorted(set(fell))}
        assert f["drawn"] == f["fell_back"] + sum(m["mode"] == mode for m in samples)
        assert f["rate"] == (round(f["fell_back"] / f["drawn"], 4) if f["drawn"] else 0.0)
    line = next(x for x in format_summary(summary, out).splitlines()
                if x.startswith("  inpaint modes not applied (-> img2img): "))
    assert all(f"{mode} {f['fell_back']} of {f['drawn']}" in line for mode, f in fallbacks.items())
    return fallbacks


def test_summary_reports_inpaint_fallbacks_per_mode(built, syn_cfg, real_shards, tmp_path):  # noqa: F811
    _, ref, summary = built
    assert sum(f["drawn"] for f in _check_fallbacks(summary, ref).values()) > 0
    # no box small enough to edit: every inpaint draw falls back to img2img, and says why
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    summary = build_synthetic(syn_cfg(real_shards / "train", out, "stages=[generate]",
                                      "modes.max_box_area=0.0", "modes.mix.img2img=0",
                                      "modes.mix.text2img=0"), progress=False)
    fallbacks = _check_fallbacks(summary, out)
    assert sum(f["drawn"] for f in fallbacks.values()) == len(_samples(out)) > 0
    for f in fallbacks.values():
        assert f["fell_back"] == f["drawn"] and (f["rate"] == 1.0 or not f["drawn"])
    why = {r for f in fallbacks.values() for r in f["reasons"]}
    # the parents edited in the first build have vocabulary objects: now too large to edit
    assert "box_too_large" in why and why <= {"no_boxes", "not_in_vocabulary", "box_too_large"}


def test_rerun_keeps_shards_and_overwrite_is_byte_identical(built, syn_cfg, real_shards):  # noqa: F811
    cfg, out, _ = built
    before = shard_hashes(out)
    again = build_synthetic(syn_cfg(real_shards / "train", out, "preview=true"), progress=False)
    assert again["resumed_shards"] == len(before) and shard_hashes(out) == before
    other = out.parent / "again"
    build_synthetic(syn_cfg(real_shards / "train", other), progress=False)
    assert shard_hashes(other) == before
    with pytest.raises(ConfigError, match="modes"):
        build_synthetic(syn_cfg(real_shards / "train", out, "modes.per_image=3"), progress=False)


def _cli(inp, out, overrides):
    return [sys.executable, "-m", "builders.synthetic", "--config", str(TINY), "--input", str(inp),
            "--output", str(out)] + list(overrides)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(built, real_shards, model_overrides, tmp_path):  # noqa: F811
    from tests.builders.synthetic.build_fixtures import FAST

    _, ref, _ = built
    out = tmp_path / "killed"
    overrides = [*FAST, *model_overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_cli(real_shards / "train", out, overrides), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill once the first shard's describe stage is done: upscale and describe on disk, no shard
    marker = out / "work" / "synthetic-train-000000" / "chunk-0000" / "ground.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the build ended before the kill"
    assert not (out / "train" / "synthetic-train-000000.stats.json").exists()
    done = subprocess.run(_cli(real_shards / "train", out, overrides), env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shard_hashes(out) == shard_hashes(ref)
    assert not list(out.rglob("*.tmp-*"))


def _png_hash(img) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


def test_a_stage_failing_on_one_image_skips_that_image_only(built, syn_cfg, real_shards,  # noqa: F811
                                                            monkeypatch, tmp_path):
    from builders.synthetic.stages import upscale

    _, ref, _ = built
    real = _real_train(real_shards)
    victim = sorted(k for k, s in real.items() if s["json"]["kind"] == "original")[1]
    poisoned = _png_hash(real[victim]["jpg"])
    original = upscale.Upscaler._batch

    def failing(self, batch):
        if any(_png_hash(im.convert("RGB")) == poisoned for im in batch):
            raise RuntimeError("this tile breaks the upscaler")
        return original(self, batch)

    monkeypatch.setattr(upscale.Upscaler, "_batch", failing)
    out = tmp_path / "out"
    summary = build_synthetic(syn_cfg(real_shards / "train", out), progress=False)
    assert summary["skipped"].get("upscale:error_RuntimeError") == 1
    got = {s["__key__"] for s in _samples(out)}
    want = {s["__key__"] for s in _samples(ref) if s["json"]["parent"] != victim}
    assert got == want and not any(k.startswith(victim + "_") for k in got)


def test_a_failing_unit_is_recorded_and_retried_by_the_next_run(syn_cfg, real_shards,  # noqa: F811
                                                               monkeypatch, tmp_path):
    out = tmp_path / "out"
    load = unit_mod.load_sources

    def broken(unit, cfg, skips):
        if unit.index == 1:
            raise OSError("input shard unreadable just now")
        return load(unit, cfg, skips)

    monkeypatch.setattr(unit_mod, "load_sources", broken)
    summary = build_synthetic(syn_cfg(real_shards / "train", out), progress=False)
    assert list(summary["failed_units"]) == ["synthetic-train-000001.tar"]
    assert json.loads((out / "build_failures.json").read_text())
    assert (out / "train" / "synthetic-train-000000.tar").exists()
    monkeypatch.setattr(unit_mod, "load_sources", load)
    summary = build_synthetic(syn_cfg(real_shards / "train", out), progress=False)
    assert summary["failed_units"] == {} and not (out / "build_failures.json").exists()
    assert (out / "train" / "synthetic-train-000001.tar").exists()


def test_held_out_splits_are_refused(syn_cfg, real_shards, tmp_path):  # noqa: F811
    with pytest.raises(SplitRefused, match="val"):
        build_synthetic(syn_cfg(real_shards / "val", tmp_path / "a"), progress=False)
    # a val shard renamed into a train-looking folder is caught by its samples' split
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(next((real_shards / "val").glob("*.tar")), mixed / "real-train-000000.tar")
    with pytest.raises(SplitRefused, match="'val'"):
        build_synthetic(syn_cfg(mixed, tmp_path / "b"), progress=False)


def test_stages_generate_reruns_generation_only(built, syn_cfg, real_shards, tmp_path):  # noqa: F811
    _, ref, _ = built
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    work = out / "work" / "synthetic-train-000000" / "chunk-0000"
    kept = {p: p.stat().st_mtime_ns for p in [work / "upscale.json", work / "describe.json",
                                              work / "ground.json", work / "segment.json",
                                              *(work / "upscale").glob("*.png")]}
    gen_before = (work / "generate.json").read_text()
    shard = out / "train" / "synthetic-train-000000.tar"
    side = out / "train" / "synthetic-train-000000.quality.tar"
    write_sidecar(shard, "quality", [(k, {"quality.msgpack": {"keep": True}}) for k in shard_keys(str(shard))],
                  shard_identity=shard_identity(str(shard)))  # quality verdicts of these pixels
    with pytest.raises(ConfigError, match="modes"):   # without stages=, a changed recipe is refused
        build_synthetic(syn_cfg(real_shards / "train", out, "modes.img2img.strength=0.3"), progress=False)
    assert side.exists()
    summary = build_synthetic(syn_cfg(real_shards / "train", out, "modes.img2img.strength=0.3",
                                      "stages=[generate]"), progress=False)
    assert not side.exists()  # the rewritten shard's old verdicts are gone: the filter scores it again
    assert summary["resumed_shards"] == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept      # earlier stages reused, untouched
    assert (work / "generate.json").read_text() != gen_before
    img2img = [s for s in _samples(out) if s["json"]["mode"] == "img2img"]
    assert img2img and all(s["json"]["strength"] == 0.3 for s in img2img)
    assert set(summary["synthetic"]["stage_seconds_this_run"]) == {"generate", "verify"}
    assert shard_hashes(out) != shard_hashes(ref)


def test_image_folder_input_uses_the_real_builders_train_images_only(syn_cfg, tmp_path):
    from builders.common.inputs import read_folder
    from builders.common.plan import hashed_split, item_key
    from builders.demo_images import make_demo_tree

    tree = make_demo_tree(tmp_path / "tiles", per_class=2, size=32, seed=5)
    keys = [item_key(it.rel) for it in read_folder(tree)]

    def train_at(v):
        return {k for k in keys if hashed_split(k, seed=0, val_fraction=v, test_fraction=0.0) == "train"}

    # a held-out fraction that keeps 2..4 of the 10 images for training: a small, mixed case
    val = next(v / 20 for v in range(6, 20) if 2 <= len(train_at(v / 20)) <= 4)
    train = train_at(val)
    summary = build_synthetic(syn_cfg(tree, tmp_path / "out", "inputs.images_per_shard=2",
                                      f"inputs.val_fraction={val}", "resident=false"), progress=False)
    samples = _samples(tmp_path / "out")
    assert summary["synthetic"]["source_images"] == len(train)
    assert {s["json"]["parent"] for s in samples} <= train
    assert {s["json"]["class"] for s in samples} <= {k.split("_")[0] for k in train}


def test_prompts_cut_for_clip_are_counted_in_the_summary(built):
    """Demo captions behind the style words pass the tiny tokenizer's 77 tokens (one a character),
    as RSICD captions pass the real one: each cut is flagged on its sample and counted."""
    from transformers import CLIPTokenizer

    cfg, out, summary = built
    tok = CLIPTokenizer.from_pretrained(Path(cfg.generate.model) / "tokenizer")

    def too_long(text):
        return len(tok(text, verbose=False)["input_ids"]) > 77

    metas = [s["json"] for s in _samples(out)]
    expected = [too_long(m["prompt"]) or too_long(m["negative_prompt"]) for m in metas]
    assert 0 < sum(expected) and [m["prompt_trimmed"] for m in metas] == expected
    on_disk = json.loads((out / "build_summary.json").read_text())
    assert on_disk["synthetic"]["prompts_trimmed"] == summary["synthetic"]["prompts_trimmed"] == sum(expected)
    assert f"prompts cut to CLIP's token limit (after a whole word): {sum(expected)} of" in \
        format_summary(summary, out)


def test_break_lock_takes_over_a_dead_hosts_lock_from_the_cli(built, model_overrides, real_shards, capsys):  # noqa: F811
    """--break-lock reaches the synthetic builder's lock as it does the real builder's."""
    from builders.synthetic.__main__ import main
    from tests.builders.synthetic.build_fixtures import FAST

    _, out, _ = built
    lock = out / "build.lock"
    lock.write_text(json.dumps({"tool": "builders.synthetic", "host": "a-dead-node", "pid": 1,
                                "time": time.time() - 3600}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    argv = ["--config", str(TINY), "--input", str(real_shards / "train"), "--output", str(out),
            *FAST, *model_overrides]
    assert main(argv) == 2
    assert "a-dead-node" in capsys.readouterr().err and lock.exists()
    assert main([*argv, "--break-lock"]) == 0
    assert "2 shards kept from an earlier run" in capsys.readouterr().out
    assert not lock.exists()  # taken over, then released


def test_a_unit_failure_keeps_its_type(syn_cfg, real_shards, monkeypatch, tmp_path):  # noqa: F811
    """A held-out sample found inside a unit stops the build with the unit's own SplitRefused; an
    error of another type that merely names it is a recorded unit failure."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(next((real_shards / "val").glob("*.tar")), mixed / "real-train-000000.tar")
    with pytest.raises(SplitRefused) as refused:
        build_synthetic(syn_cfg(mixed, tmp_path / "a"), progress=False)
    assert not str(refused.value).startswith("SplitRefused")  # the unit's message, not a re-wrap
    load = unit_mod.load_sources

    def broken(unit, cfg, skips):
        if unit.index == 1:
            raise OSError("cannot read /backups/SplitRefused/real-train-000001.tar")
        return load(unit, cfg, skips)

    monkeypatch.setattr(unit_mod, "load_sources", broken)
    summary = build_synthetic(syn_cfg(real_shards / "train", tmp_path / "b"), progress=False)
    assert list(summary["failed_units"]) == ["synthetic-train-000001.tar"]
    assert summary["failed_units"]["synthetic-train-000001.tar"].startswith("OSError: cannot read")


def test_every_stage_has_a_runner():
    from builders.synthetic.config import STAGES
    from builders.synthetic.pipeline import STAGE_RUNNERS

    assert tuple(STAGE_RUNNERS) == STAGES
