"""Retrieval metrics (every caption counts) and the held-out set reader."""

from __future__ import annotations

import pytest
import torch

from training.evaluate import caption_relevance, load_eval_set, retrieval_metrics


def test_retrieval_counts_any_caption_of_the_image():
    img = torch.eye(3)
    # captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2 (but looks like image 0)
    txt = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0.6, 0.8, 0], [0.7, 0, 0.1]])
    owner = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(img, txt, owner, ks=(1, 2))
    assert m["i2t_R@1"] == 100.0  # each image's best caption is one of its own
    assert m["t2i_R@1"] == 75.0  # caption 3 retrieves image 0 first
    assert m["t2i_R@2"] == 100.0 and m["i2t_R@2"] == 100.0
    assert m["mean_recall"] == pytest.approx((100 + 75 + 100 + 100) / 4)


def test_identical_caption_text_counts_for_every_image_that_holds_it():
    # images 0 and 1 share the template caption "beach"; the model ranks image 1 above image 0 for it
    captions = [["beach"], ["beach"], ["forest"]]
    rel = caption_relevance(captions)
    assert rel.tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    img = torch.eye(3)
    txt = torch.tensor([[0.1, 1.0, 0], [0.1, 1.0, 0], [0, 0, 1.0]])
    owner = torch.tensor([0, 1, 2])
    strict = retrieval_metrics(img, txt, owner, ks=(1,))
    shared = retrieval_metrics(img, txt, owner, ks=(1,), relevant=rel)
    assert strict["t2i_R@1"] == pytest.approx(200 / 3)  # caption 0 finds image 1 first: a miss by owner
    assert shared["t2i_R@1"] == 100.0 and shared["i2t_R@1"] == 100.0
    # a model that confuses the classes still misses with shared captions
    wrong = retrieval_metrics(img, txt[[2, 2, 0]], owner, ks=(1,), relevant=rel)
    assert wrong["t2i_R@1"] == 0.0


def test_load_eval_set_reads_all_captions(shard_dirs):
    data = load_eval_set([str(shard_dirs["val"])], size=32)
    assert data.images.shape == (8, 3, 32, 32) and data.images.dtype == torch.uint8
    assert all(len(c) == 2 for c in data.captions)
    assert set(data.classes) == {"airport", "forest", "river", "beach"}
    with pytest.raises(FileNotFoundError):
        load_eval_set([str(shard_dirs["val"] / "nope-000000.tar")], size=32)
