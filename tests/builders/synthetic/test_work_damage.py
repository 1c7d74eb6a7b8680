"""The synthetic builder's work folder damaged between runs: garbage stage JSON, a cut PNG, a mask
stack of the wrong size. Each is logged naming the file, its stage runs again for that chunk, and
the rebuilt shard equals an undamaged build's."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.synthetic.build import build_synthetic
from builders.synthetic.work import ChunkWork, DamagedWork
from tests.builders.synthetic.build_fixtures import model_overrides, real_shards, shard_hashes, syn_cfg  # noqa: F401

UNIT = "synthetic-train-000000"


@pytest.fixture(scope="module")
def reference(real_shards, model_overrides, tmp_path_factory):  # noqa: F811
    """An undamaged build, kept with its work folder."""
    from builders.synthetic.config import SyntheticBuildConfig
    from tests.builders.synthetic.build_fixtures import FAST, TINY
    from wds_tools.config import load_config

    out = tmp_path_factory.mktemp("syn_ref") / "out"
    cfg = load_config(SyntheticBuildConfig, TINY, [f"input={real_shards / 'train'}", f"output={out}",
                                                   *FAST, *model_overrides])
    assert build_synthetic(cfg, progress=False)["failed_units"] == {}
    return out


def _copy_without_shard(ref: Path, out: Path) -> Path:
    """``ref`` copied, unit 0's shard gone (as after a kill before its rename): the rerun rebuilds
    it from the work folder. Returns unit 0's first chunk folder."""
    shutil.copytree(ref, out)
    for p in (out / "train").glob(f"{UNIT}.*"):
        p.unlink()
    return out / "work" / UNIT / "chunk-0000"


def _rerun_and_check(syn_cfg, real_shards, ref: Path, out: Path, caplog, damaged: Path) -> None:  # noqa: F811
    with caplog.at_level(logging.WARNING, logger="builders.synthetic.unit"):
        summary = build_synthetic(syn_cfg(real_shards / "train", out), progress=False)
    assert summary["failed_units"] == {}
    assert shard_hashes(out) == shard_hashes(ref)  # nothing short, nothing different
    named = [r.getMessage() for r in caplog.records if str(damaged) in r.getMessage()]
    assert named and "again" in named[0], [r.getMessage() for r in caplog.records]


@pytest.mark.slow
def test_garbage_stage_json_runs_that_stage_again(reference, syn_cfg, real_shards, tmp_path, caplog):  # noqa: F811
    chunk = _copy_without_shard(reference, tmp_path / "out")
    (chunk / "describe.json").write_bytes(b"\x00\xffnot json at all")
    _rerun_and_check(syn_cfg, real_shards, reference, tmp_path / "out", caplog, chunk / "describe.json")
    assert json.loads((chunk / "describe.json").read_text())


@pytest.mark.slow
def test_a_cut_png_runs_its_stage_again(reference, syn_cfg, real_shards, tmp_path, caplog):  # noqa: F811
    chunk = _copy_without_shard(reference, tmp_path / "out")
    png = sorted(p for p in (chunk / "generate").glob("*.png") if not p.stem.endswith("-mask"))[0]
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    _rerun_and_check(syn_cfg, real_shards, reference, tmp_path / "out", caplog, png)


@pytest.mark.slow
def test_a_mask_stack_of_the_wrong_height_reruns_segment_not_a_short_shard(reference, syn_cfg, real_shards,  # noqa: F811
                                                                           tmp_path, caplog):
    chunk = _copy_without_shard(reference, tmp_path / "out")
    seg = json.loads((chunk / "segment.json").read_text())
    gen = json.loads((chunk / "generate.json").read_text())["results"]
    for stage in ("generate", "verify"):  # as if killed after segment: generation reads the stacks
        ChunkWork(chunk).clear(stage)
    inpainted = {r["parent"] for r in gen.values() if r.get("mode", "").startswith("inpaint")}
    key = next(k for k in sorted(inpainted) if seg[k]["masks"] >= 1)
    stack = np.asarray(Image.open(chunk / "segment" / f"{key}.png"))
    # half of every mask's rows: still a whole number of rows per mask, so only the size tells
    Image.fromarray(stack[: stack.shape[0] // 2 // seg[key]["masks"] * seg[key]["masks"]]).save(
        chunk / "segment" / f"{key}.png")
    _rerun_and_check(syn_cfg, real_shards, reference, tmp_path / "out", caplog, chunk / "segment" / f"{key}.png")


@pytest.mark.slow
def test_damage_that_comes_back_is_an_error_naming_the_file(reference, syn_cfg, real_shards, tmp_path,  # noqa: F811
                                                            monkeypatch):
    chunk = _copy_without_shard(reference, tmp_path / "out")
    read = ChunkWork.read

    def always_damaged(self, stage):
        if stage == "ground" and self.root == chunk:
            raise DamagedWork(self.root, stage, self.root / "ground.json", "unreadable every time")
        return read(self, stage)

    monkeypatch.setattr(ChunkWork, "read", always_damaged)
    summary = build_synthetic(syn_cfg(real_shards / "train", tmp_path / "out"), progress=False)
    error = summary["failed_units"][f"{UNIT}.tar"]
    assert str(chunk / "ground.json") in str(error) and "again" in str(error)


def test_unreadable_work_files_name_the_file(tmp_path):
    w = ChunkWork(tmp_path / "chunk-0000")
    (tmp_path / "chunk-0000").mkdir()
    (tmp_path / "chunk-0000" / "ground.json").write_text("[1, 2")
    with pytest.raises(DamagedWork, match=r"chunk-0000/ground\.json is unreadable") as e:
        w.read("ground")
    assert e.value.stage == "ground"
    (tmp_path / "chunk-0000" / "generate.json").write_text('{"results": {}}')  # its plan_skips are gone
    with pytest.raises(DamagedWork, match=r"generate\.json"):
        w.read("generate")
    w.save_masks("k", [np.ones((4, 6), bool), np.zeros((4, 6), bool)])
    assert w.load_masks("k", 2, shape=(4, 6)).shape == (2, 4, 6)
    with pytest.raises(DamagedWork, match=r"segment/k\.png.*2 masks of 4 x 6 px, not 8 x 6"):
        w.load_masks("k", 2, shape=(8, 6))
    with pytest.raises(DamagedWork, match=r"upscale/gone\.png"):
        w.load_image("upscale", "gone")


@pytest.mark.slow
def test_a_shard_short_of_its_plan_says_so(reference, syn_cfg, real_shards, tmp_path, caplog):  # noqa: F811
    chunk = _copy_without_shard(reference, tmp_path / "out")
    doc = json.loads((chunk / "generate.json").read_text())
    victim = sorted(doc["results"])[0]
    doc["results"][victim] = {"skip": "error_RuntimeError", "parent": doc["results"][victim]["parent"]}
    (chunk / "generate.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="builders.synthetic.unit"):
        build_synthetic(syn_cfg(real_shards / "train", tmp_path / "out"), progress=False)
    written = json.loads((tmp_path / "out" / "train" / f"{UNIT}.stats.json").read_text())["samples"]
    warned = [r.getMessage() for r in caplog.records if "planned" in r.getMessage()]
    assert len(warned) == 1 and f"{UNIT}.tar: {written} of {written + 1} planned" in warned[0], warned
    assert "'generate:error_RuntimeError': 1" in warned[0]
