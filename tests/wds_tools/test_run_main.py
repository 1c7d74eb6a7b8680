"""One CLI boundary for every entry point: a user error is one line and exit status 2; a bug is not."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wds_tools.config import ConfigError, run_main

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN = str(REPO / "configs" / "train" / "tiny.yaml")


def _one_error_line(err: str, prog: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert all(n in lines[0] for n in needles), (needles, lines[0])


@pytest.mark.parametrize("error", [ValueError("bad value 3\nfor key x"), FileNotFoundError("no such file: a.tar"),
                                   ConfigError("unknown config key 'a.b'"), FileExistsError("out exists"),
                                   NotADirectoryError("not a dir: f")])
def test_user_errors_print_one_line_and_exit_2(error, capsys):
    def fails(argv):
        raise error

    assert run_main(fails, [], prog="job") == 2
    _one_error_line(capsys.readouterr().err, "job", str(error).split()[0])


def test_a_bug_keeps_its_traceback_and_success_passes_through(capsys):
    assert run_main(lambda argv: None, [], prog="job") == 0 and run_main(lambda argv: 3, [], prog="job") == 3
    with pytest.raises(KeyError):
        run_main(lambda argv: {}["missing"], [], prog="job")
    assert capsys.readouterr().err == ""


def test_real_builder_without_input_is_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "builders.real", "--output", str(tmp_path / "o")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    _one_error_line(out.stderr, "python -m builders.real", "--input")


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    (tmp / "a_file").write_text("x")
    missing = str(tmp / "missing-000000.tar")
    return [
        ("builders.real.__main__", ["--input", str(tmp / "no-images"), "--output", str(tmp / "o")], "no-images"),
        ("builders.quality.__main__", ["--input", missing], "missing-000000.tar"),
        ("builders.demo_images", ["--output", str(tmp / "a_file" / "tiles")], "a_file"),
        ("training.train", ["--config", TINY_TRAIN, "--output", str(tmp / "t"), "model.pretrained=/nonexistent/w.pt"],
         "/nonexistent/w.pt"),
        ("training.evaluate", ["--config", TINY_TRAIN], "--shards"),
        ("training.standin_base", ["--config", str(REPO / "configs/train/base-tiny.yaml"), "--output", str(tmp / "b")],
         "data.real is empty"),
        ("training.export", ["--config", TINY_TRAIN, "--adapter", str(tmp / "no-adapter")], "no-adapter"),
        ("wds_tools.inspect", [missing], "missing-000000.tar"),
        ("wds_tools.materialize", ["--input", missing, "--output", str(tmp / "m")], "missing-000000.tar"),
    ]


@pytest.mark.slow
def test_every_entry_point_reports_user_errors_the_same_way(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["remoteclip-job"])  # as a console script: prog is its name
    for module, argv, needle in _cases(tmp_path):
        main = importlib.import_module(module).main
        assert main(argv) == 2, module
        _one_error_line(capsys.readouterr().err, "remoteclip-job", needle)
