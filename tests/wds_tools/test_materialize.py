import json

import pytest

from tests.common.quality import score_all
from wds_tools.materialize import main
from wds_tools.reader import decode_sample, iter_shard
from wds_tools.sidecar import write_sidecar
from wds_tools.urls import expand_urls


def test_reshard_keeps_selected_and_folds_sidecars(shard_dir, tmp_path_factory, capsys):
    score_all(shard_dir)
    out = tmp_path_factory.mktemp("reshard") / "filtered"  # apart from the input folder
    assert main(["--input", str(shard_dir), "--output", str(out), "maxcount=3"]) == 0
    assert "6 samples kept" in capsys.readouterr().out
    samples = [decode_sample(s, image=None) for u in expand_urls(out) for s in iter_shard(u)]
    # keys 0, 3, 6, 9 fail the selection
    assert [s["__key__"] for s in samples] == ["s0001", "s0002", "s0004", "s0005", "s0007", "s0008"]
    assert all(s["quality.msgpack"]["keep"] for s in samples)
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["kept"] == 6 and manifest["dropped"] == {"quality:below_threshold": 4}
    assert json.loads((out / "sizes.json").read_text()) == {
        "filtered-000000.tar": 3, "filtered-000001.tar": 3}
    assert (out / "config.yaml").exists()


def test_bad_selection_config_fails_before_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--input", "x", "--output", str(tmp_path / "o"), "sidecars=[]"])
    assert e.value.code == 2
    assert "require_keep member 'quality.msgpack'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_rerun_with_fewer_shards_leaves_no_stale_shard(shard_dir, tmp_path_factory):
    score_all(shard_dir)
    out = tmp_path_factory.mktemp("reshard") / "filtered"
    assert main(["--input", str(shard_dir), "--output", str(out), "maxcount=2"]) == 0
    assert len(list(out.glob("filtered-*.tar"))) == 3
    assert main(["--input", str(shard_dir), "--output", str(out), "maxcount=4"]) == 0
    assert sorted(p.name for p in out.glob("filtered-*.tar")) == ["filtered-000000.tar", "filtered-000001.tar"]
    assert json.loads((out / "dataset.json").read_text())["total_samples"] == 6


def test_reshard_drops_unkept_captions_and_pending_records(tmp_path):
    from tests.conftest import tiny_image
    from wds_tools.quality_record import PENDING
    from wds_tools.sample import encode_image, make_sample
    from wds_tools.writer import write_shard
    src = tmp_path / "src"
    src.mkdir()
    samples = [make_sample(key=f"s{i}", image=encode_image(tiny_image(i)), caption=f"human {i}",
                           meta={"source": "real", "captions": [f"human {i}", f"generated {i}"],
                                 "caption_sources": ["original", "vlm"]}) for i in range(4)]
    write_shard(src / "real-train-000000.tar", samples)
    flags = {"s0": [False, True], "s1": [True, False], "s2": [True, True], "s3": [True, True]}
    write_sidecar(src / "real-train-000000.tar", "quality", [
        (k, {"msgpack": {"keep": True, "reasons": [PENDING] if k == "s3" else [],
                         "captions": [{"source": s, "clip": 0.3, "keep": f} for s, f in zip(("original", "vlm"), fl)]}})
        for k, fl in flags.items()])
    out = tmp_path / "filtered"
    assert main(["--input", str(src), "--output", str(out)]) == 0
    got = {s["__key__"]: decode_sample(s, image=None) for u in expand_urls(out) for s in iter_shard(u)}
    assert set(got) == {"s0", "s1", "s2"}  # a pending record is never selected
    assert got["s0"]["json"]["captions"] == ["generated 0"] and got["s0"]["txt"] == "generated 0"
    assert got["s0"]["json"]["caption_sources"] == ["vlm"]
    assert got["s1"]["json"]["captions"] == ["human 1"] and got["s1"]["txt"] == "human 1"
    assert got["s2"]["json"]["captions"] == ["human 2", "generated 2"]
