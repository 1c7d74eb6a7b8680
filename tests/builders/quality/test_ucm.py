"""Real aerial tiles (development sample): filled, rotated tiles must score lower on image quality."""

import json
from pathlib import Path

import pytest
from PIL import Image

from builders.quality.run import MEMBER, SIDECAR, run
from tests.builders.quality.conftest import UCM, tiny_config
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.sidecar import read_sidecar
from wds_tools.writer import shard_name, write_shard

pytestmark = pytest.mark.skipif(not (UCM / "captions.json").exists(), reason="ucm_sample not present")


def test_black_fill_scores_lower_on_image_quality(tmp_path):
    items = json.loads((UCM / "captions.json").read_text())
    # 4 classes x (4 augmented + 4 others) keeps this small
    classes = ("agricultural", "airplane", "harbor", "forest")
    picked = [it for c in classes for flag in (True, False)
              for it in [i for i in items if i["class"] == c and i["augmented_black_border"] == flag][:4]]
    samples = [make_sample(key=make_key("ucm", Path(it["image"]).stem),
                           image=encode_image(Image.open(UCM / it["image"]).convert("RGB")),
                           caption=it["captions"][0],
                           meta={"source": "real", "class": it["class"],
                                 "kind": "augmented" if it["augmented_black_border"] else "original"})
               for it in picked]
    shard = tmp_path / shard_name("ucm", 0)
    write_shard(shard, samples)
    report = run(tiny_config(tmp_path, f"input={shard}", "loader.num_workers=0", "model.batch_size=16"))
    assert report["total"] == 32
    side = read_sidecar(str(shard), SIDECAR)
    kind = {s["__key__"]: json.loads(s["json"])["kind"] for s in samples}
    q = {k: v[MEMBER]["scores"] for k, v in side.items()}
    aug = [q[k]["quality"] for k in q if kind[k] == "augmented"]
    orig = [q[k]["quality"] for k in q if kind[k] == "original"]
    assert sum(aug) / len(aug) < sum(orig) / len(orig) - 0.1
    assert min(q[k]["border_fraction"] for k in q if kind[k] == "augmented") > 0.05
