"""Stage 2 on shards streamed from a real S3 API server (moto, 127.0.0.1): a 0.80 mix whose real
source is a ``.txt`` URL list mixing ``s3://`` and local shards (built by builders.real) and whose
synthetic source is an ``s3://`` folder with the filter's sidecars and ``selection.json`` trains on
the same samples, step by step, as the same shards on local disk; a shard deleted mid-run is a
counted skip; refused credentials stop the run at start, in one line, before any step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from builders.real.__main__ import main as real_main
from tests.builders.conftest import demo_tree  # noqa: F401 - the builders' own fixture
from tests.common.cli import REAL
from tests.training.conftest import TINY_CONFIG, make_source
from training.config import Stage2Config
from training.train import main as train_main
from training.trainer import train
from wds_tools.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture
def sets(demo_tree, tmp_path) -> dict[str, Path]:  # noqa: F811
    """A real set built by builders.real and a synthetic-like source with quality sidecars."""
    real = tmp_path / "real"
    assert real_main([*REAL, "--input", str(demo_tree), "--output", str(real)]) == 0
    synthetic = make_source(tmp_path / "synthetic", source="synthetic", n_shards=3, per_shard=8,
                            classes=["river", "beach"], drop_every=4, ext="png")
    assert len(list((real / "train").glob("*.tar"))) >= 2
    return {"real": real / "train", "synthetic": synthetic}


def _run(out: Path, real: str, synthetic: str, *extra: str) -> dict:
    cfg = load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{real}]", f"data.synthetic=[{synthetic}]", "data.synthetic_ratio=0.8",
        # the real set is not filtered: its shards have no sidecars, the synthetic ones do
        "data.require_selection=false", f"train.output={out}", "train.max_steps=4",
        "train.checkpoint_every=0", "train.log_sample_keys=true", "eval.before=false", "eval.after=false",
        *extra])
    return train(cfg)


def _keys(out: Path) -> list[list[str]]:
    return [json.loads(line)["keys"] for line in (out / "sample_keys.rank0.jsonl").read_text().splitlines()]


def _lists(sets: dict[str, Path], tmp_path: Path, remote_real: str) -> tuple[Path, Path]:
    """``local.txt`` (every real shard on disk) and ``mixed.txt`` (the first from the store)."""
    names = sorted(p.name for p in sets["real"].glob("*.tar"))
    local, mixed = tmp_path / "local.txt", tmp_path / "mixed.txt"
    local.write_text("".join(f"{sets['real'] / n}\n" for n in names))
    mixed.write_text(f"{remote_real}/{names[0]}\n" + "".join(f"{sets['real'] / n}\n" for n in names[1:]))
    return local, mixed


def test_a_mix_from_s3_and_local_trains_on_what_local_disk_gives(s3_server, sets, tmp_path, caplog):
    remote_real = s3_server.upload(sets["real"], "real", "train")
    remote_synthetic = s3_server.upload(sets["synthetic"], "synthetic")
    assert s3_server.fs.exists(f"{remote_synthetic}/selection.json")
    local_list, mixed_list = _lists(sets, tmp_path, remote_real)
    on_disk = _run(tmp_path / "disk", str(local_list), str(sets["synthetic"]))
    on_s3 = _run(tmp_path / "s3", str(mixed_list), remote_synthetic)
    assert _keys(tmp_path / "s3") == _keys(tmp_path / "disk") and len(_keys(tmp_path / "disk")) == 4
    # the synthetic source's quality sidecars were read from the store: the same samples dropped
    counters = on_s3["summary"]["counters"]
    assert counters.get("quality_dropped", 0) > 0 and counters == on_disk["summary"]["counters"]
    # class counts from the selection.json in the s3:// folder, its dataset.json found there too
    assert on_s3["summary"]["class_counts"] == on_disk["summary"]["class_counts"] == {"beach": 6, "river": 12}
    assert not [r for r in caplog.records if "no dataset.json for s3:" in r.getMessage()]
    losses = [[e["total_loss"] for e in run["training_log"]] for run in (on_s3, on_disk)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_shards_deleted_from_the_store_mid_run_are_counted_skips(s3_server, sets, tmp_path, monkeypatch, caplog):
    import training.trainer as trainer

    remote = s3_server.upload(sets["real"], "real", "train")
    gone: list[str] = []

    def build_then_delete(*args, **kwargs):  # the run has listed its shards; then most vanish
        sources = build_sources(*args, **kwargs)
        gone.extend(sources[0].urls[1:])
        s3_server.fs.rm(gone)
        return sources

    build_sources = trainer.build_sources
    monkeypatch.setattr(trainer, "build_sources", build_then_delete)
    # one in-process loader: each chunk draws 2 of the 4 shards, so one is always a deleted one
    log = _run(tmp_path / "out", remote, "", "data.synthetic=[]", "data.num_workers=0")
    assert len(gone) == 3 and log["summary"]["steps"] == 4
    assert log["summary"]["counters"].get("skip_unreadable_shard", 0) >= 1, log["summary"]["counters"]
    logged = {u for r in caplog.records for u in gone if u in r.getMessage() and "unreadable_shard" in r.getMessage()}
    assert logged, [r.getMessage() for r in caplog.records]


def test_refused_credentials_stop_the_run_at_start_in_one_line(start_s3_server, tmp_path, monkeypatch, capsys):
    server = start_s3_server(auth=True)  # a server that knows no access key: every request is refused
    monkeypatch.setattr(sys, "argv", ["remoteclip-train"])
    out = tmp_path / "out"
    assert train_main(["--config", str(TINY_CONFIG), "--real", server.url("real"),
                       "--output", str(out), "eval.before=false", "eval.after=false"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"remoteclip-train: error: {server.url('real')!r}: the object store refused access"), last
    assert not (out / "training_log.json").exists() and not (out / "checkpoints").exists()
