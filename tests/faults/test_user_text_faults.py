"""User text that is valid but unusual: ``$`` in captions and class names (matplotlib math text),
file names in any script (sample keys), zero-width-only captions, byte-order marks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.common.inputs import read_items
from builders.quality import report as report_mod
from builders.quality.run import run
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.builders.quality.conftest import texture, tiny_config
from wds_tools.config import load_config
from wds_tools.reader import decode_sample, iter_shard
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.writer import shard_name, write_shard

REPO = Path(__file__).resolve().parents[2]
FAST = ["size=32", "images_per_shard=3", "workers=1", "m2b.analysis_size=32", "preview=false",
        "augment.per_image=0", "zoom.enabled=false"]
MATH = r"$\alpha_$"  # an unclosed subscript: matplotlib's math parser raises on it


# --- $ in the quality report ---------------------------------------------------------------------

def _dollar_shards(folder: Path) -> Path:
    folder.mkdir(parents=True)
    samples = [make_sample(key=make_key("s", i), image=encode_image(texture(i)), caption=f"earns $^{{ ${i} a day",
                           meta={"source": "real", "class": MATH if i % 2 else "field", "split": "train"})
               for i in range(8)]
    write_shard(folder / shard_name("d", 0), samples)
    return folder


def test_dollar_signs_in_captions_and_class_names_are_drawn_as_typed(tmp_path, caplog):
    shards = _dollar_shards(tmp_path / "shards")
    with caplog.at_level(logging.WARNING, logger="builders.quality.report"):
        report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    assert sorted(report["pictures"]) == ["quality_classes.png", "quality_grid.png", "quality_histograms.png",
                                          "quality_report.html"]
    assert not [r for r in caplog.records if "not drawn" in r.getMessage()]
    assert MATH in report["by_class"] and (shards / "selection.json").exists()
    assert report_mod.plain(MATH) == r"\$\alpha_\$" and report_mod.plain("a \\$ b") == "a \\\\$ b"


def test_a_failing_picture_is_one_warning_and_never_blocks_the_selection(tmp_path, monkeypatch, caplog):
    shards = _dollar_shards(tmp_path / "shards")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer gave up\non two lines")

    monkeypatch.setattr(report_mod, "plot_grid", broken)
    with caplog.at_level(logging.WARNING, logger="builders.quality.report"):
        report = run(tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0"))
    assert json.loads((shards / "selection.json").read_text())["total"] == 8
    assert (tmp_path / "report" / "selection.json").exists()
    assert "quality_grid.png" not in report["pictures"] and "quality_classes.png" in report["pictures"]
    warned = [r.getMessage() for r in caplog.records if "not drawn" in r.getMessage()]
    assert len(warned) == 1 and "quality_grid.png" in warned[0] and "\n" not in warned[0]
    assert "renderer gave up on two lines" in warned[0]


# --- keys from file names in any script ------------------------------------------------------------

def _tile(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_cjk_file_names_in_one_class_get_distinct_readable_keys(tmp_path):
    tree = tmp_path / "tiles"
    names = ["机场/跑道一.png", "机场/跑道二.png", "森林/树 林.png", "forest/a b.c.png"]
    for i, name in enumerate(names):
        _tile(tree / name, i)
    cfg = load_config(RealBuildConfig, REPO / "configs" / "build" / "real.yaml",
                      [f"input={tree}", f"output={tmp_path / 'out'}", *FAST])
    build_real(cfg, progress=False)
    keys = {decode_sample(s)["__key__"] for tar in sorted((tmp_path / "out").rglob("*.tar"))
            for s in iter_shard(str(tar))}
    assert keys == {"机场_跑道一", "机场_跑道二", "森林_树-林", "forest_a-b-c"}


def test_ascii_keys_are_those_of_the_earlier_rule_and_other_scripts_stay_readable():
    import re

    earlier = re.compile(r"[^A-Za-z0-9_-]+")
    for parts in [("Dense Residential", "dense_residential_01"), ("a.b", "c/d", "e\tf"), ("x--y", "__", "%20")]:
        assert make_key(*parts) == "_".join(earlier.sub("-", p) for p in parts)
    assert make_key("café") == make_key("cafe\u0301") == "café"  # decomposed accents stay letters
    assert make_key("Привет мир", "٣") == "Привет-мир_٣"
    assert make_key("日本．語", "x\u200by") == "日本-語_x-y"  # a full-width dot, a zero-width space


# --- caption files: zero-width-only captions, byte-order marks -------------------------------------

def _records(tree: Path) -> list[dict]:
    for i, name in enumerate(("a/one.png", "a/two.png")):
        _tile(tree / name, i)
    return [{"image": "a/one.png", "captions": ["\u200b\u200b", " \u200b a real caption\u200b ", "\ufeff"]},
            {"image": "a/two.png", "caption": "\u200b\u2060\u200d", "class": "\u200b"}]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_byte_order_mark_is_dropped_and_zero_width_captions_are_empty(tmp_path, fmt):
    recs = _records(tmp_path)
    path = tmp_path / f"captions.{fmt}"
    if fmt == "jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
    elif fmt == "json":
        text = json.dumps(recs, ensure_ascii=False)
    else:
        text = "image,caption_1,caption_2,caption_3,class\n" + "".join(
            ",".join([r["image"], *(r.get("captions") or [r["caption"], "", ""]), r.get("class", "")]) + "\n"
            for r in recs)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    items = {it.rel: it for it in read_items(path)}
    assert items["a/one.png"].captions == ["a real caption"]
    assert items["a/two.png"].captions == [] and items["a/two.png"].cls is None


@pytest.mark.slow  # imports the synthetic builder's model stages
def test_zero_width_captions_of_input_shards_are_no_captions(tmp_path):
    from builders.synthetic.config import SyntheticBuildConfig
    from builders.synthetic.sources import SynthUnit, iter_shard_sources
    from wds_tools.skips import SkipLog

    caps = ["\u200b\u200b", "a runway beside a hangar", "\ufeff "]
    sample = make_sample(key="s_0", image=encode_image(texture(0)), caption=caps[1],
                         meta={"source": "real", "class": "airport", "split": "train", "kind": "original",
                               "captions": caps, "caption_sources": ["original", "vlm", "original"]})
    write_shard(tmp_path / shard_name("real-train", 0), [sample])
    unit = SynthUnit(index=0, shard=str(tmp_path / shard_name("real-train", 0)))
    (rec,) = iter_shard_sources(unit, load_config(SyntheticBuildConfig, None, ["size=32"]), SkipLog())
    assert rec["captions"] == ["a runway beside a hangar"] and rec["caption_sources"] == ["vlm"]
