"""Stage 4, segment: one SAM mask per box, and the dilated, feathered mask inpainting takes.

SAM is built from the ``segment-anything`` package's modules for ``arch`` (``vit_h``, ``vit_l``,
``vit_b``, or a JSON file of the same fields for other sizes) and its weights read with
``torch.load(weights_only=True)`` or safetensors (``sam_model_registry`` would unpickle freely).
The image encoder runs once per batch of images (under bf16 autocast on CUDA; the prompt encoder
and mask decoder stay fp32, their coordinate maths needs it); then a ``SamPredictor`` holding each
image's features predicts the masks of all its boxes in one ``predict_torch`` call (one mask per
box, ``multimask_output=False``: a box is an unambiguous prompt).

A mask is cut to its box grown by ``box_margin`` (``clip_to_box``): SAM may spill into a
neighbouring object, and an edit must stay with the object it names. A mask can come out empty
(all False); the caller counts that.

:func:`inpaint_mask` turns masks into the L mask of an inpainting request: the union, dilated by
``dilate_px`` (exact Euclidean distance), with a linear ramp over the outer ``feather_px`` of the
dilated band. Nothing outside the dilated region is ever non-zero, so a result pasted back through
this mask keeps every pixel outside it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from builders.synthetic.stages.base import Stage, autocast, resolve_file

log = logging.getLogger(__name__)

# segment_anything/build_sam.py's three sizes; the fields not given take the defaults below.
ARCHS = {
    "vit_h": {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [7, 15, 23, 31]},
    "vit_l": {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
              "encoder_global_attn_indexes": [5, 11, 17, 23]},
    "vit_b": {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12,
              "encoder_global_attn_indexes": [2, 5, 8, 11]},
}
ARCH_DEFAULTS = {"prompt_embed_dim": 256, "image_size": 1024, "vit_patch_size": 16, "window_size": 14,
                 "decoder_mlp_dim": 2048, "decoder_num_heads": 8, "iou_head_hidden_dim": 256}


@dataclass(kw_only=True)
class SegmentConfig:
    """SAM weights and architecture, mask clipping, and the inpainting mask's dilation/feather."""

    model: str = "hf-hub:ybelkada/segment-anything/checkpoints/sam_vit_h_4b8939.pth"
    arch: str = "vit_h"             # vit_h | vit_l | vit_b | path to an architecture JSON
    batch_size: int = 4             # images per image-encoder call
    clip_to_box: bool = True
    box_margin: float = 0.1         # of the box's width/height, each side
    dilate_px: int = 12             # inpainting mask growth, px of the generation size
    feather_px: int = 8             # linear ramp at the dilated mask's outer edge
    dtype: str = "auto"             # the image encoder's autocast dtype on CUDA

    def validate(self) -> None:
        if self.arch not in ARCHS and not self.arch.endswith(".json"):
            raise ValueError(f"segment.arch must be one of {sorted(ARCHS)} or a .json file, got {self.arch!r}")
        if self.batch_size < 1:
            raise ValueError(f"segment.batch_size must be >= 1, got {self.batch_size}")
        if self.box_margin < 0 or self.dilate_px < 0 or self.feather_px < 0:
            raise ValueError(f"segment.box_margin/dilate_px/feather_px must be >= 0, got "
                             f"{self.box_margin}/{self.dilate_px}/{self.feather_px}")


def arch_spec(arch: str) -> dict:
    """The full architecture fields for a name in :data:`ARCHS` or a JSON file."""
    if arch in ARCHS:
        given = ARCHS[arch]
    else:
        given = json.loads(Path(resolve_file(arch)).read_text())
    unknown = set(given) - set(ARCHS["vit_b"]) - set(ARCH_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown SAM architecture fields {sorted(unknown)} in {arch!r}")
    return {**ARCH_DEFAULTS, **given}


def build_sam(spec: dict):
    """An (untrained) ``segment_anything.modeling.Sam`` of architecture ``spec``."""
    from functools import partial

    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim, size, patch = spec["prompt_embed_dim"], spec["image_size"], spec["vit_patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec["encoder_depth"], embed_dim=spec["encoder_embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=spec["encoder_num_heads"],
            patch_size=patch, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=spec["encoder_global_attn_indexes"], window_size=spec["window_size"],
            out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // patch, size // patch),
                                     input_image_size=(size, size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=spec["decoder_mlp_dim"],
                                          num_heads=spec["decoder_num_heads"]),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=spec["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def load_sam(model: str, arch: str):
    """SAM of ``arch`` with the weights in ``model`` (weights_only ``.pth`` or ``.safetensors``)."""
    import torch

    path = resolve_file(model)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    sam = build_sam(arch_spec(arch))
    sam.load_state_dict(state)
    return sam


def box_pixels(box, width: int, height: int) -> list[float]:
    """A box dict (``{"box": [...]}``) or 4 fractions -> pixel ``[x0, y0, x1, y1]``."""
    b = box["box"] if isinstance(box, dict) else box
    if len(b) != 4:
        raise ValueError(f"a box is [x0, y0, x1, y1] in 0..1, got {b!r}")
    x0, y0, x1, y1 = (float(v) for v in b)
    return [x0 * width, y0 * height, x1 * width, y1 * height]


def clip_mask(mask: np.ndarray, box_px: list[float], margin: float) -> np.ndarray:
    """``mask`` with everything outside the box grown by ``margin`` of its size set False."""
    h, w = mask.shape
    x0, y0, x1, y1 = box_px
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    c0, r0 = max(0, int(np.floor(x0 - mx))), max(0, int(np.floor(y0 - my)))
    c1, r1 = min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my)))
    out = np.zeros_like(mask)
    out[r0:r1, c0:c1] = mask[r0:r1, c0:c1]
    return out


def inpaint_mask(masks, *, dilate_px: int, feather_px: int) -> Image.Image:
    """The union of ``masks`` (H x W bool arrays) dilated and feathered, as an 8-bit L image.

    255 within ``dilate_px - feather_px`` of the masks, a linear ramp to 0 at ``dilate_px``, 0
    beyond (``feather_px`` larger than ``dilate_px`` ramps from the mask's own edge).
    """
    from scipy.ndimage import distance_transform_edt

    masks = [np.asarray(m, dtype=bool) for m in (masks if isinstance(masks, (list, tuple)) else [masks])]
    if not masks:
        raise ValueError("inpaint_mask needs at least one mask")
    union = np.logical_or.reduce(masks)
    if not union.any():
        return Image.new("L", union.shape[::-1], 0)
    dist = distance_transform_edt(~union)  # 0 on the masks, else px to the nearest mask pixel
    inner = max(0, dilate_px - feather_px)
    alpha = np.clip((dilate_px + 1 - dist) / (dilate_px + 1 - inner), 0.0, 1.0)
    alpha[dist > dilate_px] = 0.0  # non-zero exactly on the dilated region
    return Image.fromarray(np.round(alpha * 255).astype(np.uint8), "L")


class Segmenter(Stage):
    """``(PIL image, [boxes])`` items in, ``[bool H x W mask per box]`` out (``[]`` for no boxes)."""

    _model_attrs = ("model", "predictor")

    def _load(self) -> None:
        from segment_anything import SamPredictor

        self.model = load_sam(self.cfg.model, self.cfg.arch).to(self.device)
        self.predictor = SamPredictor(self.model)
        log.info("SAM %s (%s) on %s", self.cfg.model, self.cfg.arch, self.device)

    def _features(self, arrays: list[np.ndarray]):
        """Image-encoder features of a batch, and each image's resized input size."""
        import torch

        tf, sam = self.predictor.transform, self.model
        inputs, sizes = [], []
        for a in arrays:
            t = torch.as_tensor(tf.apply_image(a), device=self.device).permute(2, 0, 1)[None]
            sizes.append(tuple(t.shape[-2:]))
            inputs.append(sam.preprocess(t.float()))
        x = torch.cat(inputs)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            feats = sam.image_encoder(x)
        return feats.float(), sizes

    def _batch(self, batch: list) -> list:
        import torch

        arrays = [np.asarray(im.convert("RGB")) for im, _ in batch]
        boxes = [[box_pixels(b, a.shape[1], a.shape[0]) for b in bs] for a, (_, bs) in zip(arrays, batch)]
        feats, sizes = self._features(arrays)
        out = []
        p = self.predictor
        for i, (a, bs) in enumerate(zip(arrays, boxes)):
            if not bs:
                out.append([])
                continue
            # SamPredictor's per-image state, set from the batched encoder run.
            p.features, p.original_size, p.input_size, p.is_image_set = feats[i:i + 1], a.shape[:2], sizes[i], True
            tb = p.transform.apply_boxes_torch(torch.tensor(bs, dtype=torch.float32, device=self.device), a.shape[:2])
            with torch.inference_mode():
                logits, _, _ = p.predict_torch(None, None, boxes=tb, multimask_output=False, return_logits=True)
            if not torch.isfinite(logits).all():
                out.append(logits.cpu())  # run_batched turns it into Skip("non-finite output")
                continue
            masks = (logits[:, 0] > self.model.mask_threshold).cpu().numpy()
            if self.cfg.clip_to_box:
                masks = [clip_mask(m, b, self.cfg.box_margin) for m, b in zip(masks, bs)]
            out.append([np.asarray(m, dtype=bool) for m in masks])
        p.reset_image()
        return out
