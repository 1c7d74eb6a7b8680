"""Stage 5, generate: SD3 / SD3.5 inpainting, img2img and text2img sharing one set of weights.

``StableDiffusion3Pipeline.from_pretrained`` loads the components once (local path or hub id);
the img2img and inpaint pipelines are built from ``pipe.components``, so the three modes cost the
memory of one. ``use_t5=False`` (the default) loads without the T5 encoder
(``text_encoder_3=None, tokenizer_3=None``; the pipeline feeds zeros in its place): SD3.5-Medium
then needs about 6 GiB in bf16 and fits a 24 GB card beside the other stages; SD3.5-Large about
17 GiB. ``cpu_offload`` moves each component to the GPU only while it runs.

A :class:`GenerateRequest` carries everything one image depends on. Unset numbers take the
config's defaults (:meth:`GenerateRequest.resolve`, so a caller can record the values used).
Each request gets its own ``torch.Generator`` (CPU, seeded from ``request.seed``), so an image
depends on its own seed only; requests sharing mode, size, steps, strength and guidance run as
one batched pipeline call (the same batch composition reruns byte-identical).

Every mode asks its pipeline for latents and decodes them here (:func:`decode_latents`), undoing
the VAE's scaling and shift: diffusers 0.42.1's inpaint pipeline decodes without the shift
(text2img and img2img add it), which would tint every repainted pixel (diffusers issue 13611).

Without T5 the prompt is read by CLIP alone, 77 tokens with its start and end tokens. A longer
prompt is cut here after its last clause or whole word that fits (:func:`fit_prompt`; the style
words come first, so a caption loses its tail) instead of mid-word by the pipeline, which would
also log a warning for every batch. With T5 on, T5 reads the whole prompt.

Inpainting changes pixels only inside the mask: the pipeline repaints where the mask is >= 50%,
but its VAE round trip touches every pixel, so the result is pasted back through the (dilated,
feathered) mask over the input: ``out = a * generated + (1 - a) * input`` with ``a = mask/255``.
Where the mask is 0 the output is exactly the input.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from builders.synthetic.stages.base import NON_FINITE, Skip, Stage, has_non_finite

log = logging.getLogger(__name__)

MODES = ("inpaint", "img2img", "text2img")


@dataclass(kw_only=True)
class GenerateConfig:
    """SD3.5 weights and the generation defaults a request may override."""

    model: str = "stabilityai/stable-diffusion-3.5-medium"
    use_t5: bool = False            # T5-XXL adds ~9 GiB (bf16); off fits a 24 GB card
    size: int = 1024                # text2img side when a request gives none
    steps: int = 28
    guidance: float = 4.5
    inpaint_strength: float = 0.95
    img2img_strength: float = 0.55
    max_sequence_length: int = 256
    batch_size: int = 2
    cpu_offload: bool = False       # enable_model_cpu_offload (small cards; slower)
    dtype: str = "auto"

    def validate(self) -> None:
        if not self.model:
            raise ValueError("generate.model is empty: set a local path or hub id of an SD3 / SD3.5 model")
        if self.size < 16 or self.size % 16:
            raise ValueError(f"generate.size must be a multiple of 16, got {self.size}")
        for name in ("steps", "batch_size", "max_sequence_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"generate.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inpaint_strength", "img2img_strength"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"generate.{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class GenerateRequest:
    """One image to generate. ``mask`` is an L image, 255 = repaint (:func:`segment.inpaint_mask`).

    ``size`` is the square side for text2img; inpaint and img2img keep the input image's size.
    """

    mode: Literal["inpaint", "img2img", "text2img"]
    prompt: str
    seed: int
    image: Image.Image | None = None
    mask: Image.Image | None = None
    negative_prompt: str = ""
    strength: float | None = None
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None

    def resolve(self, cfg: GenerateConfig) -> GenerateRequest:
        """This request with every unset number taken from ``cfg``; checks the combination."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode != "text2img" and self.image is None:
            raise ValueError(f"mode {self.mode!r} needs an image")
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("mode 'inpaint' needs a mask")
        strength = self.strength if self.strength is not None else (
            cfg.inpaint_strength if self.mode == "inpaint" else cfg.img2img_strength if self.mode == "img2img" else 1.0)
        size = self.size if self.size is not None else cfg.size
        if self.mode == "text2img" and (size < 16 or size % 16):
            raise ValueError(f"size must be a multiple of 16, got {size}")
        if self.image is not None and (self.image.width % 16 or self.image.height % 16):
            raise ValueError(f"image sides must be multiples of 16, got {self.image.size}")
        if self.mask is not None and self.image is not None and self.mask.size != self.image.size:
            raise ValueError(f"mask size {self.mask.size} differs from image size {self.image.size}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return dataclasses.replace(self, strength=float(strength), size=int(size),
                                   steps=int(self.steps if self.steps is not None else cfg.steps),
                                   guidance=float(self.guidance if self.guidance is not None else cfg.guidance))

    def params(self) -> dict:
        """The recorded generation parameters (no images)."""
        return {k: getattr(self, k) for k in ("mode", "prompt", "negative_prompt", "seed", "strength",
                                                 "steps", "guidance", "size")}


def paste_through_mask(generated: Image.Image, image: Image.Image, mask: Image.Image) -> Image.Image:
    """``generated`` inside ``mask``, ``image`` outside, blended by the mask's 8-bit alpha."""
    g = np.asarray(generated.convert("RGB"), dtype=np.uint32)
    x = np.asarray(image.convert("RGB"), dtype=np.uint32)
    a = np.asarray(mask.convert("L"), dtype=np.uint32)[..., None]
    out = (g * a + x * (255 - a) + 127) // 255
    return Image.fromarray(out.astype(np.uint8), "RGB")


def clip_token_count(tokenizer, text: str) -> int:
    """Tokens a CLIP text encoder reads for ``text``, its start and end tokens included."""
    # verbose=False: no "longer than the maximum" warning, counting the excess is the point here
    return len(tokenizer(text, verbose=False)["input_ids"])


def fit_prompt(text: str, tokenizers: Sequence, max_tokens: int) -> tuple[str, bool]:
    """``(text, False)`` when every tokenizer reads ``text`` within ``max_tokens``; else the
    longest word prefix that fits, cut back to its last clause end (``,`` ``;`` ``.``) when that
    keeps at least half of those words, and ``True``. Never cuts inside a word."""
    def fits(t: str) -> bool:
        return all(clip_token_count(tok, t) <= max_tokens for tok in tokenizers)

    if fits(text):
        return text, False
    words = text.split()
    lo, hi = 0, len(words)  # words[:lo] fits, words[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(" ".join(words[:mid])) else (lo, mid)
    clause = max((i + 1 for i in range(lo) if words[i][-1] in ",;."), default=0)
    kept = words[:clause] if 2 * clause >= lo else words[:lo]
    return " ".join(kept).rstrip(",;: "), True


def decode_latents(pipe, latents) -> np.ndarray:
    """An SD3 pipeline's ``output_type="latent"`` result as images in [0, 1], ``(B, H, W, 3)``:
    ``vae.decode(latents / scaling_factor + shift_factor)`` and the pipeline's postprocessing,
    as its text2img pipeline does. (The latents are SD3's plain ``(B, 16, h, w)``, not packed.)"""
    vae = pipe.vae
    image = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * len(image))


def _group_key(r: GenerateRequest) -> tuple:
    dims = r.image.size if r.image is not None else (r.size, r.size)
    return r.mode, dims, r.steps, r.strength, r.guidance


class SD3Generator(Stage):
    """:class:`GenerateRequest` items in, RGB PIL images (or Skip) out."""

    _model_attrs = ("pipes",)

    def _load(self) -> None:
        import inspect

        from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline

        extra = {} if self.cfg.use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        base = StableDiffusion3Pipeline.from_pretrained(self.cfg.model, dtype=self.dtype, **extra)
        comps = base.components
        pipes = {"text2img": base}
        for mode, cls in (("img2img", StableDiffusion3Img2ImgPipeline), ("inpaint", StableDiffusion3InpaintPipeline)):
            accepted = inspect.signature(cls.__init__).parameters
            pipes[mode] = cls(**{k: v for k, v in comps.items() if k in accepted})
        for p in pipes.values():
            p.set_progress_bar_config(disable=True)
        if self.cfg.cpu_offload and self.device.type == "cuda":
            # The hooks sit on the shared modules: installing them once serves all three pipelines.
            base.enable_model_cpu_offload(device=self.device)
        else:
            base.to(self.device)  # the components are shared: moving one pipeline moves all
        self.pipes = pipes
        log.info("SD3 %s (T5 %s) on %s (%s)", self.cfg.model, "on" if self.cfg.use_t5 else "off",
                 self.device, self.dtype)

    def fit_prompt(self, text: str) -> tuple[str, bool]:
        """``text`` as CLIP reads it here and whether it was cut (:func:`fit_prompt`)."""
        self.load()
        pipe = self.pipes["text2img"]
        tokenizers = [t for t in (pipe.tokenizer, pipe.tokenizer_2) if t is not None]
        return fit_prompt(text, tokenizers, pipe.tokenizer_max_length)

    def _batch(self, batch: list) -> list:
        reqs = [r.resolve(self.cfg) for r in batch]
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(_group_key(r), []).append(i)
        out: list = [None] * len(reqs)
        for key, idx in groups.items():
            images = self._run(key, [reqs[i] for i in idx])
            for i, im in zip(idx, images):
                out[i] = im
        return out

    def _run(self, key: tuple, reqs: list[GenerateRequest]) -> list:
        import torch

        mode, (w, h), steps, strength, guidance = key
        prompts, negatives = [r.prompt for r in reqs], [r.negative_prompt for r in reqs]
        kw = dict(prompt=[self.fit_prompt(p)[0] for p in prompts],
                  negative_prompt=[self.fit_prompt(p)[0] for p in negatives],
                  height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
                  generator=[torch.Generator("cpu").manual_seed(int(r.seed)) for r in reqs],
                  max_sequence_length=self.cfg.max_sequence_length, output_type="latent")
        if self.cfg.use_t5:  # T5 reads max_sequence_length tokens: give it the whole text
            kw.update(prompt_3=prompts, negative_prompt_3=negatives)
        if mode != "text2img":
            kw.update(image=[r.image.convert("RGB") for r in reqs], strength=strength)
        if mode == "inpaint":
            kw["mask_image"] = [r.mask.convert("L") for r in reqs]
        pipe = self.pipes[mode]
        with torch.inference_mode():
            arrays = decode_latents(pipe, pipe(**kw).images)
        out: list = []
        for r, a in zip(reqs, arrays):
            if has_non_finite(a):
                out.append(Skip(NON_FINITE))
                continue
            im = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
            out.append(paste_through_mask(im, r.image, r.mask) if mode == "inpaint" else im)
        return out
