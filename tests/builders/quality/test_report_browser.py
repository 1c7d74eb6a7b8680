"""quality_report.html in a real browser (headless Chromium): it renders, every image loads, the tables fill."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.quality.run import run
from tests.builders.quality.browser import CHROMIUM, open_page
from tests.builders.quality.conftest import make_shards, tiny_config

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} not found: the browser check needs Debian's chromium (apt-get install -y chromium; "
           ".ci/run installs it)")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    run(tiny_config(tmp, f"input={make_shards(tmp / 'shards')}", "loader.num_workers=0"))
    return tmp / "report"


class _Tags(HTMLParser):
    """The img sources and the number of tables written in the file."""

    def __init__(self) -> None:
        super().__init__()
        self.images, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self.tables += tag == "table"


def _load(report: Path, tmp: Path) -> tuple[dict, Image.Image]:
    facts = open_page(report, tmp / "screenshot.png", tmp / "profile")
    return facts, Image.open(tmp / "screenshot.png")


def test_report_renders_with_every_image_and_table(report_dir, tmp_path):
    page = report_dir / "quality_report.html"
    facts, shot = _load(page, tmp_path)
    report = json.loads((report_dir / "quality_report.json").read_text())
    assert facts["title"] == "Quality filter report" and facts["text"] > 200
    written = _Tags()
    written.feed(page.read_text())
    # every <img> in the file loaded and decoded to a real picture
    assert len(written.images) >= 3 and [i["src"] for i in facts["images"]] == written.images
    for img in facts["images"]:
        assert img["complete"] and img["width"] > 100 and img["height"] > 100, img
    # every table is laid out with its header and rows; by source and by class hold one row per entry
    assert len(facts["tables"]) == written.tables >= 3
    assert all(t["rows"] >= 2 and t["height"] > 20 and t["cells"] >= 2 * t["rows"] for t in facts["tables"])
    rows = [t["rows"] - 1 for t in facts["tables"]]
    assert len(report["by_source"]) in rows and len(report["by_class"]) in rows
    assert all(Path(link.removeprefix("file://")).exists() for link in facts["links"] if link.startswith("file:"))
    # the screenshot is the page, not a blank or error screen
    arr = np.asarray(shot.convert("L"))
    assert shot.size[0] == 1280 and shot.size[1] >= 600 and arr.std() > 20 and (arr < 128).mean() > 0.01


def test_a_missing_picture_is_caught(report_dir, tmp_path):
    broken = tmp_path / "report"
    broken.mkdir()
    for f in report_dir.iterdir():
        if f.name != "quality_grid.png":
            (broken / f.name).write_bytes(f.read_bytes())
    facts, _ = _load(broken / "quality_report.html", tmp_path)
    missing = [i for i in facts["images"] if i["width"] == 0]
    assert [i["src"] for i in missing] == ["quality_grid.png"]
