"""The five model stages of the synthetic set, one module each, all of one shape.

Shape (see :class:`builders.synthetic.stages.base.Stage`)::

    stage = Upscaler(UpscaleConfig(model=..., size=1024), device="cuda:0")   # nothing loaded yet
    stage.load()                       # build the model(s) once per worker (idempotent)
    results = stage(items)             # batched; one result or Skip per item, in order
    stage.unload()                     # drop the models, gc, torch.cuda.empty_cache()

- Configs are keyword-only dataclasses with defaults for the real models (hub ids or paths);
  ``validate()`` raises ValueError naming the bad value; ``dtype="auto"`` is bf16 on CUDA and
  fp32 on CPU; ``batch_size`` is the items per model call.
- ``device`` is ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
- Calling an unloaded stage loads it first; ``with stage:`` unloads on exit.
- Per-item trouble never raises: :func:`~builders.synthetic.stages.base.run_batched` turns out of
  memory (halve the batch, retry, then ``Skip("out of memory")``), an exception on one item
  (``Skip("error: TypeName", detail=...)``, the rest of its batch goes on) and NaN/inf output
  (``Skip("non-finite output")``) into a :class:`~builders.synthetic.stages.base.Skip`.

The stages, their items and results (module: config, class):

- ``upscale``: UpscaleConfig, Upscaler. Item: a PIL image (any size or mode). Result: an RGB
  PIL image of ``size`` x ``size`` (short side resized, centre-cropped).
- ``describe``: DescribeConfig, Describer. Item: a PIL image. Result:
  ``Description(caption: str, objects: list[str], raw: str, fallback: bool)``
  (``Description.from_dict(dataclasses.asdict(d))`` round-trips); ``describe.nouns_in`` and
  ``describe.parse_description`` are the caption-noun fallback and the answer parser.
- ``ground``: GroundConfig, Grounder. Item: ``(PIL image, [label, ...])``. Result: a list, best
  first, of ``{"box": [x0, y0, x1, y1] (0..1 of the image), "label": one of the item's labels,
  "score": float, "source": "grounding_dino"}``. ``ground.box_in_mask(box, mask)`` is the
  fraction of a box inside a mask (the verify step).
- ``segment``: SegmentConfig, Segmenter. Item: ``(PIL image, [box dict or [x0, y0, x1, y1]])``.
  Result: one bool ``numpy`` array (H x W of the image) per box, in the boxes' order.
  :func:`segment.inpaint_mask(masks, dilate_px=, feather_px=) <segment.inpaint_mask>` -> 8-bit
  L image (union, dilated, feathered; 0 outside the dilated region).
- ``generate``: GenerateConfig, SD3Generator. Item: ``GenerateRequest(mode="inpaint" |
  "img2img" | "text2img", prompt, seed, image=None, mask=None, negative_prompt="",
  strength=None, steps=None, guidance=None, size=None)``; unset numbers come from the config
  (``request.resolve(cfg)`` returns the values used, ``.params()`` them as a dict). Result: an RGB
  PIL image (the input's size for inpaint/img2img, ``size`` square for text2img); inpainting
  is pasted back through the mask (pixels where the mask is 0 are exactly the input's).

Skip reasons a stage returns itself: describe ``"no caption"``; ground ``"no objects"`` (an item
without labels). An image with no boxes is ``[]`` (not a skip: the verify step needs "nothing
found"); a box whose mask came out empty is an all-False mask. The caller decides which of these
end an image's path and counts them.
"""
from builders.synthetic.stages.base import NON_FINITE, OUT_OF_MEMORY, Skip, Stage, is_skip, run_batched
from builders.synthetic.stages.describe import DescribeConfig, Describer, Description
from builders.synthetic.stages.generate import GenerateConfig, GenerateRequest, SD3Generator, paste_through_mask
from builders.synthetic.stages.ground import GroundConfig, Grounder, box_in_mask
from builders.synthetic.stages.segment import SegmentConfig, Segmenter, inpaint_mask
from builders.synthetic.stages.upscale import UpscaleConfig, Upscaler

__all__ = ["NON_FINITE", "OUT_OF_MEMORY", "Skip", "Stage", "is_skip", "run_batched",
           "UpscaleConfig", "Upscaler", "DescribeConfig", "Describer", "Description",
           "GroundConfig", "Grounder", "box_in_mask", "SegmentConfig", "Segmenter", "inpaint_mask",
           "GenerateConfig", "GenerateRequest", "SD3Generator", "paste_through_mask"]
