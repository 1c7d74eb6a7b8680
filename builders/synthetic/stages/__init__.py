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

The stages, their items and results:

========================================  ====================================  ===========================================
stage (module: config, class)             item                                  result
========================================  ====================================  ===========================================
``upscale``: UpscaleConfig, Upscaler      PIL image (any size/mode)             RGB PIL image, ``size`` x ``size``
``describe``: DescribeConfig, Describer   PIL image                             ``Description(caption, objects, raw, fallback)``
``ground``: GroundConfig, Grounder        ``(PIL image, [labels])``             ``[{"box": [x0,y0,x1,y1] 0..1, "label", "score", "source": "grounding_dino"}]``
``segment``: SegmentConfig, Segmenter     ``(PIL image, [box dict or 4 floats])``  ``[bool ndarray H x W]``, one per box
``generate``: GenerateConfig, SD3Generator  ``GenerateRequest``                 RGB PIL image
========================================  ====================================  ===========================================

Skip reasons a stage itself returns: describe ``"no caption"``; ground ``"no objects"`` (an item
without labels). An image with no boxes is ``[]`` (not a skip: the verify step needs "nothing
found"); a box whose mask came out empty is an all-False mask. :func:`segment.inpaint_mask`
dilates and feathers a mask into the 8-bit L mask the inpainting request takes.
"""
from builders.synthetic.stages.base import NON_FINITE, OUT_OF_MEMORY, Skip, Stage, is_skip, run_batched
from builders.synthetic.stages.describe import DescribeConfig, Describer, Description
from builders.synthetic.stages.generate import GenerateConfig, GenerateRequest, SD3Generator, paste_through_mask
from builders.synthetic.stages.ground import GroundConfig, Grounder
from builders.synthetic.stages.segment import SegmentConfig, Segmenter, inpaint_mask
from builders.synthetic.stages.upscale import UpscaleConfig, Upscaler

__all__ = ["NON_FINITE", "OUT_OF_MEMORY", "Skip", "Stage", "is_skip", "run_batched",
           "UpscaleConfig", "Upscaler", "DescribeConfig", "Describer", "Description",
           "GroundConfig", "Grounder", "SegmentConfig", "Segmenter", "inpaint_mask",
           "GenerateConfig", "GenerateRequest", "SD3Generator", "paste_through_mask"]
