"""The whole chain against a real S3 API server (moto, 127.0.0.1), then the same on local disk:
real build -> synthetic build -> filter -> materialize on ``s3://``; Stage 2 on two processes
(``accelerate launch``, gloo) from a weighted mix of ``.txt`` URL lists that mix ``s3://`` and
local shards; ``training.evaluate`` on the held-out ``s3://`` shards; ``wds_tools.inspect --json``
on the ``s3://`` sets. The local run reads disk copies of the same shards: the two trainings see
the same sample keys on both ranks, and evaluate and inspect give the same figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders.conftest import tiny_vlm  # noqa: F401 - the tiny models of the synthetic stages
from tests.builders.synthetic.build_fixtures import model_overrides  # noqa: F401
from tests.builders.synthetic.conftest import tiny_esrgan, tiny_grounding_dino, tiny_sam, tiny_sd3  # noqa: F401
from tests.common.launch import launch_two_ranks
from tests.store.objects import build_chain, demo_tiles, store_files
from tests.training.conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.slow

SETS = ("real/train", "syn/train")  # what Stage 2 trains on; real/val is held out
TRAIN = ["data.synthetic_ratio=0.5", "train.max_steps=3", "train.checkpoint_every=0", "train.log_sample_keys=true",
         "eval.before=false", "eval.after=false", "data.num_workers=1"]


def _copy_to_disk(server, url: str, local: Path) -> None:
    """Every object under ``url`` as a file under ``local``, same relative names."""
    for name, data in store_files(server, url).items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_bytes(data)


def _url_list(path: Path, shards: list[str], remote: str | None, local: Path) -> Path:
    """A ``.txt`` list of ``shards`` (names relative to the set's root): with ``remote``, every
    other one as its ``s3://`` URL and the rest as the local copy; else all local."""
    path.write_text("".join(f"{remote}/{n}\n" if remote and i % 2 == 0 else f"{local / n}\n"
                            for i, n in enumerate(shards)))
    return path


def _python(*args: str) -> str:
    """Run ``python -m ...`` with the test's environment (the S3 endpoint and keys); its stdout."""
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def _stage2(out: Path, lists: dict[str, Path], heldout: str) -> dict:
    """Two-rank training on the lists, then evaluate and its figures; the run's keys and log."""
    proc = launch_two_ranks("-m", "training.train", "--config", str(TINY_CONFIG), f"data.real=[{lists['real']}]",
                   f"data.synthetic=[{lists['synthetic']}]", f"train.output={out}", *TRAIN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    keys = {r: [json.loads(line)["keys"] for line in (out / f"sample_keys.rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}
    figures = json.loads(_python("training.evaluate", "--config", str(TINY_CONFIG), "--shards", heldout,
                                 "--output", str(out)))
    return {"keys": keys, "log": json.loads((out / "training_log.json").read_text())["summary"],
            "evaluate": figures}


def _inspect(*urls: str) -> dict:
    """``wds_tools.inspect --json`` of ``urls``: its totals and per-shard figures, less the URLs."""
    report = json.loads(_python("wds_tools.inspect", "--json", *urls))
    return {"total": report["total"], "shards": [{k: v for k, v in s.items() if k != "url"} for s in report["shards"]]}


def test_stage2_evaluate_inspect_on_s3_equal_local(s3_server, tmp_path, model_overrides, monkeypatch):  # noqa: F811
    monkeypatch.setenv("WDS_STAGING_DIR", str(tmp_path / "staging"))
    root = s3_server.url("p")
    build_chain(root, demo_tiles(tmp_path), tmp_path / "report" / "report", model_overrides)
    local = tmp_path / "disk"
    _copy_to_disk(s3_server, root, local)
    shards = {name: sorted(p.relative_to(local).as_posix() for p in (local / d).glob("*.tar")
                           if not p.name.endswith(".quality.tar"))
              for name, d in zip(("real", "synthetic"), SETS)}
    assert all(len(s) >= 2 for s in shards.values()), shards  # each list mixes s3:// and local
    lists = tmp_path / "lists"
    lists.mkdir()
    mixed = {n: _url_list(lists / f"{n}_mixed.txt", s, root, local) for n, s in shards.items()}
    on_disk = {n: _url_list(lists / f"{n}_disk.txt", s, None, local) for n, s in shards.items()}
    assert any(line.startswith("s3://") for line in mixed["real"].read_text().splitlines())
    assert any(line.startswith(str(local)) for line in mixed["real"].read_text().splitlines())

    s3 = _stage2(tmp_path / "s3_run", mixed, f"{root}/real/val")
    disk = _stage2(tmp_path / "disk_run", on_disk, str(local / "real" / "val"))
    for run in (s3, disk):
        assert run["log"]["world_size"] == 2 and [r["rank"] for r in run["log"]["ranks"]] == [0, 1]
        assert [r["steps"] for r in run["log"]["ranks"]] == [3, 3]
        assert all(len(run["keys"][r]) == 3 for r in (0, 1))
    assert s3["keys"] == disk["keys"]
    assert s3["log"]["counters"] == disk["log"]["counters"]
    assert s3["evaluate"] == disk["evaluate"] and s3["evaluate"]
    remote_sets = [f"{root}/{d}" for d in (*SETS, "real/val", "mat")]
    local_sets = [str(local / d) for d in (*SETS, "real/val", "mat")]
    assert _inspect(*remote_sets) == _inspect(*local_sets)
