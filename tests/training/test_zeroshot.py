"""training.evaluate --zeroshot DIR: a class-per-subfolder image tree (UC Merced sample, else drawn tiles)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from builders.demo_images import make_demo_tree
from clip_models.config import ModelConfig
from clip_models.loading import create_model
from clip_models.text_tower import build_tokenizer, tokenizer_spec
from tests.conftest import UCM_SAMPLE
from tests.training.conftest import REPO, TINY_CONFIG
from training.evaluate import evaluate_model, load_eval_set
from training.evaluate import main as evaluate_main
from training.zeroshot import class_text, plot_confusion, scan_folder, zeroshot_folder
from wds_tools.sample import make_sample
from wds_tools.writer import write_shard

TEMPLATES = ["a satellite photo of {}.", "an aerial photograph of {}.", "a remote sensing image of {}."]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """UC Merced's sample (10 classes x 16) where present, else drawn tiles (10 classes x 6)."""
    if (UCM_SAMPLE / "images").is_dir():
        return UCM_SAMPLE / "images"
    from builders.demo_images import HARD_CLASSES

    return make_demo_tree(tmp_path_factory.mktemp("tiles"), per_class=6, size=64, classes=HARD_CLASSES, variation=0.5)


@pytest.fixture(scope="module")
def tiny():
    model = create_model(ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json")))
    return model.eval(), build_tokenizer(tokenizer_spec("tiny-clip"))


def test_figures_add_up_and_match_evaluate_on_the_same_images(labelled, tiny, tmp_path):
    model, tokenizer = tiny
    result = zeroshot_folder(model, labelled, tokenizer=tokenizer, templates=TEMPLATES, batch_size=32)
    folders, items = scan_folder(labelled)
    confusion = torch.tensor(result["confusion"])
    assert result["num_images"] == len(items) == confusion.sum() and result["num_classes"] == len(folders) == 10
    for i, name in enumerate(folders):  # each row holds exactly that folder's images
        assert confusion[i].sum() == sum(1 for _, label in items if label == i), name
        assert result["per_class"][name] == pytest.approx(100 * confusion[i, i].item() / confusion[i].sum().item())
    assert result["top1"] == pytest.approx(100 * confusion.trace().item() / len(items))
    assert result["top1"] <= result["top5"] <= 100
    assert result["mean_per_class"] == pytest.approx(sum(result["per_class"].values()) / 10)

    # the same images as held-out shards: training.evaluate's zero-shot gives the same top-1
    samples = [make_sample(key=f"s{j:04d}", image=path.read_bytes(), caption="an aerial image",
                           meta={"class": folders[label], "source": "real"}, image_ext=path.suffix[1:].lower())
               for j, (path, label) in enumerate(items)]
    write_shard(tmp_path / "heldout-000000.tar", samples)
    data = load_eval_set([str(tmp_path / "heldout-000000.tar")], size=64)
    ours = evaluate_model(model, data, tokenizer=tokenizer, templates=TEMPLATES)
    assert ours["zeroshot"]["accuracy"] == pytest.approx(result["top1"])

    png = plot_confusion(result, tmp_path / "cm.png")
    with Image.open(png) as img:
        assert img.size[0] >= 500 and len(np.unique(np.asarray(img.convert("L")))) > 10


@pytest.mark.parametrize("folder, text", [
    ("BareLand", "bare land"), ("baseball_diamond", "baseball diamond"),
    ("HerbaceousVegetation", "herbaceous vegetation"), ("parkinglot", "parkinglot"),
    ("river-bank", "river bank"), ("Industrial", "industrial")])
def test_folder_names_become_class_words(folder, text):
    assert class_text(folder) == text


def test_unreadable_images_are_counted_and_bad_folders_are_one_line_errors(labelled, tiny, tmp_path):
    model, tokenizer = tiny
    root = tmp_path / "set"
    for cls in sorted(p.name for p in labelled.iterdir() if p.is_dir())[:3]:
        (root / cls).mkdir(parents=True)
        for f in sorted((labelled / cls).iterdir())[:2]:
            shutil.copy(f, root / cls / f.name)
    (root / "empty_class").mkdir()
    (next(root.iterdir()) / "broken.png").write_bytes(b"\x89PNG not really")
    result = zeroshot_folder(model, root, tokenizer=tokenizer, templates=TEMPLATES)
    assert result["skipped"] == {"unreadable_image": 1}
    assert result["num_images"] == 6 and result["num_classes"] == 3 and "empty_class" not in result["classes"]
    with pytest.raises(ValueError, match="is not a folder"):
        scan_folder(tmp_path / "nowhere")
    only = tmp_path / "one"
    shutil.copytree(root / next(iter(result["classes"])), only / "a")
    with pytest.raises(ValueError, match="at least 2 class subfolders"):
        scan_folder(only)


def test_evaluate_cli_writes_json_and_confusion_matrix(trained_run, labelled, tmp_path, capsys):
    run, _ = trained_run  # the trained adapter at <train.output>/peft_adapter, as training.evaluate loads it
    out = tmp_path / "zs"
    code = evaluate_main(["--config", str(TINY_CONFIG), "--output", str(run), "--zeroshot", str(labelled),
                          "--zeroshot-out", str(out), "eval.batch_size=32"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "zeroshot.json").read_text())
    assert printed["top1"] == saved["top1"] and printed["num_classes"] == 10
    assert (out / "confusion_matrix.png").is_file() and saved["confusion_png"] == str(out / "confusion_matrix.png")
    assert evaluate_main(["--config", str(TINY_CONFIG), "--output", str(run), "--zeroshot", str(tmp_path / "no")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    # no adapter where the config points: an error, never a silent evaluation of the base model
    assert evaluate_main(["--config", str(TINY_CONFIG), "--output", str(tmp_path), "--zeroshot", str(labelled)]) == 2
    assert str(tmp_path / "peft_adapter") in capsys.readouterr().err
