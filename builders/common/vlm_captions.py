"""VLM captions with Qwen2-VL (or any AutoModelForImageTextToText chat model), batched.

The model and processor load from a local path or hub id (``vlm.model``); bf16 on a GPU,
float32 on CPU unless ``vlm.dtype`` says otherwise. For the Qwen2-VL family (the config's
``model_type``, see :data:`QWEN_VL_TYPES`) the image processor's pixel budget is always set, so a
large input cannot explode the number of vision tokens; any other processor keeps its own sizes
(a CLIP-style processor given that budget as its resize edge would see a small centre crop).
Greedy decoding keeps captions reproducible. One captioner is cached per process (a worker loads
the model once).

:meth:`VLMCaptioner.answers` gives the raw answers, line breaks kept, for a parser that reads a
structure (the synthetic describe stage); :meth:`VLMCaptioner.caption` gives one clean caption per
image: markdown and a leading label ("**Caption:**") removed, whitespace collapsed.
"""
from __future__ import annotations

import logging
import re
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


# Model types whose image processor is Qwen2-VL's (a pixel budget, not a resize edge).
QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen2_5_omni", "qwen3_vl", "qwen3_5", "qwen3_omni")


def is_qwen_vl(model_type: str) -> bool:
    """Whether ``model_type`` (a config's) belongs to the Qwen2-VL family of processors."""
    return model_type.startswith(QWEN_VL_TYPES)


def apply_pixel_budget(processor, model_type: str, cfg: VLMConfig) -> bool:
    """Set ``cfg``'s min/max pixels on a Qwen2-VL-family processor; others are left as they are.

    Returns whether the budget was applied."""
    if not is_qwen_vl(model_type):
        return False
    ip = processor.image_processor
    # Qwen2-VL reads the pixel budget from size (transformers 5); older names kept in step.
    ip.size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    for name, value in (("min_pixels", cfg.min_pixels), ("max_pixels", cfg.max_pixels)):
        if getattr(ip, name, None) is not None:
            setattr(ip, name, value)
    return True


class VLMCaptioner:
    """Caption lists of PIL images with one prompt."""

    def __init__(self, cfg: VLMConfig):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        if not cfg.model:
            raise ValueError("vlm.model is empty: set a local path or hub id to enable VLM captions")
        self.cfg = cfg
        self.device, self.dtype = _pick_device_dtype(cfg)
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        model_type = AutoConfig.from_pretrained(cfg.model).model_type
        if not apply_pixel_budget(self.processor, model_type, cfg):
            log.info("VLM %s is %s, not Qwen2-VL: its processor keeps its own image size "
                     "(vlm.max_pixels/min_pixels not used)", cfg.model, model_type)
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
        """One clean caption per image (None when nothing but markdown or whitespace came back)."""
        return [clean_caption(a) for a in self.answers(images)]

    def answers(self, images: list[Image.Image]) -> list[str]:
        """The model's raw answer per image, line breaks and markdown kept."""
        import torch

        out: list[str] = []
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
            out += [_printable(t) for t in texts]
        return out


def _printable(text: str) -> str:
    """``text`` without control characters; line breaks kept (they carry an answer's structure)."""
    return "".join(ch for ch in text if ch.isprintable() or ch in "\n\t ").strip()


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+\u2022\u2013]|\d{1,3}[.)])(?:\s+|$)")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|`+)(?=\S)(.+?)(?<=\S)\1")
_LEFT_MARKERS = re.compile(r"\*{2,3}|_{2,3}|`+")


def strip_markdown(line: str) -> str:
    """One line of a chat answer as plain text: heading marks, a bullet or list number, bold /
    italics / code markers and quote marks at the start are removed; the words stay."""
    line = _HEADING.sub("", line)
    line = re.sub(r"^\s*>\s*", "", line)
    line = _LIST_ITEM.sub("", line)
    line = _EMPHASIS.sub(r"\2", line)
    line = _LEFT_MARKERS.sub("", line)  # an unpaired "**" (an answer cut by max_new_tokens)
    return line.strip()


_NAMES = r"caption|description|objects?(?:\s+in\s+(?:view|the\s+image))?|visible\s+objects"
# A label alone on its line (a heading, "**Objects**"), or a label with a colon anywhere in a line
# (the one-line "Caption: ... Objects: ..." form).
_SECTION = re.compile(rf"^[ \t]*(?P<alone>{_NAMES})[ \t]*:?[ \t]*$|(?:^|(?<=\s))(?P<name>{_NAMES})\s*:",
                      re.I | re.M)


def answer_sections(raw: str) -> tuple[str, str | None]:
    """(caption text, object-list text or None) of a chat answer, markdown removed line by line.

    The first non-empty section of each kind is used; without a caption label the caption is the
    text before the first label (the whole answer when it has none). Line breaks are kept in
    both parts: an object list may be a bulleted or numbered column."""
    text = "\n".join(strip_markdown(line) for line in _printable(raw).splitlines())
    found: dict[str, str] = {}
    marks = list(_SECTION.finditer(text))
    for m, nxt in zip(marks, marks[1:] + [None]):
        kind = "objects" if "object" in (m.group("alone") or m.group("name")).lower() else "caption"
        body = text[m.end():nxt.start() if nxt else len(text)].strip()
        if body and kind not in found:
            found[kind] = body
    lead = text[:marks[0].start()] if marks else text
    return found.get("caption", lead), found.get("objects")


def clean_caption(raw: str | None) -> str | None:
    """The caption of a chat answer: markdown, labels ("**Caption:**") and any object-list
    section removed, whitespace collapsed; None when nothing is left (the caller counts it)."""
    return " ".join(answer_sections(raw or "")[0].split()).strip(" \"'") or None


def get_captioner(cfg: VLMConfig) -> VLMCaptioner:
    """The process-wide captioner for ``cfg`` (loaded on first use)."""
    key = (cfg.model, cfg.device, cfg.dtype, cfg.prompt, cfg.max_pixels, cfg.min_pixels,
           cfg.batch_size, cfg.max_new_tokens)
    if key not in _CACHE:
        _CACHE[key] = VLMCaptioner(cfg)
    return _CACHE[key]
