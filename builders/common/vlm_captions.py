"""VLM captions with Qwen2-VL (or any AutoModelForImageTextToText chat model), batched.

The model and processor load from a local path or hub id (``vlm.model``); bf16 on a GPU,
float32 on CPU unless ``vlm.dtype`` says otherwise. The image processor's ``max_pixels`` is
always set, so a large input cannot explode the number of vision tokens. Greedy decoding keeps
captions reproducible. One captioner is cached per process (a worker loads the model once).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from clip_models.device import check_device

log = logging.getLogger(__name__)


@dataclass
class VLMConfig:
    """USE_VLM_CAPTIONS: on when ``model`` (local path or hub id) is set."""

    model: str = ""
    prompt: str = "Describe this aerial image in one sentence."
    batch_size: int = 8
    max_new_tokens: int = 48
    device: str = "auto"            # auto: cuda when available, else cpu
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: bf16 on GPU
    max_pixels: int = 448 * 448
    min_pixels: int = 56 * 56

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        check_device(self.device)


_CACHE: dict[tuple, VLMCaptioner] = {}
# Qwen2-VL's chat layout, used when a processor ships no chat template.
_QWEN_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n"
                "<|im_start|>assistant\n")


def _pick_device_dtype(cfg: VLMConfig):
    import torch

    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.dtype == "auto":
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        dtype = getattr(torch, cfg.dtype)
    return device, dtype


class VLMCaptioner:
    """Caption lists of PIL images with one prompt."""

    def __init__(self, cfg: VLMConfig):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not cfg.model:
            raise ValueError("vlm.model is empty: set a local path or hub id to enable VLM captions")
        self.cfg = cfg
        self.device, self.dtype = _pick_device_dtype(cfg)
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        ip = self.processor.image_processor
        # Qwen2-VL reads the pixel budget from size (transformers 5); older names kept in step.
        ip.size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
        for name, value in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)):
            if getattr(ip, name, None) is not None:
                setattr(ip, name, value)
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation appends on the right: pad on the left
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.text = self._prompt()
        log.info("VLM %s on %s (%s)", cfg.model, self.device, self.dtype)

    def _prompt(self) -> str:
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.cfg.prompt}]}]
            return self.processor.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return _QWEN_PROMPT.format(prompt=self.cfg.prompt)

    def caption(self, images: list[Image.Image]) -> list[str | None]:
        """One caption per image (None when the model produced only whitespace)."""
        import torch

        out: list[str | None] = []
        bs = self.cfg.batch_size
        tok = self.processor.tokenizer
        for i in range(0, len(images), bs):
            batch = [im.convert("RGB") for im in images[i:i + bs]]
            inputs = self.processor(text=[self.text] * len(batch), images=batch,
                                    return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                gen = self.model.generate(**inputs, max_new_tokens=self.cfg.max_new_tokens,
                                          do_sample=False, pad_token_id=tok.pad_token_id)
            texts = self.processor.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                skip_special_tokens=True)
            out += [_clean(t) for t in texts]
        return out


def _clean(text: str) -> str | None:
    """Collapse whitespace and drop control characters; None when nothing is left."""
    text = "".join(ch for ch in text if ch.isprintable() or ch.isspace())
    return " ".join(text.split()) or None


def get_captioner(cfg: VLMConfig) -> VLMCaptioner:
    """The process-wide captioner for ``cfg`` (loaded on first use)."""
    key = (cfg.model, cfg.device, cfg.dtype, cfg.prompt, cfg.max_pixels, cfg.min_pixels,
           cfg.batch_size, cfg.max_new_tokens)
    if key not in _CACHE:
        _CACHE[key] = VLMCaptioner(cfg)
    return _CACHE[key]
