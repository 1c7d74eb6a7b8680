import json

from tests.common.quality import score_all
from wds_tools.inspect import main


def test_inspect_json_reports_sidecar_score_ranges(shard_dir, capsys):
    score_all(shard_dir)
    assert main([str(shard_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    total = report["total"]
    assert total["shards"] == 3 and total["samples"] == 10
    assert total["sources"] == {"real": 10} and total["classes"] == {"a": 5, "b": 5}
    assert total["extensions"]["quality.msgpack"] == 10
    comp = total["scores"]["quality.composite"]
    assert comp["min"] == 0.0 and comp["max"] == 0.9 and abs(comp["mean"] - 0.45) < 1e-9
    assert total["flags"]["quality.keep"] == {"false": 4, "true": 6}
    assert report["shards"][0]["sidecars"] == ["quality"]
    assert total["classes_per_shard"] == {"min": 2, "median": 2, "max": 2}


def test_manifest_and_inspect_report_classes_per_shard(tmp_path, capsys):
    from tests.conftest import make_contract_samples
    from wds_tools.manifest import write_index
    from wds_tools.writer import shard_name, write_shard

    samples = make_contract_samples(9, classes=("a", "b", "c"))
    for i, chunk in enumerate(([samples[0], samples[3]], samples[1:3], samples[4:])):  # a | b c | a b c
        write_shard(tmp_path / shard_name("real-train", i), chunk)
    index = write_index(tmp_path, name="t")
    assert index["classes_per_shard"] == {"min": 1, "median": 2, "max": 3}
    assert [(s["classes"], s["by_class"]) for s in index["shards"]] == [
        (1, {"a": 2}), (2, {"b": 1, "c": 1}), (3, {"a": 1, "b": 2, "c": 2})]
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "classes per shard: min 1  median 2  max 3" in out and "real-train-000002.tar: 5 samples, 3 classes" in out


def test_inspect_text_and_refusals(shard_dir, capsys):
    assert main([f"{shard_dir}/real-train-000000.tar"]) == 0
    out = capsys.readouterr().out
    assert "1 shard(s), 4 samples" in out and "sources:  {'real': 4}" in out
    assert main([f"pipe:cat {shard_dir}/real-train-000000.tar"]) == 2
    err = capsys.readouterr().err
    assert "allow_pipe" in err and err.count("\n") == 1 and ": error: " in err
