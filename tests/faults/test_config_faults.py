"""Hostile and broken config YAML: duplicate keys, nested aliases, syntax errors, refused tags.

Each is one line naming the file and the line, exit status 2, before any work; a huge value is
never formatted whole into a message.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.config import Stage2Config
from wds_tools.config import ConfigError, load_config, parse_override
from wds_tools.materialize import MaterializeConfig
from wds_tools.user_yaml import show

REPO = Path(__file__).resolve().parents[2]
PROG = "python -m wds_tools.materialize"

# Under 400 bytes; every level nine times the one before, all inside the one list that the config
# checks: the last level alone is 9**8 = 43 million strings once walked or formatted.
LAUGHS = "".join([
    "input:\n",
    '- - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
    *(f"  - &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")),
])


def _materialize(config: Path, *args: str, memory_gb: float = 1.0) -> subprocess.CompletedProcess:
    """The entry point in a process of its own with capped memory (the old loader expanded the
    aliases until it ran out of it)."""
    def cap():
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "wds_tools.materialize", "--config", str(config), *args],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=120, preexec_fn=cap)


def _one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{PROG}: "), err[-2000:]
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    return lines[0]


def test_duplicate_top_level_key_names_the_key_and_both_lines(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  learning_rate: 0.001\nmodel:\n  name: tiny\ntrain:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=r"train\.yaml'.*key 'train' given twice \(lines 1 and 5\)"):
        load_config(Stage2Config, path)


def test_duplicate_nested_key_and_duplicate_in_an_override_are_refused(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train:\n  learning_rate: 0.001\n  batch_size: 4\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"key 'learning_rate' given twice \(lines 2 and 4\)"):
        load_config(Stage2Config, path)
    with pytest.raises(ConfigError, match=r"override 'data\.weights'.*key 'a' given twice"):
        parse_override("data.weights={a: 1, a: 2}")
    # distinct keys and plain overrides still load
    cfg = load_config(Stage2Config, None, ["train.learning_rate=0.002", "data.real=*.tar"])
    assert cfg.train.learning_rate == 0.002 and cfg.data.real == ["*.tar"]


def test_nested_aliases_fail_fast_in_one_line(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    assert len(LAUGHS.encode()) < 400
    t = time.monotonic()
    out = _materialize(path, "--output", str(tmp_path / "m"))
    elapsed = time.monotonic() - t
    assert out.returncode == 2, out.stderr[-2000:]
    line = _one_line(out.stderr, "laughs.yaml", "line 3", "alias *a refused")
    assert len(line) < 400 and elapsed < 30, (len(line), elapsed)


def test_a_merge_key_is_an_alias_too(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {maxcount: 5}\nother:\n  <<: *base\n")
    with pytest.raises(ConfigError, match=r"line 3, column 7: alias \*base refused"):
        load_config(MaterializeConfig, path)


@pytest.mark.parametrize("text, needles", [
    ("input: [a.tar\nmaxcount: 3\n", ["line 2", "expected ',' or ']'", "flow sequence from line 1"]),
    ("maxcount: 3\n  prefix: x\n", ["line 2", "mapping values are not allowed here"]),
    ("input: !!python/object/apply:os.system ['echo owned']\n",
     ["line 1", "tag 'tag:yaml.org,2002:python/object/apply:os.system' refused"]),
    ("prefix: !custom x\n", ["line 1", "tag '!custom' refused"]),
], ids=["unclosed-list", "bad-indent", "python-tag", "unknown-tag"])
def test_syntax_errors_and_refused_tags_are_one_line_naming_file_and_line(tmp_path, text, needles):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    out = _materialize(path, "--input", str(tmp_path / "x.tar"), "--output", str(tmp_path / "m"))
    assert out.returncode == 2
    _one_line(out.stderr, str(path), *needles)
    assert not (tmp_path / "m").exists()


def test_a_huge_value_is_never_formatted_whole_into_a_message(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("maxcount: [" + ",".join(["123456789"] * 5_000) + "]\nprefix: '" + "x" * 100_000 + "'\n")
    with pytest.raises(ConfigError) as e:
        load_config(MaterializeConfig, path)
    assert "maxcount: expected int" in str(e.value) and len(str(e.value)) < 600
    assert len(show("y" * 10**6)) < 500 and len(show([[1] * 1000] * 1000)) < 500


def test_a_byte_order_mark_in_a_config_is_accepted(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbfmaxcount: 7\n")
    assert load_config(MaterializeConfig, path).maxcount == 7
