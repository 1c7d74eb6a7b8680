"""Quality verdicts stay bound to the image bytes they scored.

A shard rebuilt with another recipe (same keys, new pixels) loses its sidecar, is scored again by
the next filter run and is refused by Stage 2 under the old selection; a sidecar written before
shards were recorded is scored again; a shard deleted while training is one line naming it; and
``selection.json`` does not depend on the order shards finished scoring in.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import tarfile
from pathlib import Path

import pytest

from builders.quality.run import MEMBER, SIDECAR, run, score_shards
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.builders.conftest import demo_tree  # noqa: F401 - the builders' own fixture
from tests.builders.quality.conftest import good_sample, tiny_config
from tests.training.conftest import TINY_CONFIG, make_source
from training.config import Stage2Config
from training.quality_gate import SelectionError, check_mix_selection
from training.trainer import train
from wds_tools.config import load_config
from wds_tools.quality_record import SELECTION_NAME
from wds_tools.sidecar import read_sidecar, shard_keys, write_sidecar
from wds_tools.writer import shard_name, write_shard

REPO = Path(__file__).resolve().parents[2]
BUILD = ["size=32", "images_per_shard=3", "workers=1", "m2b.analysis_size=32", "preview=false",
         "augment.per_image=0", "zoom.enabled=false"]
FILTER = ["loader.num_workers=0", "selection.min_clip_score_caption=-1"]


def _build(tree: Path, out: Path, *extra: str) -> None:
    cfg = load_config(RealBuildConfig, REPO / "configs" / "build" / "real.yaml",
                      [f"input={tree}", f"output={out}", *BUILD, *extra])
    build_real(cfg, progress=False)


def _shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"))


def test_rebuild_with_another_recipe_is_scored_again_and_the_old_selection_refused(
        demo_tree, tmp_path, caplog):  # noqa: F811
    out = tmp_path / "real"
    _build(demo_tree, out)
    train = out / "train"
    urls = _shards(train)
    first = run(tiny_config(tmp_path, f"input={train}", *FILTER))
    assert first["shards"]["scored_this_run"] == len(urls) > 1
    backup = tmp_path / "backup"
    backup.mkdir()
    for p in train.glob("*.quality.tar"):
        shutil.copy2(p, backup / p.name)  # an old copy of the verdicts, as a backup or an rsync keeps it
    keys = {u: shard_keys(u) for u in urls}
    old_bytes = {u: Path(u).read_bytes() for u in urls}

    _build(demo_tree, out, "quality=60", "overwrite=true")  # same keys, new pixels
    assert _shards(train) == urls and {u: shard_keys(u) for u in urls} == keys
    assert all(Path(u).read_bytes() != old_bytes[u] for u in urls)
    # the builder drops what described the old pixels
    assert not list(train.glob("*.quality.tar")) and not (train / SELECTION_NAME).exists()
    # Stage 2 under the old selection (the filter's report copy): one line naming a shard
    with pytest.raises(SelectionError) as e:
        check_mix_selection(urls, files=[str(tmp_path / "report" / SELECTION_NAME)], require=False)
    message = " ".join(str(e.value).split())
    assert "not the images the quality filter scored" in message and str(train / "real-train-") in message
    assert "builders.quality" in message

    # the old sidecars copied back beside the new shards: the filter sees they scored other bytes
    for p in backup.iterdir():
        shutil.copy2(p, train / p.name)
    with caplog.at_level(logging.WARNING):
        again = run(tiny_config(tmp_path, f"input={train}", *FILTER))
    assert again["shards"]["scored_this_run"] == len(urls)
    stale = [r.message for r in caplog.records if "its verdicts are stale" in r.message]
    assert len(stale) == len(urls) and "scored at" in stale[0]
    assert not check_mix_selection(urls, files=[], require=True).problems  # the new selection trains


def test_damaged_shard_rebuilt_without_overwrite_loses_its_sidecar_only(demo_tree, tmp_path):  # noqa: F811
    out = tmp_path / "real"
    _build(demo_tree, out)
    cut, kept = (Path(u) for u in _shards(out / "train")[:2])
    for shard in (cut, kept):
        write_sidecar(shard, SIDECAR, [(k, {MEMBER: {"keep": True}}) for k in shard_keys(str(shard))])
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    _build(demo_tree, out)  # the cut shard is rebuilt, the others resumed
    assert not cut.with_name(cut.name[:-4] + ".quality.tar").exists()
    assert kept.with_name(kept.name[:-4] + ".quality.tar").exists()


def test_sidecar_without_a_recorded_shard_is_scored_again(tmp_path, caplog):
    d = tmp_path / "shards"
    d.mkdir()
    for s in range(2):
        write_shard(d / shard_name("o", s), [good_sample(s * 4 + i) for i in range(4)])
    run(tiny_config(tmp_path, f"input={d}", *FILTER))
    old = str(d / shard_name("o", 1))
    records = [(k, {MEMBER: v[MEMBER]}) for k, v in read_sidecar(old, SIDECAR).items()]
    write_sidecar(old, SIDECAR, records)  # as a filter that recorded no shard wrote it
    with caplog.at_level(logging.WARNING):
        report = run(tiny_config(tmp_path, f"input={d}", *FILTER))
    assert report["shards"]["scored_this_run"] == 1
    assert any("no size and sha256 of the shard were recorded" in r.message and old in r.message
               for r in caplog.records)
    entries = json.loads((d / SELECTION_NAME).read_text())["sidecars"]
    assert all(e["shard_identity"]["bytes"] == (d / e["shard"]).stat().st_size for e in entries)


def _flip_an_image_byte(shard: Path) -> None:
    """Change one byte inside the first image member: same size, same keys, other pixels."""
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith((".jpg", ".png")))
    data = bytearray(shard.read_bytes())
    data[member.offset_data + member.size // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_swapped_shard_of_the_same_size_is_refused_before_the_first_step(tmp_path):
    shards = make_source(tmp_path / "real", source="real", n_shards=2, per_shard=4, classes=["forest", "beach"])
    a, b = (shards / shard_name("real", i) for i in range(2))
    size = a.stat().st_size
    _flip_an_image_byte(a)
    assert a.stat().st_size == size
    cfg = load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{shards}]", "data.synthetic=[]", "data.num_workers=0", f"train.output={tmp_path / 'out'}",
        "train.max_steps=2", "eval.before=false", "eval.after=false"])
    with pytest.raises(SelectionError, match=rf"1 of 2 shards .*{a}: sha256 .* scored at ") as e:
        train(cfg)
    assert str(b) not in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out" / "training_log.json").exists()


def test_every_shard_deleted_while_training_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import training.trainer as trainer
    from training.train import main

    shards = make_source(tmp_path / "real", source="real", n_shards=2, per_shard=4, classes=["forest", "beach"])
    make_loader = trainer.make_loader

    def delete_then_load(*args, **kwargs):  # after every start-up check, before the first read
        for p in shards.glob("real-*[0-9].tar"):
            p.unlink()
        return make_loader(*args, **kwargs)

    monkeypatch.setattr(trainer, "make_loader", delete_then_load)
    rc = main(["--config", str(TINY_CONFIG), f"data.real=[{shards}]", "data.synthetic=[]", "data.num_workers=1",
               f"train.output={tmp_path / 'out'}", "train.max_steps=2", "eval.before=false", "eval.after=false"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2 and len(errors) == 1, err
    # one deleted shard is a counted skip (tests/store); a source with none left is this one line
    assert "shard not found" in errors[0] and str(shards / "real-0000") in errors[0]
    assert "Traceback" not in errors[0] and len(errors[0]) < 300, errors[0]
    # the loader's workers ignore SIGTERM: one left running would block the interpreter's exit
    assert not multiprocessing.active_children(), multiprocessing.active_children()


def test_selection_is_byte_equal_whatever_order_shards_finished_in(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for s in range(4):  # one batch per shard, so a partial run batches alike
        write_shard(d / shard_name("f", s), [good_sample(s * 4 + i) for i in range(4)])
    urls = _shards(d)
    cfg = tiny_config(tmp_path, f"input={d}", *FILTER)
    written = []
    for first in (urls[2:], urls[:2]):  # what a run killed after these shards leaves
        for p in d.glob("*.quality.tar"):
            p.unlink()
        (d / SELECTION_NAME).unlink(missing_ok=True)
        score_shards(cfg, first)
        run(cfg)
        written.append((d / SELECTION_NAME).read_bytes())
    assert written[0] == written[1]
    listed = [e["shard"] for e in json.loads(written[0])["sidecars"]]
    assert listed == sorted(listed) == [Path(u).name for u in urls]
