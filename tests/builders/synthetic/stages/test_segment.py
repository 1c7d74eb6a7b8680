"""Segment: a tiny random-weight SAM (state dict + architecture JSON); inpainting masks."""
import numpy as np
import pytest
import torch
from PIL import Image

from builders.synthetic.stages.segment import SegmentConfig, Segmenter, arch_spec, clip_mask, inpaint_mask


def image(seed, h=80, w=120):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


BOXES = [[0.1, 0.1, 0.5, 0.5], {"box": [0.5, 0.2, 0.9, 0.9], "label": "car"}]


def segmenter(tiny_sam, **kw):
    return Segmenter(SegmentConfig(model=str(tiny_sam["model"]), arch=str(tiny_sam["arch"]), **kw), device="cpu")


def test_one_mask_per_box_at_image_size_inside_its_box(tiny_sam):
    raw = segmenter(tiny_sam, clip_to_box=False)([(image(0), BOXES)])[0]
    out = segmenter(tiny_sam, box_margin=0.1)([(image(0), BOXES), (image(1), [])])
    assert out[1] == []
    masks = out[0]
    assert len(masks) == 2 and all(m.shape == (80, 120) and m.dtype == bool for m in masks)
    for m, r, b in zip(masks, raw, BOXES):
        x0, y0, x1, y1 = b["box"] if isinstance(b, dict) else b
        grown = np.zeros_like(m)
        mx, my = (x1 - x0) * 0.1 * 120, (y1 - y0) * 0.1 * 80
        grown[int(y0 * 80 - my):int(np.ceil(y1 * 80 + my)), int(x0 * 120 - mx):int(np.ceil(x1 * 120 + mx))] = True
        assert m.any() and not (m & ~grown).any(), "mask pixels lie inside their (grown) box"
        assert np.array_equal(m, r & grown), "clipping only removes what lies outside the box"


def test_rerun_is_identical_and_batching_does_not_change_masks(tiny_sam):
    items = [(image(0), BOXES), (image(2, 64, 64), BOXES[:1])]
    a = segmenter(tiny_sam, batch_size=2)(items)
    b = segmenter(tiny_sam, batch_size=1)(items)
    for ma, mb in zip(a, b):
        assert all(np.array_equal(x, y) for x, y in zip(ma, mb))


def test_bad_box_skips_only_its_image(tiny_sam):
    out = segmenter(tiny_sam, batch_size=3)([(image(0), BOXES), (image(1), [[0.1, 0.2]]), (image(2), BOXES)])
    assert out[1].reason == "error: ValueError" and "[0.1, 0.2]" in out[1].detail
    assert len(out[0]) == len(out[2]) == 2


def test_inpaint_mask_dilates_feathers_and_stays_in_the_dilated_region():
    m = np.zeros((40, 40), dtype=bool)
    m[15:25, 15:25] = True
    alpha = np.asarray(inpaint_mask([m], dilate_px=6, feather_px=3))
    yy, xx = np.mgrid[:40, :40]
    dist = np.hypot(np.maximum(0, np.maximum(15 - yy, yy - 24)), np.maximum(0, np.maximum(15 - xx, xx - 24)))
    assert (alpha[m] == 255).all() and (alpha[dist <= 3] == 255).all()
    assert (alpha[dist > 6] == 0).all() and (alpha[(dist > 3) & (dist <= 6)] > 0).all()
    assert 0 < alpha[20, 30] < 255  # 6 px out: the ramp
    hard = np.asarray(inpaint_mask(m, dilate_px=2, feather_px=0))
    assert set(np.unique(hard)) == {0, 255} and hard.sum() // 255 == (dist <= 2).sum()
    assert not np.asarray(inpaint_mask([np.zeros((4, 4), bool)], dilate_px=3, feather_px=1)).any()


def test_clip_mask_and_arch_checks(tiny_sam):
    full = np.ones((10, 10), dtype=bool)
    assert clip_mask(full, [2, 3, 6, 8], 0.0).sum() == 4 * 5
    assert arch_spec("vit_b")["encoder_depth"] == 12 and arch_spec(str(tiny_sam["arch"]))["image_size"] == 64
    with pytest.raises(ValueError, match="'vit_x'"):
        SegmentConfig(arch="vit_x").validate()


def test_weights_are_never_unpickled(tmp_path, tiny_sam):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"x": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="Weights only load failed"):
        segmenter({"model": tmp_path / "evil.pth", "arch": tiny_sam["arch"]}).load()
