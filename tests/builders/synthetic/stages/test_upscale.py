"""Upscale: tiny RealESRGAN RRDBNets (BasicSR params_ema .pth and .safetensors) through spandrel."""
import numpy as np
import pytest
import torch
from PIL import Image

from builders.synthetic.stages.base import NON_FINITE, Skip
from builders.synthetic.stages.upscale import (
    UpscaleConfig,
    Upscaler,
    load_upscaler,
    read_state_dict,
    resize_square,
    tile_windows,
)
from tests.builders.synthetic.conftest import _rrdb_state


def tiles(n=3, h=24, w=40):
    return [Image.fromarray(np.random.RandomState(i).randint(0, 256, (h, w, 3), dtype=np.uint8))
            for i in range(n)]


@pytest.mark.parametrize("name,scale", [("x4_pth", 4), ("x2_pth", 2), ("x4_safetensors", 4)])
def test_weights_load_with_detected_scale(tiny_esrgan, name, scale):
    desc = load_upscaler(str(tiny_esrgan[name]))
    assert desc.architecture.id == "ESRGAN" and desc.scale == scale


def test_output_is_size_square_rgb_and_rerun_identical(tiny_esrgan):
    cfg = UpscaleConfig(model=str(tiny_esrgan["x4_pth"]), size=96, tile=16, tile_overlap=4, batch_size=2)
    stage = Upscaler(cfg, device="cpu")
    out = stage(tiles())
    assert [(o.size, o.mode) for o in out] == [((96, 96), "RGB")] * 3
    assert np.asarray(out[0]).std() > 5, "the model output must depend on the input"
    again = Upscaler(cfg, device="cpu")(tiles())
    assert [o.tobytes() for o in out] == [o.tobytes() for o in again]


def test_tiled_equals_whole_image_when_overlap_covers_receptive_field(tiny_esrgan):
    whole = Upscaler(UpscaleConfig(model=str(tiny_esrgan["x2_pth"]), size=16, tile=0), device="cpu").load()
    tiled = Upscaler(UpscaleConfig(model=str(tiny_esrgan["x2_pth"]), size=16, tile=16, tile_overlap=40),
                     device="cpu").load()
    a, b = whole._upscale(tiles(1))[0], tiled._upscale(tiles(1))[0]
    assert a.size == (80, 48)  # 40 x 24 at x2, before the resize
    assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_tile_cores_partition_the_image():
    cover = np.zeros((50, 70), dtype=int)
    for (wy0, _wy1, _wx0, wx1), (y0, y1, x0, x1) in tile_windows(50, 70, 16, 4):
        cover[y0:y1, x0:x1] += 1
        assert wy0 == max(0, y0 - 4) and wx1 == min(70, x1 + 4)
    assert (cover == 1).all()


def test_large_input_is_only_resized(tiny_esrgan):
    big = tiles(1, 160, 200)[0]
    out = Upscaler(UpscaleConfig(model=str(tiny_esrgan["x4_pth"]), size=128), device="cpu")([big])[0]
    assert out.tobytes() == resize_square(big, 128).tobytes()


def test_bad_image_skips_only_that_image(tiny_esrgan):
    stage = Upscaler(UpscaleConfig(model=str(tiny_esrgan["x4_pth"]), size=64, batch_size=3), device="cpu")
    out = stage([tiles(1)[0], "not an image", tiles(1)[0]])
    assert out[1].reason == "error: AttributeError"
    assert out[0].size == out[2].size == (64, 64)


def test_nan_weights_give_non_finite_skip(tmp_path):
    state = _rrdb_state(4, 8, 1)
    state["conv_last.bias"][:] = float("nan")
    torch.save({"params_ema": state}, tmp_path / "nan.pth")
    out = Upscaler(UpscaleConfig(model=str(tmp_path / "nan.pth"), size=64), device="cpu")(tiles(1))
    assert out == [Skip(NON_FINITE)]


class WholeModel:
    """A checkpoint saved as a pickled object (``torch.save(model)``), not as a state dict."""

    def __init__(self, state):
        self.params_ema = state


def test_pickled_object_checkpoint_is_a_one_line_error_naming_file_and_fix(tmp_path):
    torch.save(WholeModel(_rrdb_state(4, 8, 1)), tmp_path / "whole_model.pth")
    with pytest.raises(ValueError) as err:
        Upscaler(UpscaleConfig(model=str(tmp_path / "whole_model.pth"), size=64), device="cpu").load()
    msg = str(err.value)
    assert "\n" not in msg and "whole_model.pth" in msg and "not a plain state dict" in msg
    assert "WholeModel" in msg and ".safetensors" in msg and "state_dict()" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback


def test_pickled_code_is_refused_not_run(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"params_ema": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth.*not a plain state dict.*pickled print"):
        load_upscaler(str(tmp_path / "evil.pth"))
    assert "unpickled!" not in capsys.readouterr().out


def test_config_errors_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16.*1000"):
        UpscaleConfig(size=1000).validate()
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.pth or \.safetensors.*w\.bin"):
        read_state_dict(str(tmp_path / "w.bin"))
