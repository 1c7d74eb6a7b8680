"""VLM captions from tiny random-weight VLMs saved locally (real load + generate path): chat
answers cleaned into captions, the Qwen2-VL pixel budget set on that family only."""
import pytest
from PIL import Image

from builders.common.vlm_captions import VLMCaptioner, clean_caption, is_qwen_vl
from builders.real.build import build_real
from builders.real.config import RealBuildConfig, VLMConfig
from wds_tools.config import load_config
from wds_tools.reader import decode_sample, iter_shard


def test_captioner_batches_and_returns_one_caption_per_image(tiny_vlm):
    from builders.common.vlm_captions import get_captioner

    cfg = VLMConfig(model=str(tiny_vlm), batch_size=2, max_new_tokens=6, max_pixels=112 * 112,
                    min_pixels=56 * 56)
    cap = get_captioner(cfg)
    assert get_captioner(cfg) is cap  # loaded once per process
    assert cap.processor.image_processor.size["longest_edge"] == 112 * 112
    imgs = [Image.new("RGB", (64 + 16 * i, 64), (40 * i, 90, 60)) for i in range(3)]
    out = cap.caption(imgs)
    assert len(out) == 3
    assert all(c is None or (isinstance(c, str) and c.isprintable()) for c in out)
    assert any(out), "random weights still generate some tokens"


def test_build_records_vlm_caption_source(demo_tree, tiny_vlm, tmp_path):
    out = tmp_path / "out"
    cfg = load_config(RealBuildConfig, None, [
        f"input={demo_tree}", f"output={out}", "size=32", "images_per_shard=10", "workers=1",
        "augment.per_image=1", "zoom.enabled=false", f"vlm.model={tiny_vlm}", "vlm.max_new_tokens=6",
        "vlm.batch_size=4", f"vlm.max_pixels={112 * 112}", f"vlm.min_pixels={56 * 56}"])
    summary = build_real(cfg, progress=False)
    samples = [decode_sample(s) for s in iter_shard(str(out / "train" / "real-train-000000.tar"))]
    originals = [s for s in samples if s["json"]["kind"] == "original"]
    assert len(originals) == 10
    with_vlm = [s for s in originals if "vlm" in s["json"]["caption_sources"]]
    assert with_vlm, "VLM captions must be recorded"
    for s in with_vlm:
        assert s["json"]["caption_sources"] == ["class_template", "vlm", "m2b_b2c"]
    assert summary["splits"]["train"]["by_caption_source"].get("vlm", 0) >= len(with_vlm)


# Qwen2-VL-style chat answers: what a caption prompt gets back besides the plain sentence.
CHAT_ANSWERS = [
    ("**Caption:** A dense residential area with red-roofed houses.",
     "A dense residential area with red-roofed houses."),
    ("### Caption\nAn airport with two airplanes on the apron.",
     "An airport with two airplanes on the apron."),
    ("Caption: A harbor with *many* boats.\n\nObjects:\n- boats\n- a pier",
     "A harbor with many boats."),
    ("A river crosses   farmland,\nwith a bridge.", "A river crosses farmland, with a bridge."),
    ("1. **A parking lot** next to a road.", "A parking lot next to a road."),
    ("", None),
    ("**Caption:**\n", None),
    ("  \n - \n", None),
]


@pytest.mark.parametrize("answer,caption", CHAT_ANSWERS)
def test_chat_answers_become_plain_captions(answer, caption):
    assert clean_caption(answer) == caption


def test_captioner_keeps_the_raw_answer_and_cleans_the_caption(tiny_vlm, script_vlm):
    cfg = VLMConfig(model=str(tiny_vlm), batch_size=2, max_new_tokens=6, max_pixels=112 * 112,
                    min_pixels=56 * 56)
    cap = VLMCaptioner(cfg)
    imgs = [Image.new("RGB", (64, 64), (40 * i, 90, 60)) for i in range(len(CHAT_ANSWERS))]
    answers = [a for a, _ in CHAT_ANSWERS]
    script_vlm(cap, answers * 2)
    assert cap.answers(imgs) == [a.strip() for a in answers]   # line breaks kept for a parser
    assert cap.caption(imgs) == [c for _, c in CHAT_ANSWERS]


def _pixels(processor, image):
    return processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]


def test_pixel_budget_is_set_on_qwen2vl_only(tiny_vlm, tiny_llava):
    from transformers import AutoProcessor

    budget = dict(max_pixels=168 * 168, min_pixels=28 * 28, max_new_tokens=4, batch_size=2)
    qwen = VLMCaptioner(VLMConfig(model=str(tiny_vlm), **budget)).processor.image_processor
    assert (qwen.size["shortest_edge"], qwen.size["longest_edge"]) == (28 * 28, 168 * 168)

    llava = VLMCaptioner(VLMConfig(model=str(tiny_llava), **budget))
    stock = AutoProcessor.from_pretrained(tiny_llava)
    ip = llava.processor.image_processor
    assert (ip.size["shortest_edge"], ip.crop_size["height"]) == (32, 32)
    # left half red, right half blue: the stock 32 px resize + crop sees both halves
    image = Image.new("RGB", (96, 64), (255, 0, 0))
    image.paste((0, 0, 255), (48, 0, 96, 64))
    got, want = _pixels(llava.processor, image), _pixels(stock, image)
    assert got.shape == want.shape and bool((got == want).all())
    assert got[0, 0].std() > 0.5   # red and blue both in view, not a one-colour centre crop
    assert len(llava.caption([image, image])) == 2   # the full path runs on the non-Qwen model


@pytest.mark.parametrize("model_type,qwen", [
    ("qwen2_vl", True), ("qwen2_5_vl", True), ("qwen3_vl", True), ("qwen3_vl_moe", True),
    ("llava", False), ("paligemma", False), ("idefics3", False), ("qwen2", False)])
def test_qwen_family_is_read_from_the_model_type(model_type, qwen):
    assert is_qwen_vl(model_type) is qwen
