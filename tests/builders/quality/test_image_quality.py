import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from builders.quality.image_quality import ImageQualityConfig, image_quality_scores
from tests.builders.quality.conftest import texture


def batch(*imgs: Image.Image) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(i.resize((64, 64)))).permute(2, 0, 1) for i in imgs])


def test_black_border_fraction_and_lower_quality():
    s = image_quality_scores(batch(texture(1), texture(1, border=0.25), texture(1, border=0.5)),
                             ImageQualityConfig(size=64))
    frac = s["border_fraction"].tolist()
    assert frac[0] == 0.0
    assert frac[1] == pytest.approx(0.25, abs=0.04) and frac[2] == pytest.approx(0.5, abs=0.04)
    q = s["quality"].tolist()
    assert q[0] > q[1] > q[2]
    # the fill is left out of brightness and contrast, so they barely move
    assert abs(s["brightness"][0] - s["brightness"][1]) < 0.05


def test_rotated_fill_detected_in_corners():
    img = texture(2, size=96).rotate(30, expand=False)  # PIL fills the corners with black
    s = image_quality_scores(batch(img, texture(2, size=96)), ImageQualityConfig(size=64))
    assert 0.05 < s["border_fraction"][0] < 0.4 and s["border_fraction"][1] == 0.0


def test_blur_blank_and_dark():
    sharp = texture(3)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    dark = Image.fromarray((np.array(sharp) * 0.1).astype(np.uint8))
    s = image_quality_scores(batch(sharp, blurred, blank, dark), ImageQualityConfig(size=64))
    assert s["blur"][0] > 4 * s["blur"][1]
    assert s["blank_fraction"][2] == 1.0 and s["quality"][2] == 0.0
    assert s["brightness"][3] < 0.1 and s["quality"][3] < s["quality"][0]


def test_rejects_bad_batch():
    with pytest.raises(ValueError, match="uint8"):
        image_quality_scores(torch.zeros(1, 3, 8, 8), ImageQualityConfig())
    with pytest.raises(ValueError, match="even"):
        image_quality_scores(torch.zeros(1, 3, 9, 9, dtype=torch.uint8), ImageQualityConfig())
