"""Stage 3, ground: Grounding DINO boxes for the listed objects, in 0..1 image coordinates.

``GroundingDinoForObjectDetection`` and its ``AutoProcessor`` load from a local path or hub id.
The prompt is one phrase per label, ``"a car. a building."``. Each query's box is scored per
label as the highest token probability inside that label's phrase (the article excluded): the
box's score and label are its best label's, kept when ``score >= box_threshold`` and the mean
token probability over that label's phrase passes ``text_threshold`` (a box that matches only
"lot" of "parking lot" is not a parking lot). The phrase is matched back to the label that was asked for, so
a result's label is always one of the item's labels (the processor's own post-processing decodes
whatever tokens pass, which can merge two labels into one string). Overlapping boxes of one label
are merged by NMS (``nms_iou``); at most ``max_boxes`` per image, best first.

The same stage checks a generated image (the verify step): ground it for the new label and look
for a box inside the edited region (:func:`box_in_mask`). An image with nothing found gives ``[]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from builders.synthetic.stages.base import Skip, Stage, autocast

log = logging.getLogger(__name__)

SOURCE = "grounding_dino"


@dataclass(kw_only=True)
class GroundConfig:
    """Grounding DINO model and thresholds."""

    model: str = "IDEA-Research/grounding-dino-tiny"
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    nms_iou: float = 0.5            # per-label NMS; 1.0 keeps every box
    max_boxes: int = 20
    max_labels: int = 16            # longer lists are cut (the text encoder's length is bounded)
    batch_size: int = 4
    dtype: str = "auto"             # autocast dtype on CUDA (weights stay fp32)

    def validate(self) -> None:
        if not self.model:
            raise ValueError("ground.model is empty: set a local path or hub id of a Grounding DINO model")
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ground.{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("max_boxes", "max_labels", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ground.{name} must be >= 1, got {getattr(self, name)}")


def make_prompt(labels: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a car. a building."`` and each label's character span in it (article excluded)."""
    parts, spans, pos = [], [], 0
    for label in labels:
        phrase = f"a {label}."
        spans.append((pos + 2, pos + 2 + len(label)))
        parts.append(phrase)
        pos += len(phrase) + 1
    return " ".join(parts), spans


def _token_groups(offsets, spans) -> list[list[int]]:
    """Token indices whose characters fall inside each label span."""
    groups = []
    for s0, s1 in spans:
        groups.append([t for t, (a, b) in enumerate(offsets) if b > a and a >= s0 and b <= s1])
    return groups


def _cxcywh_to_xyxy(boxes):
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).clamp(0, 1)


class Grounder(Stage):
    """``(PIL image, [labels])`` items in, box lists (or ``Skip("no objects")``) out."""

    _model_attrs = ("model", "processor")

    def _load(self) -> None:
        import torch
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.processor = AutoProcessor.from_pretrained(self.cfg.model)
        # fp32 weights, bf16 autocast on CUDA: parts of the model (sine position embeddings, the
        # deformable attention's sampling) build fp32 tensors that bf16 weights would not accept.
        self.model = GroundingDinoForObjectDetection.from_pretrained(self.cfg.model, dtype=torch.float32)
        self.model.to(self.device).eval()
        log.info("Grounding DINO %s on %s (%s)", self.cfg.model, self.device, self.dtype)

    def _batch(self, batch: list) -> list:
        import torch

        out: list = [None] * len(batch)
        todo = []
        for i, (image, labels) in enumerate(batch):
            labels = list(dict.fromkeys(str(x).strip().lower() for x in labels if str(x).strip()))
            if not labels:
                out[i] = Skip("no objects")
            else:
                todo.append((i, image.convert("RGB"), labels[:self.cfg.max_labels]))
        if not todo:
            return out
        prompts = [make_prompt(labels) for _, _, labels in todo]
        enc = self.processor(images=[im for _, im, _ in todo], text=[p for p, _ in prompts],
                             return_tensors="pt", padding=True)
        offsets = self.processor.tokenizer([p for p, _ in prompts], return_offsets_mapping=True,
                                           padding=True)["offset_mapping"]
        enc = enc.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.dtype):
            res = self.model(**enc)
        probs = res.logits.float().sigmoid().cpu()
        boxes = _cxcywh_to_xyxy(res.pred_boxes.float().cpu())
        for row, ((i, _, labels), (_, spans)) in enumerate(zip(todo, prompts)):
            out[i] = self._select(probs[row], boxes[row], labels, _token_groups(offsets[row], spans))
        return out

    def _select(self, probs, boxes, labels: list[str], groups: list[list[int]]) -> list[dict]:
        """Per query: the best label by its best token; thresholds, per-label NMS, best first."""
        import torch
        from torchvision.ops import batched_nms

        zeros = torch.zeros(len(probs))
        best = torch.stack([probs[:, g].max(-1).values if g else zeros for g in groups], -1)
        mean = torch.stack([probs[:, g].mean(-1) if g else zeros for g in groups], -1)
        score, label = best.max(-1)
        keep = (score >= self.cfg.box_threshold) & (mean.gather(1, label[:, None])[:, 0] >= self.cfg.text_threshold)
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        idx = keep.nonzero().flatten()
        if len(idx) and self.cfg.nms_iou < 1.0:
            idx = idx[batched_nms(boxes[idx], score[idx], label[idx], self.cfg.nms_iou)]
        idx = idx[score[idx].argsort(descending=True, stable=True)][:self.cfg.max_boxes]
        return [{"box": [round(float(v), 4) for v in boxes[q]], "label": labels[int(label[q])],
                 "score": round(float(score[q]), 4), "source": SOURCE} for q in idx]


def box_in_mask(box, mask) -> float:
    """The fraction of ``box`` (a box dict or 4 fractions) lying inside ``mask`` (H x W, non-zero = in).

    For the verify step: an edited object counts as found when a box of its new label lies
    mostly inside the edit's mask.
    """
    import numpy as np

    m = np.asarray(mask) > 0
    h, w = m.shape
    x0, y0, x1, y1 = box["box"] if isinstance(box, dict) else box
    c0, r0 = int(np.floor(x0 * w)), int(np.floor(y0 * h))
    c1, r1 = max(c0 + 1, int(np.ceil(x1 * w))), max(r0 + 1, int(np.ceil(y1 * h)))
    region = m[max(0, r0):min(h, r1), max(0, c0):min(w, c1)]
    return float(region.mean()) if region.size else 0.0
