"""Generate: a tiny random-weight SD3 pipeline saved with save_pretrained, three modes on shared weights."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from builders.synthetic.stages.base import NON_FINITE, Skip
from builders.synthetic.stages.generate import (
    GenerateConfig,
    GenerateRequest,
    SD3Generator,
    clip_token_count,
    fit_prompt,
    paste_through_mask,
)
from builders.synthetic.stages.segment import inpaint_mask
from tests.common.oom import FakeOOM


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


def _uint8(a):
    return Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def _pipe_kwargs(req, **kw):
    """The pipeline arguments of one request, written out here (not taken from the stage)."""
    out = dict(prompt=[req.prompt], negative_prompt=[req.negative_prompt], height=64, width=64,
               num_inference_steps=2, guidance_scale=3.0, max_sequence_length=8,
               generator=[torch.Generator("cpu").manual_seed(req.seed)], **kw)
    if req.image is not None:
        out.update(image=[req.image], strength=req.strength)
    if req.mask is not None:
        out["mask_image"] = [req.mask]
    return out


def test_inpaint_is_decoded_with_the_vae_shift(tiny_sd3):
    """diffusers 0.42.1's inpaint pipeline decodes lat/scale without + shift; the stage must not."""
    g = SD3Generator(gen_cfg(tiny_sd3), device="cpu").load()
    vae = g.pipes["inpaint"].vae
    vae.register_to_config(shift_factor=1.5)  # SD3's is 0.0609: large here so the offset shows
    src, mask = image(6), box_mask()
    req = GenerateRequest(mode="inpaint", prompt="a car", seed=11, image=src, mask=mask, strength=0.95)
    out = np.asarray(g([req])[0])
    with torch.inference_mode():
        lat = g.pipes["inpaint"](**_pipe_kwargs(req, output_type="latent")).images
        scaled = lat / vae.config.scaling_factor

        def decoded(z):
            x = vae.decode(z, return_dict=False)[0]
            return g.pipes["inpaint"].image_processor.postprocess(x, output_type="np")[0]

        right, wrong = decoded(scaled + 1.5), decoded(scaled)
    inside = np.asarray(mask) == 255
    want = np.asarray(paste_through_mask(_uint8(right), src, mask))
    unshifted = np.asarray(paste_through_mask(_uint8(wrong), src, mask))
    off_right = int(np.abs(out.astype(int) - want).max())
    off_unshifted = float(np.abs(out[inside].astype(int) - unshifted[inside]).mean())
    assert off_right <= 1, f"stage output is {off_right} levels from decode(lat/scale + shift)"
    assert off_unshifted > 5, "the stage's output should differ from the bug's decode(lat/scale)"


@pytest.mark.parametrize("mode", ["text2img", "img2img"])
def test_other_modes_decode_as_their_pipelines_do(generator, mode):
    req = GenerateRequest(mode=mode, prompt="a road", seed=12, image=None if mode == "text2img" else image(7),
                          strength=0.55, size=64)
    out = np.asarray(generator([req])[0])
    with torch.inference_mode():
        own = generator.pipes[mode](**_pipe_kwargs(req, output_type="np")).images[0]
    assert int(np.abs(out.astype(int) - np.asarray(_uint8(own), int)).max()) <= 1


# An RSICD-style caption behind the style words: far past CLIP's 77 tokens with the tiny
# character-level tokenizer (one token per character), as real captions pass it with the real one.
LONG = ("aerial top-down photograph, high detail, many buildings and some green trees are around a "
        "playground with a basketball field, several cars are parked beside the road")


class Records(logging.Handler):
    """Collects the records of the ``diffusers`` and ``transformers`` loggers (they do not
    propagate to the root)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_long_prompt_is_cut_after_a_whole_word_within_clip_tokens(generator):
    tok = generator.pipes["text2img"].tokenizer
    assert clip_token_count(tok, LONG) > 77
    fitted, cut = generator.fit_prompt(LONG)
    assert cut and LONG.startswith(fitted) and clip_token_count(tok, fitted) <= 77
    assert LONG[len(fitted)] in " ,", f"cut inside a word: {fitted!r}"
    assert fitted.startswith("aerial top-down photograph, high detail, many buildings")
    assert generator.fit_prompt("a red car on a road") == ("a red car on a road", False)


def test_fit_prompt_prefers_a_clause_end_that_keeps_most_words(generator):
    tok = generator.pipes["text2img"].tokenizer  # one token per character, "," one more
    text = "aaaa bbbb, cccc dddd eeee ffff"
    budget = clip_token_count(tok, "aaaa bbbb, cccc dddd")  # four words fit, the clause holds two
    assert fit_prompt(text, [tok], budget) == ("aaaa bbbb", True)
    late = "aaaa, bbbb cccc dddd eeee ffff"
    assert fit_prompt(late, [tok], clip_token_count(tok, "aaaa, bbbb cccc dddd")) == ("aaaa, bbbb cccc dddd", True)


def test_long_prompt_runs_without_the_pipelines_per_batch_warning(generator):
    records, loggers = Records(), [logging.getLogger(n) for n in ("diffusers", "transformers")]
    for lg in loggers:
        lg.addHandler(records)
    try:
        out = generator([GenerateRequest(mode="text2img", prompt=LONG, seed=s) for s in (1, 2)])
    finally:
        for lg in loggers:
            lg.removeHandler(records)
    assert all(o.size == (32, 32) for o in out)
    assert not [m for m in records.messages if "truncated" in m or "longer than" in m], records.messages
    # what CLIP read is the whole-word cut, not the pipeline's mid-word truncation
    fitted = generator.fit_prompt(LONG)[0]
    cut = generator([GenerateRequest(mode="text2img", prompt=fitted, seed=s) for s in (1, 2)])
    assert [c.tobytes() for c in cut] == [o.tobytes() for o in out]
