"""The builders' command lines at test sizes, and the one-line error a failed command must print."""

from __future__ import annotations

from pathlib import Path

from tests.builders.quality.conftest import REPO, good_sample
from wds_tools.writer import shard_name, write_shard

PROG = "remoteclip-job"  # the console-script name the tests run the builders under
REAL = ["--config", str(REPO / "configs" / "build" / "real.yaml"), "size=32", "images_per_shard=3", "workers=1",
        "m2b.analysis_size=32", "preview=false"]
FILTER = ["--config", str(REPO / "configs" / "filter" / "tiny.yaml"),
          f"model.name={REPO / 'configs' / 'models' / 'tiny-clip.json'}", "model.batch_size=4",
          "loader.num_workers=0", "report.thumb_size=48"]
SYNTHETIC = ["--config", str(REPO / "configs" / "build" / "synthetic-tiny.yaml"), "size=32", "workers=1",
             "device=cpu", "preview=false"]


def error_line(capsys, *needles: str) -> str:
    """The single ``PROG: error: ...`` line the command printed last (no traceback), holding every needle."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err[-3000:]
    assert all(n in errors[0] for n in needles), (needles, errors[0])
    return errors[0]


def filter_shards(folder: Path) -> Path:
    """One shard of four good samples in a new ``folder``: an input for the quality filter."""
    folder.mkdir(parents=True)
    write_shard(folder / shard_name("f", 0), [good_sample(i) for i in range(4)])
    return folder
