"""The work folder's background writer: a stage is marked done only after its images are on disk."""
from __future__ import annotations

import pytest
from PIL import Image

from builders.synthetic import work as work_mod
from builders.synthetic.work import ChunkWork, drain


def test_images_written_in_the_background_are_there_once_the_stage_is_done(tmp_path):
    w = ChunkWork(tmp_path / "chunk-0000")
    imgs = {f"k{i}": Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(4)}
    for k, im in imgs.items():
        w.save_image("upscale", k, im)
    w.write("upscale", {k: None for k in imgs})
    assert w.done("upscale")  # waits for the chunk's writes
    for k, im in imgs.items():
        assert w.load_image("upscale", k).tobytes() == im.tobytes()
    assert not list(tmp_path.rglob("*.tmp*"))


def test_a_failed_image_write_leaves_the_stage_undone(tmp_path, monkeypatch):
    real_save = work_mod._save_png

    def flaky(path, img):
        if path.stem == "bad":
            raise OSError("disk full")
        real_save(path, img)

    monkeypatch.setattr(work_mod, "_save_png", flaky)
    w = ChunkWork(tmp_path / "chunk-0000")
    w.save_image("upscale", "good", Image.new("RGB", (8, 8)))
    w.save_image("upscale", "bad", Image.new("RGB", (8, 8)))
    w.write("upscale", {"good": None, "bad": None})
    with pytest.raises(OSError, match="disk full"):
        drain()
    assert not (tmp_path / "chunk-0000" / "upscale.json").exists()
    assert not w.done("upscale")  # a rerun runs the stage again


def test_an_images_masks_round_trip_through_one_png(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    masks = [rng.random((12, 20)) > 0.5 for _ in range(3)] + [np.zeros((12, 20), bool)]
    w = ChunkWork(tmp_path / "chunk-0000")
    w.save_masks("k0", masks)
    back = w.load_masks("k0", 4)
    assert back.shape == (4, 12, 20) and back.dtype == bool
    assert all((b == m).all() for b, m in zip(back, masks))
    assert [p.name for p in (tmp_path / "chunk-0000" / "segment").iterdir()] == ["k0.png"]
    with pytest.raises(ValueError, match="48 rows, not 5 masks"):
        w.load_masks("k0", 5)


def test_masks_in_the_old_one_file_per_box_layout_are_a_clear_error(tmp_path):
    w = ChunkWork(tmp_path / "chunk-0000")
    for i in range(2):
        w.save_image("segment", f"k0-{i}", Image.new("L", (8, 8)))
    drain()
    with pytest.raises(FileNotFoundError, match=r"one file per box; rerun with stages=\[segment\]"):
        w.load_masks("k0", 2)
