"""Fixtures for builder tests: tiny demo trees, caption files, tiny random-weight VLMs (Qwen2-VL, LLaVA)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builders.demo_images import make_demo_tree

# Tests never reach the hub: a lookup would only time out here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

UCM = Path(os.environ.get("UCM_SAMPLE", Path(__file__).resolve().parents[3] / "shared" / "data" / "ucm_sample"))


@pytest.fixture
def demo_tree(tmp_path) -> Path:
    """5 classes x 2 tiles of 48 px."""
    return make_demo_tree(tmp_path / "demo", per_class=2, size=48, seed=1)


@pytest.fixture
def caption_jsonl(demo_tree) -> Path:
    """JSONL over the demo tree: captions with positions, one held-out val image per class."""
    lines = []
    for p in sorted(demo_tree.rglob("*.png")):
        rel = p.relative_to(demo_tree).as_posix()
        cls = p.parent.name
        lines.append({"image": rel, "captions": [f"{cls} tile with the darkest part on the left",
                                                 f"an aerial image of {cls}"],
                      "class": cls, "split": "val" if p.stem.endswith("001") else "train"})
    path = demo_tree / "captions.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def make_tiny_qwen2vl(out: Path) -> Path:
    """Save a random-weight Qwen2-VL (1 layer, width 32) with a real byte-level tokenizer and
    image processor, all built offline, so loading and generation run the production path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2,
                               temporal_patch_size=2)
    proc = Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, bos_token_id=None,
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> Path:
    return make_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl"))


def make_tiny_llava(out: Path) -> Path:
    """Save a random-weight LLaVA (CLIP vision tower, 1-layer Llama, width 32): a non-Qwen
    ``AutoModelForImageTextToText`` whose CLIP image processor resizes its shortest edge to 32 px
    and centre-crops 32 x 32, with a chat template, all built offline."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    template = ("{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %} ASSISTANT:")
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1, chat_template=template, image_token="<image>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=8,
                                       projection_dim=32),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                max_position_embeddings=256, bos_token_id=ids["<s>"],
                                eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]),
        image_token_id=ids["<image>"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    return make_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture
def script_vlm(monkeypatch):
    """``script_vlm(captioner, answers)``: the loaded VLM's ``generate`` writes ``answers`` (in
    order, across batches) after each prompt, tokenised by its own tokenizer, as trained weights
    would answer; random weights cannot. Processor, decoding and parsing stay the real path."""
    def install(captioner, answers: list[str]) -> None:
        import torch

        tok = captioner.processor.tokenizer
        todo = list(answers)

        def generate(input_ids, **_):
            ids = [tok(todo.pop(0), add_special_tokens=False)["input_ids"] for _ in input_ids]
            width = max(map(len, ids))
            tail = torch.tensor([a + [tok.pad_token_id] * (width - len(a)) for a in ids],
                                dtype=input_ids.dtype)
            return torch.cat([input_ids, tail], dim=1)

        monkeypatch.setattr(captioner.model, "generate", generate)
    return install
