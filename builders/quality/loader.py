"""Worker-side stages: read shard parts, decode, measure image quality and sanity, batch.

Decoding is the CPU-heavy part, so it runs in DataLoader worker processes while the main process
runs the model. Work is split into *parts*: with at least as many shards as workers each shard is
one part (read by one worker); with fewer shards each shard is striped into ``num_workers`` parts
(worker ``w`` decodes samples ``i % num_workers == w``, reading the tar but decoding only its share).
After its last sample a part emits a ``{"__done__": ShardPart}`` marker, carried on the next batch,
so the main process knows when a shard's scores are complete and its sidecar can be written.

Each stage is a small generator with a curried ``wds_tools.stages.stage`` wrapper.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from builders.quality.image_quality import ImageQualityConfig, image_quality_scores
from builders.quality.sanity import has_claims, sanity_scores
from clip_models.preprocess import resize_center_crop
from wds_tools.images import check_image_pixels
from wds_tools.malloc import keep_freed_memory
from wds_tools.quality_record import sample_captions
from wds_tools.reader import SkipLog, iter_tar_samples
from wds_tools.sample import IMAGE_EXTS, SOURCES
from wds_tools.shard_identity import shard_identity
from wds_tools.stages import stage

log = logging.getLogger(__name__)
_IMAGE_EXTS = IMAGE_EXTS + ("jpeg",)
SANITY_MAX_SIDE = 128  # M2B on 256 px takes ~25 ms, on 128 px ~5 ms


@dataclass(frozen=True)
class ShardPart:
    """Samples ``i % parts == part`` of shard ``url``."""

    url: str
    part: int = 0
    parts: int = 1


def plan_parts(urls: Sequence[str], num_workers: int) -> list[list[ShardPart]]:
    """Parts per worker (one list when ``num_workers`` is 0: everything in-process)."""
    n = max(1, num_workers)
    plan: list[list[ShardPart]] = [[] for _ in range(n)]
    if len(urls) >= n:
        for i, url in enumerate(urls):
            plan[i % n].append(ShardPart(url))
    else:
        for url in urls:
            for w in range(n):
                plan[w].append(ShardPart(url, w, n))
    return plan


def read_parts(parts: Iterable[ShardPart], *, allow_pipe: bool = False) -> Iterator[dict]:
    """Raw samples of each part (with ``__index__`` = position in the shard), then a done marker.

    The marker lists every key of the shard in order (a part reads them all, decoding only its
    share), so the sidecar can be checked against the shard without reading it again. Part 0's
    marker also carries the shard's ``identity`` (size and sha256, hashed here in the worker, from
    the page cache the read just filled), which the sidecar records.
    A shard that cannot be read, or is cut or corrupt part-way, ends its part with ``error`` set
    instead of crashing.
    """
    for p in parts:
        skips = SkipLog()
        count = 0
        keys: list[str] = []
        identity = None
        try:
            for i, sample in enumerate(iter_tar_samples(p.url, allow_pipe=allow_pipe, skips=skips)):
                keys.append(sample["__key__"])
                if i % p.parts == p.part:
                    sample["__index__"] = i
                    count += 1
                    yield sample
            identity = shard_identity(p.url) if p.part == 0 else None
        except Exception as e:  # noqa: BLE001 - one unreadable shard must not end the run
            log.error("cannot read %s: %s", p.url, e)
            yield {"__done__": p, "count": count, "skips": skips.as_dict(), "keys": keys,
                   "error": f"{type(e).__name__}: {e}"}
            continue
        # the reader ends a cut tar with a counted skip; its sidecar would be short, so the shard
        # fails (no sidecar, retried on the next run) instead
        cut = "cut or corrupt tar: samples after the damage are unreadable" if skips.counts.get("corrupt_tar") else None
        if cut:
            log.error("cannot read all of %s: %s", p.url, cut)
        yield {"__done__": p, "count": count, "skips": skips.as_dict(), "keys": keys, "error": cut,
               "identity": identity}


def decode_rgb(data: bytes) -> torch.Tensor:
    """Image bytes -> uint8 ``(3, H, W)``; torchvision's decoders first, PIL for anything else."""
    check_image_pixels(data)  # header only: a decompression bomb raises before any decode
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except Exception:  # noqa: BLE001 - fall back to PIL, which raises on truly broken bytes
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)


clip_input = resize_center_crop  # open_clip's eval transform on uint8 (bicubic, centre crop)


def _read_meta(sample: dict, reasons: list[str]) -> dict:
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (ValueError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("source") not in SOURCES:
        reasons.append("bad_meta")
        return meta if isinstance(meta, dict) else {}
    return meta


def _read_caption(sample: dict, reasons: list[str]) -> str:
    if "txt" not in sample:
        reasons.append("missing_caption")
        return ""
    try:
        caption = sample["txt"].decode("utf-8").strip()
    except UnicodeDecodeError:
        reasons.append("undecodable_caption")
        return ""
    if not caption:
        reasons.append("missing_caption")
    return caption


def _captions(caption: str, meta: dict) -> list[str]:
    """The primary caption and the other captions in meta, without repeats."""
    extra = meta.get("captions") if isinstance(meta.get("captions"), list) else []
    return list(dict.fromkeys([caption] + [c for c in extra if isinstance(c, str) and c.strip()]))


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def valid_box(b) -> bool:
    """A recorded box the sanity checks can use: four finite numbers, a numeric area if any."""
    return (isinstance(b, dict) and isinstance(b.get("box"), list) and len(b["box"]) == 4
            and all(_number(v) for v in b["box"]) and _number(b.get("area", 1.0)))


def bad_boxes(meta: dict) -> list:
    """The recorded boxes that are not valid (``boxes`` itself when it is not a list)."""
    boxes = meta.get("boxes")
    if boxes is None:
        return []
    if not isinstance(boxes, list):
        return [boxes]
    return [b for b in boxes if not valid_box(b)]


def _boxes(meta: dict, captions: list[str], img: torch.Tensor, compute: bool, detect: Callable | None) -> list[dict]:
    boxes = meta.get("boxes")
    if isinstance(boxes, list):
        return [b for b in boxes if valid_box(b)]
    if not compute or detect is None or not has_claims(captions):
        return []  # nothing in the captions to check: skip the detector
    h, w = img.shape[-2:]
    if max(h, w) > SANITY_MAX_SIDE:
        img = TF.resize(img, [SANITY_MAX_SIDE * h // max(h, w), SANITY_MAX_SIDE * w // max(h, w)], antialias=True)
    return detect(img.permute(1, 2, 0).numpy())


def prepare_samples(
    src: Iterable[dict], *, clip_size: int, iq_size: int, compute_boxes: bool = True,
    min_box_area: float = 0.0, sanity: bool = True, quality: bool = True,
) -> Iterator[dict]:
    """Raw sample -> ``{key, url, index, source, class, caption, captions, texts, reasons, scores,
    clip_image, iq_image}``.

    ``captions`` are the ``{"source"}`` entries of the captions Stage 2 draws from
    (``wds_tools.quality_record.sample_captions``); ``texts`` the distinct captions to score, the
    primary caption first.

    A missing or undecodable image, a missing caption or bad metadata becomes a reason; the sample
    still flows on (its sidecar record must exist) but gets no CLIP score. ``sanity=False`` or
    ``quality=False`` skips those measures (their scores stay None).
    """
    detect = None
    if compute_boxes:
        from builders.real.m2b import detect_regions as detect
    for sample in src:
        if "__done__" in sample:
            yield sample
            continue
        reasons: list[str] = []
        meta = _read_meta(sample, reasons)
        bad = bad_boxes(meta)
        if bad:
            # e.g. a non-numeric coordinate: the metadata cannot be trusted, so the sample is a
            # hard fail with its reason instead of an exception that ends the run
            log.warning("skipped bad_boxes (key=%s, url=%s): %r", sample["__key__"], sample["__url__"], bad[0])
            reasons.append("bad_boxes")
        caption = _read_caption(sample, reasons)
        ext = next((e for e in _IMAGE_EXTS if e in sample), None)
        img = None
        if ext is None:
            reasons.append("missing_image")
        else:
            try:
                img = decode_rgb(sample[ext])
            except Exception as e:  # noqa: BLE001 - any decoder error is a counted fail reason
                log.warning("undecodable image %s in %s: %s", sample["__key__"], sample["__url__"], e)
                reasons.append("undecodable_image")
        scores: dict = {}
        if img is not None and caption and sanity:
            captions = _captions(caption, meta)
            boxes = _boxes(meta, captions, img, compute_boxes, detect)
            boxes = [b for b in boxes if float(b.get("area", 1.0)) >= min_box_area]
            scores.update(sanity_scores(captions, boxes, meta.get("verify")))
        else:
            scores.update({"sanity": None, "sanity_count": None, "sanity_spatial": None})
        drawn = sample_captions(meta, caption)
        yield {
            "key": sample["__key__"], "url": sample["__url__"], "index": sample["__index__"],
            "source": meta.get("source"), "class": _class(meta), "caption": caption,
            "captions": [{"source": src, "text": text} for text, src in drawn],
            "texts": list(dict.fromkeys([caption] + [text for text, _ in drawn])) if caption else [],
            "reasons": reasons, "scores": scores,
            "clip_image": None if img is None else clip_input(img, clip_size),
            "iq_image": None if img is None or not quality else TF.resize(img, [iq_size, iq_size], antialias=True),
        }


def _class(meta: dict) -> str | None:
    cls = meta.get("class")
    return None if cls is None else str(cls)


def batch_samples(
    src: Iterable[dict], *, batch_size: int, iq_cfg: ImageQualityConfig, tokenizer: Callable,
    iq_in_worker: bool = True,
) -> Iterator[dict]:
    """Group prepared samples; image quality runs vectorised per batch, captions tokenised per batch.

    Batch: ``records`` (plain dicts), ``clip_images`` uint8 ``(n, 3, S, S)`` for the ``n`` records
    listed in ``clip_index`` (those with an image and a caption), ``tokens`` for every caption of
    those records with ``text_owner`` (the row of its image), ``done`` markers.
    With ``iq_in_worker=False`` the batch carries ``iq_images``/``iq_index`` instead of the scores
    (on a GPU the measures are nearly free there, and the CPU workers only decode).
    """
    pending: list[dict] = []
    done: list[dict] = []
    for item in src:
        if "__done__" in item:
            done.append(item)
            if pending:
                continue
            yield _collate([], done, iq_cfg, tokenizer, iq_in_worker)
            done = []
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            yield _collate(pending, done, iq_cfg, tokenizer, iq_in_worker)
            pending, done = [], []
    if pending or done:
        yield _collate(pending, done, iq_cfg, tokenizer, iq_in_worker)


def fill_image_quality(records: list[dict], index: list[int], images: torch.Tensor,
                       iq_cfg: ImageQualityConfig) -> None:
    """Compute the image-quality scores of ``images`` (on their device) into ``records[index[j]]``."""
    if not index:
        return
    iq = {k: v.tolist() for k, v in image_quality_scores(images, iq_cfg).items()}
    for j, i in enumerate(index):
        records[i]["scores"].update({k: v[j] for k, v in iq.items()})


def _collate(items: list[dict], done: list[dict], iq_cfg: ImageQualityConfig, tokenizer: Callable,
             iq_in_worker: bool = True) -> dict:
    with_image = [i for i, it in enumerate(items) if it["iq_image"] is not None]
    iq_images = torch.stack([items[i]["iq_image"] for i in with_image]) if with_image else None
    if iq_in_worker:
        fill_image_quality(items, with_image, iq_images, iq_cfg)
    for it in items:
        if it["iq_image"] is None:
            it["scores"].update({k: None for k in ("brightness", "contrast", "blur", "border_fraction",
                                                   "blank_fraction", "quality")})
    clip_index = [i for i, it in enumerate(items) if it["clip_image"] is not None and it["caption"]]
    images = (torch.stack([items[i]["clip_image"] for i in clip_index]) if clip_index
              else torch.empty(0, 3, 1, 1, dtype=torch.uint8))
    texts = [t for i in clip_index for t in items[i]["texts"]]
    owner = [j for j, i in enumerate(clip_index) for _ in items[i]["texts"]]
    tokens = tokenizer(texts) if texts else torch.empty(0, 1, dtype=torch.long)
    records = [{k: it[k] for k in ("key", "url", "index", "source", "class", "caption", "captions", "texts",
                                   "reasons", "scores")} for it in items]
    batch = {"records": records, "clip_images": images, "tokens": tokens, "clip_index": clip_index,
             "text_owner": torch.tensor(owner, dtype=torch.long), "done": done}
    if not iq_in_worker:  # the scoring process measures them on its device
        batch.update(iq_images=iq_images, iq_index=with_image)
    return batch


def score_batches(src: Iterable[dict], *, scorer: Callable) -> Iterator[dict]:
    """Fill each batch's CLIP scores where it is made and drop its images and tokens.

    ``scorer(images, tokens, owner)`` returns one cosine per caption (against the image in row
    ``owner``); ``scores.clip`` is the primary caption's, each ``captions[k].clip`` its own. A batch
    marked ``scored`` tells the scoring process to take the scores as they are.
    """
    for batch in src:
        sims = scorer(batch["clip_images"], batch["tokens"], batch["text_owner"]).tolist()
        cosine: dict[int, dict[str, float]] = {}
        pos = 0
        for i in batch["clip_index"]:
            texts = batch["records"][i]["texts"]
            cosine[i] = dict(zip(texts, sims[pos:pos + len(texts)]))
            pos += len(texts)
        for i, r in enumerate(batch["records"]):
            cos = cosine.get(i, {})
            r["scores"]["clip"] = cos.get(r["caption"])
            r["captions"] = [{"source": c["source"], "clip": cos.get(c["text"])} for c in r["captions"]]
            del r["texts"]
        # fresh empty tensors: a [:0] view would still ship the whole storage to the main process
        batch.update(clip_images=torch.empty(0, dtype=torch.uint8), tokens=torch.empty(0, dtype=torch.long),
                     text_owner=torch.empty(0, dtype=torch.long), clip_index=[], scored=True)
        yield batch


read = stage(read_parts)
prepared = stage(prepare_samples)
batched = stage(batch_samples)
scored = stage(score_batches)


class QualityStream(torch.utils.data.IterableDataset):
    """Batches for the scorer; each DataLoader worker runs its own list of parts.

    With ``scorer`` set, each worker also runs CLIP on its batches (see ``score_batches``).
    """

    def __init__(self, *, plan: list[list[ShardPart]], clip_size: int, iq_cfg: ImageQualityConfig,
                 tokenizer: Callable, batch_size: int, compute_boxes: bool = True,
                 min_box_area: float = 0.0, allow_pipe: bool = False, iq_in_worker: bool = True,
                 sanity: bool = True, quality: bool = True, scorer: Callable | None = None):
        super().__init__()
        self.sanity, self.quality, self.scorer = sanity, quality, scorer
        self.iq_in_worker = iq_in_worker
        self.plan, self.clip_size, self.iq_cfg, self.tokenizer = plan, clip_size, iq_cfg, tokenizer
        self.batch_size, self.compute_boxes, self.min_box_area = batch_size, compute_boxes, min_box_area
        self.allow_pipe = allow_pipe

    def __iter__(self) -> Iterator[dict]:
        keep_freed_memory()  # decoding allocates image-sized buffers per sample
        info = torch.utils.data.get_worker_info()
        if info is None:
            parts = [p for worker_parts in self.plan for p in worker_parts]
        else:
            torch.set_num_threads(1)  # the workers already fill the cores
            parts = self.plan[info.id] if info.id < len(self.plan) else []
        stream = read_parts(parts, allow_pipe=self.allow_pipe)
        stream = prepare_samples(stream, clip_size=self.clip_size, iq_size=self.iq_cfg.size,
                                 compute_boxes=self.compute_boxes, min_box_area=self.min_box_area,
                                 sanity=self.sanity, quality=self.quality)
        stream = batch_samples(stream, batch_size=self.batch_size, iq_cfg=self.iq_cfg, tokenizer=self.tokenizer,
                               iq_in_worker=self.iq_in_worker)
        return stream if self.scorer is None else score_batches(stream, scorer=self.scorer)
