"""Stage 1, upscale: RealESRGAN (x2/x4 RRDBNet) through spandrel, tiled, then resized to ``size``.

Weights are a BasicSR ``.pth`` state dict (``params_ema`` or plain) or ``.safetensors``, from a
local path or ``hf-hub:org/repo/file``. The file is read with ``torch.load(weights_only=True)``
or safetensors, never unpickled freely (spandrel's own file loader would also run TorchScript
``.pt`` files), and handed to spandrel as a state dict, which detects the architecture and scale.

Large inputs are cut into ``tile`` x ``tile`` cores, each run with ``tile_overlap`` px of
context on every side, and only the core of each output is kept: tiles meet without seams and
memory is bounded by the tile, not the image. Tiles of all images in a batch run together.
The result is resized (Lanczos) so its short side is ``size``, then centre-cropped to
``size`` x ``size`` (the generator's square canvas). An input whose short side is already
``size`` or more is only resized (``skip_large``).
"""
from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from builders.synthetic.stages.base import NON_FINITE, Skip, Stage, has_non_finite, resolve_file

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class UpscaleConfig:
    """RealESRGAN weights and the tiling / output size."""

    model: str = "hf-hub:ai-forever/Real-ESRGAN/RealESRGAN_x4.pth"
    size: int = 1024                # output side (SD3.5's native 1024)
    tile: int = 512                 # input px per tile core; 0 = whole image at once
    tile_overlap: int = 16          # input px of context around each core
    batch_size: int = 4             # images per call (all their tiles run together)
    skip_large: bool = True         # short side already >= size: resize only, no model call
    dtype: str = "auto"             # auto: bf16 on CUDA, fp32 on CPU

    def validate(self) -> None:
        if self.size < 16 or self.size % 16:
            raise ValueError(f"upscale.size must be a multiple of 16 (>= 16), got {self.size}")
        if self.tile < 0 or (0 < self.tile < 16):
            raise ValueError(f"upscale.tile must be 0 (no tiling) or >= 16, got {self.tile}")
        if self.tile_overlap < 0:
            raise ValueError(f"upscale.tile_overlap must be >= 0, got {self.tile_overlap}")
        if self.batch_size < 1:
            raise ValueError(f"upscale.batch_size must be >= 1, got {self.batch_size}")
        if not self.model:
            raise ValueError("upscale.model is empty: give a .pth/.safetensors path or hf-hub:org/repo/file")


def read_state_dict(path: str) -> dict:
    """The tensors of a ``.pth``/``.ckpt`` (weights_only) or ``.safetensors`` checkpoint."""
    import torch

    local = resolve_file(path)
    suffix = Path(local).suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(local, device="cpu")
    if suffix in (".pth", ".ckpt", ".pt"):
        try:
            return torch.load(local, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"upscale.model {path!r} is not a plain state dict: torch.load(weights_only=True) "
                             f"refused it ({_refusal(e)}); no checkpoint is unpickled freely, so save its tensors "
                             "as a state dict (torch.save(model.state_dict(), f)) or convert it to .safetensors"
                             ) from None
    raise ValueError(f"upscale.model must be a .pth or .safetensors file, got {path!r}")


def _refusal(e: Exception) -> str:
    """The one line of torch's multi-paragraph weights_only refusal that says what was refused."""
    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it holds a pickled {found.group(1)}"
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return found.group(1).strip() if found else "not a tensor archive"


def load_upscaler(path: str):
    """A spandrel ``ImageModelDescriptor`` for the weights at ``path`` (architecture detected)."""
    from spandrel import ImageModelDescriptor, ModelLoader
    from spandrel.__helpers.canonicalize import canonicalize_state_dict

    desc = ModelLoader().load_from_state_dict(canonicalize_state_dict(read_state_dict(path)))
    if not isinstance(desc, ImageModelDescriptor):
        raise ValueError(f"{path!r} is not an image-to-image model ({type(desc).__name__})")
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise ValueError(f"{path!r}: expected an RGB model, got {desc.input_channels}->{desc.output_channels} channels")
    return desc


Box = tuple[int, int, int, int]


def tile_windows(h: int, w: int, tile: int, overlap: int) -> list[tuple[Box, Box]]:
    """``[(window, core)]`` boxes ``(y0, y1, x0, x1)`` covering an ``h`` x ``w`` image.

    Cores partition the image; each window is its core grown by ``overlap`` (clipped).
    """
    if tile <= 0 or (h <= tile and w <= tile):
        return [((0, h, 0, w), (0, h, 0, w))]
    out = []
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            win = (max(0, y0 - overlap), min(h, y1 + overlap), max(0, x0 - overlap), min(w, x1 + overlap))
            out.append((win, (y0, y1, x0, x1)))
    return out


def resize_square(img: Image.Image, size: int) -> Image.Image:
    """Short side to ``size`` (Lanczos), then the centre ``size`` x ``size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size)) if (nw, nh) != (size, size) else img


class Upscaler(Stage):
    """PIL images in, ``size`` x ``size`` RGB PIL images (or Skip) out."""

    def _load(self) -> None:
        import torch

        desc = load_upscaler(self.cfg.model)
        if (self.dtype == torch.bfloat16 and not desc.supports_bfloat16) or \
                (self.dtype == torch.float16 and not desc.supports_half):
            self.dtype = torch.float32
        self.model = desc.to(self.device).to(self.dtype).eval()
        self.scale = desc.scale
        log.info("upscaler %s x%d (%s) on %s", desc.architecture.id, desc.scale, self.dtype, self.device)

    def _batch(self, batch: list) -> list:
        images = [im.convert("RGB") for im in batch]
        todo = [i for i, im in enumerate(images) if not (self.cfg.skip_large and min(im.size) >= self.cfg.size)]
        up = self._upscale([images[i] for i in todo])
        out: list = [resize_square(im, self.cfg.size) for im in images]
        for i, result in zip(todo, up):
            out[i] = result if isinstance(result, Skip) else resize_square(result, self.cfg.size)
        return out

    def _upscale(self, images: list[Image.Image]) -> list:
        """Run the model on every tile of ``images`` (grouped by window shape) and stitch."""
        import torch

        tiles = []  # (image index, window, core)
        for i, im in enumerate(images):
            for win, core in tile_windows(im.height, im.width, self.cfg.tile, self.cfg.tile_overlap):
                tiles.append((i, win, core))
        arrays = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
        s = self.scale
        canvases = [torch.zeros(3, im.height * s, im.width * s) for im in images]
        groups: dict[tuple[int, int], list] = {}
        for t in tiles:
            (y0, y1, x0, x1) = t[1]
            groups.setdefault((y1 - y0, x1 - x0), []).append(t)
        for members in groups.values():
            x = torch.stack([torch.from_numpy(arrays[i][y0:y1, x0:x1]).permute(2, 0, 1)
                             for i, (y0, y1, x0, x1), _ in members])
            with torch.inference_mode():
                y = self.model(x.to(self.device, self.dtype)).float().cpu()
            for (i, (wy0, _, wx0, _), (cy0, cy1, cx0, cx1)), ty in zip(members, y):
                canvases[i][:, cy0 * s:cy1 * s, cx0 * s:cx1 * s] = \
                    ty[:, (cy0 - wy0) * s:(cy1 - wy0) * s, (cx0 - wx0) * s:(cx1 - wx0) * s]
        out: list = []
        for c in canvases:
            if has_non_finite(c):
                out.append(Skip(NON_FINITE))
                continue
            arr = (c.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
            out.append(Image.fromarray(arr, "RGB"))
        return out
