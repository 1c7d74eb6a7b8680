"""The real builder on a two-node Ray cluster (``ray.cluster_utils.Cluster`` on loopback, see
:mod:`tests.common.ray_cluster`) writing to the S3 API server: units run and upload on both
nodes (node ids in the build summary on the store), and a node removed while its unit is staged
but not uploaded has that unit built again on the other node; the objects on the store then
equal an uninterrupted build's, and nothing the removed node staged reaches the store.

On one machine both nodes stage in the same folder (``WDS_STAGING_DIR``, one per output URL):
each unit writes and uploads only its own shard's files, so the uninterrupted build, with units
staging on both nodes at once, shows that sharing is safe.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

import builders.real.build as real_build
from builders.demo_images import make_demo_tree
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.common import ray_units
from tests.common.ray_cluster import loopback_cluster, patch_unit, remove_when_stalled, run_on, stalled_process_gone
from tests.store.objects import comparable, store_files
from wds_tools.config import load_config
from wds_tools.remote_output import staging_dir

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SETTINGS = ["size=32", "images_per_shard=2", "m2b.analysis_size=32", "preview=false"]
AWS = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"]
INDEX = ("dataset.json", "sizes.json", "build_summary.json")


def _tar_digests(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(d).hexdigest() for n, d in files.items() if n.endswith(".tar")}


def _without_nodes(files: dict[str, bytes]) -> dict[str, object]:
    """:func:`comparable`, less the summary's ``units_by_node`` (which node built what differs)."""
    c = comparable(files)
    c["build_summary.json"].pop("units_by_node")
    return c


def test_real_build_to_s3_on_two_nodes_survives_losing_one(s3_server, tmp_path, monkeypatch):
    tiles = make_demo_tree(tmp_path / "demo", per_class=2, size=48, seed=1)
    monkeypatch.setenv("WDS_STAGING_DIR", str(tmp_path / "staging"))
    cfg = lambda url: load_config(RealBuildConfig, None, [  # noqa: E731
        f"input={tiles}", f"output={url}", "executor=ray", *SETTINGS])
    start = time.monotonic()
    with loopback_cluster() as (cluster, worker):
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        # The nodes started after the server fixture set its endpoint and credentials: their
        # workers have them, as workers have the environment of `ray start` on a real node.
        for node in (head_id, worker_id):
            assert run_on(node, ray_units.environ_of, AWS) == {n: os.environ[n] for n in AWS}

        whole_url = s3_server.url("whole")
        build_real(cfg(whole_url), progress=False)
        whole = store_files(s3_server, whole_url)
        by_node = json.loads(whole["build_summary.json"])["units_by_node"]
        assert set(by_node) == {head_id, worker_id}, by_node  # both nodes built and uploaded units
        tars = _tar_digests(whole)
        assert sorted(n for names in by_node.values() for n in names) == sorted(n.rsplit("/", 1)[-1] for n in tars)
        for name, digest in tars.items():
            assert json.loads(whole[name[: -len(".tar")] + ".stats.json"])["sha256"] == digest
        assert not staging_dir(whole_url).exists()  # the driver's staging folder is gone

        # The worker node stages something that looks like a finished shard, then is removed
        # before uploading it: the unit runs again on the head.
        cut_url = s3_server.url("cut")
        (tmp_path / ray_units.DOOMED).write_text(worker_id)
        patch_unit(monkeypatch, real_build, ray_units.half_stage_on_doomed_node, tmp_path)
        seen_then: dict[str, list[str]] = {}

        def look(unit: str) -> None:  # the store while the unit is staged on the doomed node
            seen_then[unit] = sorted(store_files(s3_server, cut_url))

        stalled: list[str] = []
        remover = threading.Thread(target=remove_when_stalled,
                                   args=(cluster, worker, tmp_path, stalled), kwargs={"before": look})
        remover.start()
        build_real(cfg(cut_url), progress=False)
        remover.join()
        assert stalled, "no unit started on the worker node"
        unit = stalled[0]
        assert stalled_process_gone(tmp_path, unit)  # nothing on that node can upload any more
        staged_then = [n for n in seen_then[unit] if n.rsplit("/", 1)[-1].startswith(unit[: -len(".tar")])]
        assert staged_then == [], staged_then  # its staged files were never on the store...
        assert not any(n.endswith(INDEX) for n in seen_then[unit])  # ...nor any index mid-build

        cut = store_files(s3_server, cut_url)
        cut_by_node = json.loads(cut["build_summary.json"])["units_by_node"]
        assert unit in cut_by_node[head_id] and unit not in cut_by_node.get(worker_id, []), cut_by_node
        assert sorted(cut) == sorted(whole)  # the same objects: no temporary, no leftover
        assert _tar_digests(cut) == tars  # the same tar bytes
        assert _without_nodes(cut) == _without_nodes(whole)  # and every other object alike
        assert not any(ray_units.LEFTOVER_KEY.encode() in data for data in cut.values())
        assert not staging_dir(cut_url).exists()
        print(f"\nnodes {head_id[:8]} (head), {worker_id[:8]} (removed); whole build: "
              f"{ {k[:8]: v for k, v in by_node.items()} }; unit {unit} rebuilt on the head")
    print(f"S3 cluster test: {time.monotonic() - start:.1f} s")


def _must_not_build(unit, cfg, output):
    raise AssertionError(f"unit {unit.name} is finished on the store: it must not be built again")


def test_a_unit_resumed_on_a_node_ignores_that_nodes_older_staging(s3_server, tmp_path):
    """A cluster node's staging folder outlives a run (only the driver's is emptied at start): a
    unit resumed there takes its skips and tallies from the store, not from a file an earlier run
    left in that folder."""
    from builders.common.driver import skips_path
    from builders.common.remote import result_path, store_unit

    tiles = make_demo_tree(tmp_path / "demo", per_class=2, size=48, seed=1)
    url = s3_server.url("resumed")
    cfg = load_config(RealBuildConfig, None, [f"input={tiles}", f"output={url}", "workers=1", *SETTINGS])
    build_real(cfg, progress=False)
    units, _ = real_build.BUILDER.plan(cfg)
    on_store = store_files(s3_server, url)
    assert not any(n.endswith((".skips.json", ".result.json")) for n in on_store)  # no unit skipped any
    node_staging = tmp_path / "other-node-staging"  # the same path on that node, an earlier run's files
    shard = units[0].path(node_staging)
    skips_path(shard).parent.mkdir(parents=True)
    skips_path(shard).write_text(json.dumps({"unreadable": 3}))
    result_path(shard).write_text(json.dumps({"stage_seconds": {"m2b": 1.0}, "kept": 7}))
    r = store_unit(_must_not_build, url, False, False, units[0], cfg, str(node_staging))
    assert r.resumed and r.skips == {} and r.extra == {}, (r.skips, r.extra)
    stats = json.loads(on_store[f"{units[0].split}/{units[0].name[: -len('.tar')]}.stats.json"])
    assert r.samples == stats["samples"]
