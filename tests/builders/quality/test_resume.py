"""A run killed with SIGKILL mid-way leaves only whole sidecars; the next run finishes the rest."""

import os
import signal
import subprocess
import sys
import time

from builders.quality.run import SIDECAR, run
from tests.builders.quality.conftest import REPO, good_sample, tiny_config
from wds_tools.reader import iter_tar_samples
from wds_tools.sidecar import read_sidecar
from wds_tools.urls import expand_urls, sidecar_url
from wds_tools.writer import shard_name, write_shard


def test_kill_then_resume(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    for s in range(8):
        write_shard(shards / shard_name("k", s), [good_sample(s * 4 + i) for i in range(4)])
    cmd = [sys.executable, "-m", "builders.quality", "--config", str(REPO / "configs/filter/tiny.yaml"),
           "--input", str(shards), "--output", str(tmp_path / "report"),
           f"model.name={REPO / 'configs/models/tiny-clip.json'}", "model.batch_size=4", "loader.num_workers=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list(shards.glob("*.quality.tar")):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = sorted(shards.glob("*.quality.tar"))
    assert 1 <= len(done) < 8
    for side in done:  # whatever is under a final name is whole
        shard = str(side).replace(".quality.tar", ".tar")
        assert list(read_sidecar(shard, SIDECAR)) == [s["__key__"] for s in iter_tar_samples(shard)]
    assert expand_urls(str(shards)) == sorted(str(p) for p in shards.glob("k-*[0-9].tar"))
    report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    assert report["shards"]["scored_this_run"] == 8 - len(done)
    assert report["total"] == 32 and report["kept"] + report["dropped"] == 32
    for url in expand_urls(str(shards)):
        assert os.path.exists(sidecar_url(url, SIDECAR))
