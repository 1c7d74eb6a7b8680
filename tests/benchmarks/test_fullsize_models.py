"""The full-size random-weight models: tokenizers built from local files keep the real ids, and
(by hand, ``FULLSIZE_CPU=1``) every production architecture saves, loads through its stage and runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks.gpu import fullsize_models as fm


def test_clip_tokenizer_matches_open_clips_bpe():
    import open_clip

    tok, ref = fm.clip_tokenizer(), open_clip.get_tokenizer("ViT-B-32")
    for text in ("an aerial view of a swimming pool beside two tennis courts", "Many buildings, some trees."):
        ids = tok(text)["input_ids"]
        assert ids == [i for i in ref([text])[0].tolist() if i][:len(ids)] and ids[-1] == 49407
    assert len(tok) == 49408 and fm.clip_tokenizer(pad_token="!").pad_token_id == 0


def test_bert_vocab_keeps_the_ids_grounding_dino_treats_as_special():
    vocab = fm.bert_uncased_vocab()
    assert len(vocab) == fm.BERT_VOCAB_SIZE == len(set(vocab))
    assert (vocab[0], vocab[100], vocab[101], vocab[102], vocab[1012], vocab[1029]) == \
        ("[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", "?")
    assert {"car", "building", "tree", "road"} <= set(vocab)


def test_qwen2_tokenizer_has_the_real_special_ids():
    tok = fm.qwen2_tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in ("<|endoftext|>", "<|im_end|>", "<|vision_start|>",
                                                      "<|image_pad|>", "<|video_pad|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                   "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    text = "an aerial image of houses"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert max(tok(text + "<|im_end|>")["input_ids"]) < fm.QWEN2_VL_2B_TEXT["vocab_size"]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FULLSIZE_CPU"), reason="by hand: FULLSIZE_CPU=1 (about 17 GB of weights, "
                    "peak RSS near 14 GB, tens of minutes on 2 cores)")
def test_fullsize_architectures_load_through_the_stages_and_run(tmp_path):
    from benchmarks.gpu import fullsize_cpu

    root = Path(os.environ.get("FULLSIZE_ROOT", tmp_path))
    stages = os.environ.get("FULLSIZE_STAGES", ",".join(fullsize_cpu.STAGES))
    assert fullsize_cpu.main(["--root", str(root), "--stages", stages, "--repeats", "1"]) == 0
    results = json.loads((root / "results.json").read_text())["stages"]
    millions = {"upscale": (16, 18), "describe": (2100, 2300), "ground": (165, 180), "segment": (600, 700),
                "generate": (2200, 2300)}  # the real models' parameter counts (SD3.5-M: its transformer)
    for s in stages.split(","):
        lo, hi = millions[s]
        assert lo <= results[s]["params_m"] <= hi, (s, results[s])
        assert not results[s]["output"].startswith("SKIP"), (s, results[s]["output"])
