"""The held-out split as CLIP_benchmark webdatasets; `clip_benchmark eval` on the hub export vs training.evaluate."""

from __future__ import annotations

import json
import tarfile

import open_clip
import pytest
import torch

from tests.training.conftest import TINY_CONFIG, make_source
from training.clip_benchmark_compat import accuracy
from training.clip_benchmark_export import export_clip_benchmark, run_clip_benchmark, side_by_side
from training.evaluate import load_eval_set
from training.evaluate import main as evaluate_main
from training.hub_export import export_hub

CLASSES = ["airport", "forest", "river", "beach"]
TEMPLATES = ["a satellite photo of {}.", "an aerial photograph of {}."]


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """16 labelled images (8 jpg + 8 png shards), two captions each: a class template shared by
    four images (source "original") and a caption of their own (source "vlm")."""
    root = tmp_path_factory.mktemp("cb_heldout")
    make_source(root / "a", source="real", n_shards=1, per_shard=8, classes=CLASSES, selection=False)
    make_source(root / "b", source="real", n_shards=1, per_shard=8, classes=CLASSES, ext="png", selection=False)
    return [str(root / "a"), str(root / "b")]


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_export_writes_both_datasets_from_the_samples_evaluate_reads(heldout, tmp_path):
    summary = export_clip_benchmark(heldout, tmp_path, name="val", templates=TEMPLATES)
    data = load_eval_set(heldout, size=32)
    assert summary["images"] == len(data.captions) == 16 and summary["captions"] == 32
    cls_dir, ret_dir = tmp_path / "wds_val", tmp_path / "wds_val_retrieval"
    assert (cls_dir / "classnames.txt").read_text().splitlines() == sorted(CLASSES)
    assert (cls_dir / "zeroshot_classification_templates.txt").read_text().splitlines() == [
        "a satellite photo of {c}.", "an aerial photograph of {c}."]
    assert (ret_dir / "dataset_type.txt").read_text().strip() == "retrieval"
    assert (cls_dir / "test" / "nshards.txt").read_text().strip() == "1"
    members = _members(cls_dir / "test" / "0.tar")
    assert len([n for n in members if n.endswith(".cls")]) == 16
    images = [n for n in members if n.endswith((".jpg", ".png"))]
    assert len(images) == 16 and {n.rsplit(".", 1)[1] for n in images} == {"jpg", "png"}
    # sample i: its class index and, one per line, the same captions evaluate reads, in order
    for i, (caps, cls) in enumerate(zip(data.captions, data.classes)):
        assert members[f"{i:06d}.txt"].decode().splitlines() == caps
        assert int(members[f"{i:06d}.cls"]) == sorted(CLASSES).index(cls)
    assert _members(ret_dir / "test" / "0.tar").keys() == members.keys() - {n for n in members if n.endswith(".cls")}


def test_export_reads_a_shard_listed_twice_once_as_evaluate_does(heldout, tmp_path):
    twice = [heldout[0], heldout[0], heldout[1]]
    summary = export_clip_benchmark(twice, tmp_path, name="twice", templates=TEMPLATES)
    assert summary["images"] == len(load_eval_set(twice, size=32).captions) == 16


def test_export_follows_caption_sources_and_max_samples(heldout, tmp_path):
    summary = export_clip_benchmark(heldout, tmp_path, name="vlm", templates=TEMPLATES, caption_sources=["vlm"],
                                    max_samples=5)
    assert summary["images"] == 5 and summary["captions"] == 5
    texts = [v.decode() for k, v in _members(tmp_path / "wds_vlm_retrieval" / "test" / "0.tar").items()
             if k.endswith(".txt")]
    assert all("seen from above" in t and "\n" not in t for t in texts)
    with pytest.raises(ValueError, match="exactly one"):
        export_clip_benchmark(heldout, tmp_path, name="bad", templates=["an aerial photo"])


def test_evaluate_cli_exports_and_prints_the_commands(heldout, tmp_path, capsys):
    out = tmp_path / "bench"
    code = evaluate_main(["--config", str(TINY_CONFIG), "--shards", heldout[0], "--shards", heldout[1],
                          "--export-clip-benchmark", str(out), "--name", "val", f"train.output={tmp_path}"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["classification"] == str(out / "wds_val") and (out / "wds_val" / "test" / "0.tar").is_file()
    assert "--dataset wds/val_retrieval" in printed["commands"][1] and "local-dir:" in printed["commands"][0]


def test_compat_accuracy_is_top_k_accuracy():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.4, 0.35, 0.25]])
    target = torch.tensor([0, 0, 2, 1])
    assert accuracy(logits, target, topk=(1, 2, 3)) == [0.25, 0.5, 1.0]


@pytest.mark.slow
def test_clip_benchmark_eval_on_the_hub_export_matches_training_evaluate(trained_run, heldout, tmp_path):
    _, cfg = trained_run
    hub = export_hub(cfg, out=str(tmp_path / "hub"))
    export_clip_benchmark(heldout, tmp_path / "bench", name="val", templates=TEMPLATES)
    bench = run_clip_benchmark(tmp_path / "bench", "val", hub, tmp_path / "results")
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{hub}")
    rows = {r["metric"]: r for r in side_by_side(model, heldout, bench, templates=TEMPLATES,
                                                 tokenizer=open_clip.get_tokenizer(f"local-dir:{hub}"))}
    assert len(rows) == 10
    for name, r in rows.items():
        if r["clip_benchmark"] is not None:  # top-5 needs 5 classes in CLIP_benchmark: n/a here
            assert r["owner only"] == pytest.approx(r["clip_benchmark"], abs=1e-6), name
    assert rows["zero-shot top-1"]["training.evaluate"] == pytest.approx(rows["zero-shot top-1"]["clip_benchmark"])
    # training.evaluate also counts a hit on another image holding the identical (template) caption
    for key in (f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)):
        assert rows[key]["training.evaluate"] >= rows[key]["clip_benchmark"] - 1e-9, key
    assert rows["mean recall"]["training.evaluate"] > rows["mean recall"]["clip_benchmark"]
