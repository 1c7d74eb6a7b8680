"""Preprocessing on uint8 tensors matches open_clip's own eval transform on PIL images."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
from PIL import Image, ImageFilter

from clip_models.preprocess import (
    image_norm,
    image_size,
    norm_tensors,
    normalize,
    preprocess_of,
    resize_center_crop,
    resized_crop,
)


def _photo(h: int = 90, w: int = 120) -> np.ndarray:
    noise = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2)))


def test_model_preprocess_is_read_from_open_clip(tiny):
    p = preprocess_of(tiny)
    assert (p.size, p.interpolation) == (64, "bicubic") and image_size(tiny) == 64
    assert image_norm(tiny) == (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))


def test_uint8_eval_path_matches_open_clips_transform(tiny):
    arr = _photo()
    want = open_clip.image_transform(64, is_train=False)(Image.fromarray(arr))
    img = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    got = normalize(resize_center_crop(img, 64)[None], *norm_tensors(tiny))[0]
    one_level = 1 / (255 * min(open_clip.OPENAI_DATASET_STD))
    # torchvision's and PIL's bicubic agree to within one uint8 level (bilinear is off by two here)
    assert (got - want).abs().max() <= 1.1 * one_level
    assert resize_center_crop(img, 64).dtype == torch.uint8


def test_resized_crop_is_bicubic():
    img = torch.from_numpy(_photo(64, 64).copy()).permute(2, 0, 1)
    out = resized_crop(img, top=8, left=4, height=40, width=48, size=32)
    want = torch.from_numpy(np.array(Image.fromarray(_photo(64, 64)).crop((4, 8, 52, 48))
                                       .resize((32, 32), Image.BICUBIC))).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and (out.int() - want.int()).abs().max() <= 2


def test_uint8_decoder_behind_the_readers_pixel_limit():
    import io

    from clip_models.preprocess import decode_uint8
    from wds_tools.reader import SkipLog, decode_sample

    buf = io.BytesIO()
    Image.fromarray(_photo(20, 30)).save(buf, format="PNG")
    img = decode_uint8(buf.getvalue())
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 20, 30)
    assert torch.equal(img.permute(1, 2, 0), torch.from_numpy(_photo(20, 30).copy()))
    skips = SkipLog()
    assert decode_sample({"__key__": "big", "png": buf.getvalue()}, image=decode_uint8, max_pixels=599,
                         skips=skips) is None
    assert skips.as_dict() == {"decompression_bomb": 1}
