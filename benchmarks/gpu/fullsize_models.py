"""The five synthetic-stage models at their real size, random weights, saved as the real weights ship.

Nothing is downloaded. Each ``save_*`` function builds one production architecture from the
published configuration of the weights ``configs/build/synthetic.yaml`` names, initialises it at
random and writes it where a user's local copy would be, so the stages load it through their own
code exactly as they load a local path:

- ``upscale``: RealESRGAN x4 (RRDBNet, 64 filters, 23 blocks), a BasicSR ``.pth`` whose tensors
  sit under ``params_ema``;
- ``describe``: Qwen2-VL-2B-Instruct, a transformers folder (config, generation config, sharded
  safetensors with their index, processor, tokenizer and chat template);
- ``ground``: Grounding DINO tiny (``GroundingDinoConfig()``'s defaults are that model: Swin-T and
  BERT-base), a transformers folder with processor and tokenizer;
- ``segment``: SAM ViT-H, the ``.pth`` state dict of ``segment_anything``'s ``Sam``;
- ``generate``: SD3.5-Medium (transformer, SD3 VAE, CLIP-L and CLIP-G text encoders), a diffusers
  folder whose ``model_index.json`` names T5 as the real one does, without T5's folders (the stage
  loads with T5 off).

Processor and tokenizer files are laid out as the hub repos have them (``preprocessor_config.json``,
``chat_template.json``, ``vocab.json`` + ``merges.txt`` for SD3's CLIP tokenizers, ``vocab.txt`` for
BERT), not as transformers 5 would save them, so loading takes the path a user's download takes.
Tokenizers are built from files on this machine: SD3's CLIP tokenizers from the CLIP BPE vocabulary
open_clip ships (the same 49,408 tokens and merges); Grounding DINO's BERT WordPiece vocabulary of
the real size with the real special ids ([CLS] 101, [SEP] 102, "." 1012, "?" 1029, which the model
treats as phrase separators) filled with words from that CLIP vocabulary; Qwen2-VL's byte-level
BPE trained here on caption text, padded so its special tokens keep their real ids (``<|im_end|>``
151645, ``<|image_pad|>`` 151655 ...). Token ids therefore fit the real embedding tables and the
special ids the configs name are the real ones; only the splitting of ordinary words differs.
"""
from __future__ import annotations

import contextlib
import gzip
import json
from pathlib import Path

import torch

BF16, FP16 = torch.bfloat16, torch.float16

# stabilityai/stable-diffusion-3.5-medium: transformer/config.json, vae/config.json, text_encoder*/config.json
SD35_MEDIUM_TRANSFORMER = dict(
    sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
    joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD3_VAE = dict(
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5305, sample_size=1024)
CLIP_TEXT = {  # (hidden, layers, heads, activation); both project to their own width
    "text_encoder": (768, 12, 12, "quick_gelu"),     # CLIP ViT-L/14
    "text_encoder_2": (1280, 32, 20, "gelu"),        # OpenCLIP ViT-bigG/14
}
# Qwen/Qwen2-VL-2B-Instruct: config.json
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
    num_key_value_heads=2, max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, tie_word_embeddings=True,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
QWEN2_VL_2B_VISION = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                          spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_FIRST_SPECIAL = 151643  # <|endoftext|>; the others follow in the order above
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BERT_VOCAB_SIZE = 30522

# What each stage's saved weights are called (the file or folder names of the real downloads).
FILES = {"upscale": "RealESRGAN_x4.pth", "describe": "Qwen2-VL-2B-Instruct", "ground": "grounding-dino-tiny",
         "segment": "sam_vit_h_4b8939.pth", "generate": "stable-diffusion-3.5-medium"}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules in ``dtype`` (a 2.5B-parameter model never exists in fp32 first)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary and merges (openai/clip-vit-large-patch14's), from open_clip's BPE file."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = [tuple(m.split()) for m in gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """The CLIP tokenizer SD3 ships (``tokenizer_2`` pads with ``"!"``)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def bert_uncased_vocab() -> list[str]:
    """A WordPiece vocabulary laid out as bert-base-uncased's: specials and ASCII at the real ids."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 994)]
    vocab += [chr(c) for c in range(33, 127) if not "A" <= chr(c) <= "Z"]  # "!" 999 ... "." 1012 ... "~" 1066
    assert vocab[1012] == "." and vocab[1029] == "?" and vocab[101] == "[CLS]"
    seen = set(vocab)
    words, pieces = [], []
    for tok in clip_bpe()[0]:
        word = tok.removesuffix("</w>")
        if word.isascii() and word.isalpha() and word.islower():
            (words if tok.endswith("</w>") else pieces).append(word if tok.endswith("</w>") else "##" + word)
    for w in words + pieces:
        if len(vocab) == BERT_VOCAB_SIZE:
            break
        if w not in seen:
            seen.add(w)
            vocab.append(w)
    return vocab


def qwen2_tokenizer():
    """A byte-level BPE tokenizer with Qwen2's special tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from benchmarks.bench_quality import CAPTIONS

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    root = Path(__file__).resolve().parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]  # enough English for 4,000 merges
    text = list(CAPTIONS) + [line for page in pages for line in page.read_text().split("\n")]
    trainer = trainers.BpeTrainer(vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(text, trainer)
    model = json.loads(tk.to_str())
    vocab = model["model"]["vocab"]
    for i in range(len(vocab), QWEN_FIRST_SPECIAL):  # unused ids up to the specials, as reserved words
        vocab[f"<|reserved_{i}|>"] = i
    tk = Tokenizer.from_str(json.dumps(model))
    tk.add_special_tokens(QWEN_SPECIALS)
    ids = [tk.token_to_id(s) for s in QWEN_SPECIALS]
    assert ids == list(range(QWEN_FIRST_SPECIAL, QWEN_FIRST_SPECIAL + len(QWEN_SPECIALS))), ids
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   model_max_length=32768)


def hub_processor_layout(out: Path, *, tokenizer_class: str, extra: dict | None = None) -> None:
    """Rewrite a processor saved by transformers 5 (``processor_config.json``, ``chat_template.jinja``)
    into the files the hub repos ship: ``preprocessor_config.json``, ``chat_template.json`` and a
    ``tokenizer_config.json`` naming the model's tokenizer class, as a user's download has them."""
    proc = json.loads((out / "processor_config.json").read_text())
    pre = {**proc["image_processor"], **(extra or {}), "processor_class": proc["processor_class"]}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (out / "processor_config.json").unlink()
    template = out / "chat_template.jinja"
    if template.exists():
        (out / "chat_template.json").write_text(json.dumps({"chat_template": template.read_text()}))
        template.unlink()
    tc = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**tc, "tokenizer_class": tokenizer_class}, indent=2))


def hub_clip_tokenizer_layout(out: Path) -> None:
    """SD3's tokenizer folders as shipped: ``vocab.json`` and ``merges.txt``, no ``tokenizer.json``."""
    vocab, merges = clip_bpe()
    (out / "vocab.json").write_text(json.dumps(vocab))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (out / "tokenizer.json").unlink()


def save_esrgan_x4(out: Path, nf: int = 64, nb: int = 23) -> Path:
    """RealESRGAN_x4.pth: ``{"params_ema": RRDBNet state dict}`` (BasicSR's layout)."""
    from tests.builders.synthetic.conftest import _rrdb_state

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": _rrdb_state(4, nf, nb)}, out)
    return out


def save_sam(out: Path, arch: str = "vit_h", device: str = "cpu") -> Path:
    """sam_vit_h_4b8939.pth: a plain state dict of ``segment_anything``'s ``Sam``."""
    from builders.synthetic.stages.segment import arch_spec, build_sam

    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.device(device):
        torch.save(build_sam(arch_spec(arch)).state_dict(), out)
    return out


def save_grounding_dino(out: Path, device: str = "cpu") -> Path:
    """grounding-dino-tiny: fp32 safetensors, config, processor (800/1333 px) and BERT tokenizer."""
    from transformers import (
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    with torch.device(device):
        GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(out)
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(bert_uncased_vocab())}, do_lower_case=True,
                            model_max_length=512)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tok).save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(bert_uncased_vocab()) + "\n")
    hub_processor_layout(out, tokenizer_class="BertTokenizer")
    return out


def save_qwen2vl(out: Path, device: str = "cpu") -> Path:
    """Qwen2-VL-2B-Instruct: bf16 safetensors in two shards, processor, tokenizer, chat template."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {s: QWEN_FIRST_SPECIAL + i for i, s in enumerate(QWEN_SPECIALS)}
    cfg = Qwen2VLConfig(text_config=QWEN2_VL_2B_TEXT, vision_config=QWEN2_VL_2B_VISION,
                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(cfg, dtype=BF16)
    gc = model.generation_config
    gc.bos_token_id, gc.pad_token_id, gc.eos_token_id = 151643, 151643, [151645, 151643]
    model.save_pretrained(out, max_shard_size="4GB")
    del model
    ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384, patch_size=14, merge_size=2,
                               temporal_patch_size=2)
    Qwen2VLProcessor(image_processor=ip, tokenizer=qwen2_tokenizer(), video_processor=Qwen2VLVideoProcessor(),
                     chat_template=QWEN2_VL_CHAT_TEMPLATE).save_pretrained(out)
    hub_processor_layout(out, tokenizer_class="Qwen2Tokenizer",
                         extra={"min_pixels": ip.size["shortest_edge"], "max_pixels": ip.size["longest_edge"]})
    return out


def save_sd35_medium(out: Path, device: str = "cpu") -> Path:
    """stable-diffusion-3.5-medium without T5: a diffusers folder with ``model_index.json``.

    The transformer is saved in bf16 and the VAE and text encoders in fp16, as the real files are;
    the stage loads them all in its own dtype.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    def text_encoder(hidden, layers, heads, act):
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                             projection_dim=hidden, hidden_act=act, bos_token_id=0, eos_token_id=2, pad_token_id=1)
        return CLIPTextModelWithProjection._from_config(cfg, dtype=FP16)

    with torch.device(device):
        with default_dtype(BF16):
            transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER)
        with default_dtype(FP16):
            vae = AutoencoderKL(**SD3_VAE)
        encoders = {k: text_encoder(*v) for k, v in CLIP_TEXT.items()}
    StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=encoders["text_encoder"], tokenizer=clip_tokenizer(),
        text_encoder_2=encoders["text_encoder_2"], tokenizer_2=clip_tokenizer(pad_token="!"),
        text_encoder_3=None, tokenizer_3=None).save_pretrained(out)
    for sub in ("tokenizer", "tokenizer_2"):
        hub_clip_tokenizer_layout(out / sub)
    hub_model_index_with_t5(out)
    return out


def hub_model_index_with_t5(out: Path) -> None:
    """Name T5 in ``model_index.json`` as the real repo does; its folders are not written (4.7B
    parameters), so a load that passed ``text_encoder_3=None`` proves it never reads them."""
    index = json.loads((out / "model_index.json").read_text())
    index.update(text_encoder_3=["transformers", "T5EncoderModel"], tokenizer_3=["transformers", "T5TokenizerFast"])
    (out / "model_index.json").write_text(json.dumps(index, indent=2))


SAVERS = {"upscale": save_esrgan_x4, "describe": save_qwen2vl, "ground": save_grounding_dino,
          "segment": save_sam, "generate": save_sd35_medium}


def save(stage: str, root: Path, device: str = "cpu") -> Path:
    """Build and save ``stage``'s full-size model under ``root`` (its real file or folder name)."""
    path = root / FILES[stage]
    if stage == "upscale":
        return save_esrgan_x4(path)
    return SAVERS[stage](path, device=device)


def stage_configs(root: Path, *, size: int, steps: int, vlm_tokens: int, dtype: str = "auto") -> dict:
    """Each stage's config pointing at the weights under ``root``, production settings otherwise.

    ``dtype`` applies to the stages that run in bf16 on a GPU (upscale, describe, generate);
    Grounding DINO keeps fp32 weights and SAM's prompt side fp32 whatever it is.
    """
    from builders.synthetic.stages import DescribeConfig, GenerateConfig, GroundConfig, SegmentConfig, UpscaleConfig

    return {
        "upscale": UpscaleConfig(model=str(root / FILES["upscale"]), size=size, batch_size=1, dtype=dtype),
        "describe": DescribeConfig(model=str(root / FILES["describe"]), batch_size=1, max_new_tokens=vlm_tokens,
                                   dtype=dtype),
        "ground": GroundConfig(model=str(root / FILES["ground"]), batch_size=1),
        "segment": SegmentConfig(model=str(root / FILES["segment"]), arch="vit_h", batch_size=1),
        "generate": GenerateConfig(model=str(root / FILES["generate"]), steps=steps, size=size, batch_size=1,
                                   dtype=dtype),
    }
