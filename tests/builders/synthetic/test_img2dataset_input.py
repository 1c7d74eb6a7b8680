"""img2dataset's shard layout (numbered tars of jpg/txt/json, no class, no source, no dataset.json,
``_stats.json`` beside) is a valid input of builders.synthetic."""
from __future__ import annotations

from pathlib import Path

from builders.synthetic.build import build_synthetic
from tests.builders.synthetic.build_fixtures import model_overrides, syn_cfg  # noqa: F401
from tests.common.img2dataset import write_img2dataset_shards
from wds_tools.reader import decode_sample, iter_shard


def test_synthetic_builder_reads_img2dataset_shards(syn_cfg, tmp_path):  # noqa: F811
    src = write_img2dataset_shards(tmp_path / "img2dataset", shards=2, per_shard=2)
    keys = {s["__key__"]: s for tar in sorted(src.glob("*.tar")) for s in map(decode_sample, iter_shard(str(tar)))}
    out = tmp_path / "syn"
    summary = build_synthetic(syn_cfg(src, out), progress=False)
    assert summary["source_images"] == 4 and not summary["failed_units"]
    made = [decode_sample(s) for tar in sorted((Path(out) / "train").glob("*.tar")) for s in iter_shard(str(tar))]
    skipped_variants = sum(v for k, v in summary["skipped"].items()
                           if not k.startswith(("fallback", "segment:", "describe:")))
    assert len(made) + skipped_variants == 4 * 2  # two variants of each source, every one accounted for
    assert len(made) > 0
    for s in made:
        meta = s["json"]
        assert meta["source"] == "synthetic" and meta["parent"] in keys
        assert meta["class"] is None  # img2dataset keys carry no class; none is invented
        parent_caption = keys[meta["parent"]]["txt"]
        if meta["mode"] in ("img2img", "text2img"):  # the source caption, then the variant or layout phrase
            assert meta["captions"][0].lower().startswith(parent_caption.lower()), meta["captions"]
