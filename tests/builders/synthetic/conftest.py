"""Tiny random-weight models for the synthetic stages, saved the way real weights ship.

(The tiny Qwen2-VL, ``tiny_vlm``, comes from ``tests/builders/conftest.py``.)

Each fixture writes files a production run would load (a BasicSR ``.pth`` and ``.safetensors``,
``save_pretrained`` folders, a SAM state dict) and returns the path; the stages load them
through the same code as real weights. Session-scoped: built once per test run.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def _rrdb_state(scale: int, nf: int, nb: int, gc: int = 32) -> dict:
    """A BasicSR RRDBNet state dict (Real-ESRGAN key names) with small random weights."""
    import torch

    g = torch.Generator().manual_seed(scale)

    def conv(cout, cin):
        return {"weight": torch.randn(cout, cin, 3, 3, generator=g) * (1.4 / (cin * 9) ** 0.5),
                "bias": torch.zeros(cout)}

    # Real-ESRGAN x2 pixel-unshuffles its input by 2 and then upsamples x4, as x4 does.
    layers = {"conv_first": conv(nf, 3 * 4 if scale == 2 else 3)}
    for b in range(nb):
        for r in (1, 2, 3):
            for k in range(1, 6):
                layers[f"body.{b}.rdb{r}.conv{k}"] = conv(nf if k == 5 else gc, nf + (k - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(nf, nf)
    layers["conv_last"] = conv(3, nf)
    layers["conv_last"]["bias"] += 0.5  # mid-grey output, so pixels vary with the input
    return {f"{name}.{k}": v for name, p in layers.items() for k, v in p.items()}


@pytest.fixture(scope="session")
def tiny_esrgan(tmp_path_factory) -> dict[str, Path]:
    """``{"x4_pth", "x2_pth", "x4_safetensors"}``: tiny RRDBNets (8 filters, 1 block)."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_esrgan")
    x4, x2 = _rrdb_state(4, 8, 1), _rrdb_state(2, 8, 1)
    torch.save({"params_ema": x4}, d / "tiny_x4.pth")
    torch.save({"params_ema": x2}, d / "tiny_x2.pth")
    save_file(x4, d / "tiny_x4.safetensors")
    return {"x4_pth": d / "tiny_x4.pth", "x2_pth": d / "tiny_x2.pth", "x4_safetensors": d / "tiny_x4.safetensors"}


def make_tiny_grounding_dino(out: Path) -> Path:
    """A random-weight Grounding DINO (Swin backbone, 1-layer BERT, width 32) and its processor.

    The BERT vocabulary keeps the real ids the model treats as special ([CLS] 101, [SEP] 102,
    "." 1012, "?" 1029), so the text masks between phrases are built as for the real model.
    """
    import torch
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    words = ["car", "building", "tree", "road", "house", "river", "a", "an", "the", "parking", "lot", "field",
             "boat", "ship", "pool", "court", "tennis", "water", "roof", "swimming", "storage", "tank"]
    fill = list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + words
    fill += list("!\"#$%&'()*+,-/:;<=>@[\\]^_`{|}~0123456789")
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    while len(vocab) < 1100:
        n = len(vocab)
        vocab.append("." if n == 1012 else "?" if n == 1029 else fill.pop(0) if fill else f"[unused{n}]")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tok)
    cfg = GroundingDinoConfig(
        backbone_config=SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                                   num_heads=[1, 1, 2, 2], window_size=4, out_indices=[2, 3, 4]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=128),
        d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=20, num_feature_levels=3,
        encoder_n_points=2, decoder_n_points=2, max_text_len=64)
    torch.manual_seed(0)
    GroundingDinoForObjectDetection(cfg).save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_grounding_dino(tmp_path_factory) -> Path:
    return make_tiny_grounding_dino(tmp_path_factory.mktemp("tiny_grounding_dino"))


TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],
            "prompt_embed_dim": 32, "image_size": 64, "vit_patch_size": 8, "window_size": 4,
            "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32}


@pytest.fixture(scope="session")
def tiny_sam(tmp_path_factory) -> dict[str, Path]:
    """``{"model": .pth state dict, "arch": architecture JSON}`` of a random-weight SAM (ViT 2 x 32)."""
    import json

    import torch

    from builders.synthetic.stages.segment import ARCH_DEFAULTS, build_sam

    d = tmp_path_factory.mktemp("tiny_sam")
    (d / "sam_tiny.json").write_text(json.dumps(TINY_SAM))
    torch.manual_seed(0)
    torch.save(build_sam({**ARCH_DEFAULTS, **TINY_SAM}).state_dict(), d / "sam_tiny.pth")
    return {"model": d / "sam_tiny.pth", "arch": d / "sam_tiny.json"}


def make_tiny_sd3(out: Path) -> Path:
    """A random-weight SD3 pipeline (1-layer transformer, 2-block VAE with 16 latent channels, two
    1-layer CLIP text encoders with a byte-level CLIP tokenizer, no T5) saved with save_pretrained."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from tokenizers import pre_tokenizers
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)

    def text_encoder(seed):
        torch.manual_seed(seed)
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=77, projection_dim=32, hidden_act="gelu", bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, out_channels=16,
        pos_embed_max_size=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8), layers_per_block=1, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035, sample_size=32)
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=text_encoder(1), tokenizer=tok, text_encoder_2=text_encoder(2), tokenizer_2=tok,
        text_encoder_3=None, tokenizer_3=None).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))
