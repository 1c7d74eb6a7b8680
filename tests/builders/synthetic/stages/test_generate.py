"""Generate: a tiny random-weight SD3 pipeline saved with save_pretrained, three modes on shared weights."""
import numpy as np
import pytest
import torch
from PIL import Image

from builders.synthetic.stages.base import NON_FINITE, Skip
from builders.synthetic.stages.generate import GenerateConfig, GenerateRequest, SD3Generator, paste_through_mask
from builders.synthetic.stages.segment import inpaint_mask
from tests.builders.synthetic.stages.test_base import FakeOOM


def image(seed, size=64):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


def gen_cfg(tiny_sd3, **kw):
    return GenerateConfig(model=str(tiny_sd3), size=32, steps=2, guidance=3.0, max_sequence_length=8, **kw)


@pytest.fixture(scope="module")
def generator(tiny_sd3):
    g = SD3Generator(gen_cfg(tiny_sd3, batch_size=4), device="cpu").load()
    yield g
    g.unload()


def box_mask(size=64):
    m = np.zeros((size, size), dtype=bool)
    m[20:36, 24:44] = True
    return inpaint_mask([m], dilate_px=4, feather_px=2)


def test_three_pipelines_share_one_set_of_weights(generator):
    p = generator.pipes
    assert p["inpaint"].transformer is p["img2img"].transformer is p["text2img"].transformer
    assert p["inpaint"].vae is p["text2img"].vae and p["text2img"].text_encoder_3 is None


def test_modes_sizes_and_same_seed_same_bytes(generator, tiny_sd3):
    reqs = [GenerateRequest(mode="text2img", prompt="a red car on a road", seed=1),
            GenerateRequest(mode="img2img", prompt="in winter, snow", seed=2, image=image(0)),
            GenerateRequest(mode="inpaint", prompt="a swimming pool", seed=3, image=image(1), mask=box_mask())]
    out = generator(reqs)
    assert [o.size for o in out] == [(32, 32), (64, 64), (64, 64)] and all(o.mode == "RGB" for o in out)
    again = SD3Generator(gen_cfg(tiny_sd3, batch_size=4), device="cpu")(reqs)  # a fresh load
    assert [o.tobytes() for o in out] == [o.tobytes() for o in again]
    other = generator([GenerateRequest(mode="text2img", prompt="a red car on a road", seed=99)])[0]
    assert other.tobytes() != out[0].tobytes()


def test_inpainting_changes_pixels_only_inside_the_dilated_mask(generator):
    src, mask = image(4), box_mask()
    out = np.asarray(generator([GenerateRequest(mode="inpaint", prompt="a car", seed=5, image=src, mask=mask)])[0])
    a, x = np.asarray(mask), np.asarray(src)
    assert np.array_equal(out[a == 0], x[a == 0]), "outside the mask: exactly the input"
    assert (out[a == 255] != x[a == 255]).any(axis=-1).mean() > 0.5, "inside: repainted"


def test_resolve_fills_defaults_and_checks_requests(tiny_sd3):
    cfg = gen_cfg(tiny_sd3)
    r = GenerateRequest(mode="inpaint", prompt="p", seed=0, image=image(0), mask=box_mask()).resolve(cfg)
    assert (r.strength, r.steps, r.guidance) == (cfg.inpaint_strength, 2, 3.0)
    assert r.params()["mode"] == "inpaint" and "image" not in r.params()
    with pytest.raises(ValueError, match="needs a mask"):
        GenerateRequest(mode="inpaint", prompt="p", seed=0, image=image(0)).resolve(cfg)
    with pytest.raises(ValueError, match="'outpaint'"):
        GenerateRequest(mode="outpaint", prompt="p", seed=0).resolve(cfg)


def test_bad_request_skips_only_itself_and_oom_halves(generator):
    good = [GenerateRequest(mode="text2img", prompt="a house", seed=s) for s in (7, 8)]
    bad = GenerateRequest(mode="img2img", prompt="p", seed=0, image=image(0, 40))  # 40 px: not a multiple of 16
    out = generator([good[0], bad, good[1]])
    assert out[1].reason == "error: ValueError" and "multiples of 16" in out[1].detail
    alone = [generator([g])[0] for g in good]
    for o, a in zip((out[0], out[2]), alone):
        assert np.abs(np.asarray(o, int) - np.asarray(a, int)).max() <= 2  # seed decides, not the batch
    real = generator._batch
    generator._batch = FakeOOM(real, limit=1)
    try:
        halved = generator(good)
    finally:
        generator._batch = real
    assert generator._batch == real and [h.tobytes() for h in halved] == [a.tobytes() for a in alone]


def test_non_finite_output_is_skipped(tiny_sd3):
    g = SD3Generator(gen_cfg(tiny_sd3), device="cpu").load()
    with torch.no_grad():
        g.pipes["text2img"].transformer.proj_out.bias.fill_(float("nan"))
    assert g([GenerateRequest(mode="text2img", prompt="x", seed=0)]) == [Skip(NON_FINITE)]


def test_paste_through_mask_blends_by_alpha():
    gen, src = Image.new("RGB", (4, 1), (200, 0, 0)), Image.new("RGB", (4, 1), (0, 0, 100))
    mask = Image.fromarray(np.array([[0, 255, 128, 0]], dtype=np.uint8), "L")
    assert np.asarray(paste_through_mask(gen, src, mask))[0].tolist() == \
        [[0, 0, 100], [200, 0, 0], [100, 0, 50], [0, 0, 100]]
