"""Safe shard reading: group tar members into samples, join sidecars, decode without unpickling.

Each function here is a small generator over plain iterables, with a curried wrapper
(``samples_from_shards``, ``decoded``, ``kept_if``) that slots into ``webdataset.DataPipeline``.
Importing this module does not import torch or webdataset.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator, Sequence

import msgpack
from PIL import Image

from wds_tools.images import check_image_pixels
from wds_tools.sample import IMAGE_EXTS
from wds_tools.skips import SkipLog
from wds_tools.stages import stage
from wds_tools.tar_members import iter_members
from wds_tools.urls import open_url, sidecar_url

log = logging.getLogger("wds_tools")

# Members that deserialise by unpickling (or may embed pickles): never decoded, always skipped.
UNSAFE_EXTS = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib", "dill", "npy", "npz"})


class SidecarMismatchError(ValueError):
    """A sidecar's keys do not line up with its shard's keys."""


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``), as WebDataset splits at the first dot."""
    head, _, base = name.rpartition("/")
    if "." not in base:
        return None
    key, ext = base.split(".", 1)
    return (f"{head}/{key}" if head else key), ext


def is_reserved_key(key: str) -> bool:
    """Keys whose base name starts with ``__`` are WebDataset metadata, not samples."""
    return key.rsplit("/", 1)[-1].startswith("__")


def is_meta_member(name: str) -> bool:
    """WebDataset's metadata members, ``__name__`` at the top of a tar (no dot): not samples, and
    skipped without a count (a sidecar's ``__shard__`` record, see ``wds_tools.sidecar``)."""
    return "/" not in name and "." not in name and len(name) > 4 and name[:2] == name[-2:] == "__"


def is_unsafe_ext(ext: str) -> bool:
    """True for member types that deserialise by unpickling: never decoded, always skipped."""
    return ext.rsplit(".", 1)[-1].lower() in UNSAFE_EXTS


def _unreadable(url: str, e: OSError, skips: SkipLog) -> None:
    skips.add("unreadable_shard", None, url)
    log.warning("skipped the rest of shard %s: %s: %s", url, type(e).__name__, e)


def iter_tar_samples(
    url: str, *, allow_pipe: bool = False, skips: SkipLog | None = None, skip_missing: bool = False,
) -> Iterator[dict]:
    """Yield raw samples ``{"__key__", "__url__", ext: bytes}`` from one tar, in file order.

    A cut or corrupt tar is a counted ``corrupt_tar`` skip: the samples before the damage are
    yielded, the sample it cut through is not (it may be missing members). A shard that is gone
    (or refused) when opened or while read raises, unless ``skip_missing``: then it is a counted
    ``unreadable_shard`` skip with its URL logged (a long training run outlives a deleted object).
    """
    skips = skips if skips is not None else SkipLog()
    current: dict | None = None
    try:
        stream = open_url(url, "rb", allow_pipe=allow_pipe)
    except (FileNotFoundError, PermissionError) as e:
        if not skip_missing:
            raise
        _unreadable(url, e, skips)
        return
    try:
        for member in iter_members(stream):
            if not member.is_file or is_meta_member(member.name):
                continue
            parts = split_member_name(member.name)
            if parts is None or is_reserved_key(parts[0]):
                skips.add("no_extension", member.name, url)
                continue
            key, ext = parts
            if is_unsafe_ext(ext):
                skips.add(f"unsafe_member_{ext}", key, url)
                continue
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            current[ext] = member.data
    except (tarfile.ReadError, EOFError, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            if not skip_missing:  # a store's message ("The specified key does not exist") names no URL
                raise type(e)(f"shard not found or refused: {url!r} ({e})") from e
            _unreadable(url, e, skips)
            return
        skips.add("corrupt_tar", current["__key__"] if current else None, url)
        log.warning("stopped reading %s: %s", url, e)
        current = None
    finally:
        stream.close()
    if current is not None:
        yield current


def iter_shard(
    url: str,
    *,
    sidecars: Sequence[str] = (),
    allow_pipe: bool = False,
    skips: SkipLog | None = None,
    skip_missing: bool = False,
) -> Iterator[dict]:
    """Yield the samples of one shard with each named sidecar's members joined by key
    (``skip_missing``: see :func:`iter_tar_samples`; it applies to the shard, not its sidecars)."""
    skips = skips if skips is not None else SkipLog()
    unreadable = skips.counts["unreadable_shard"]
    side_iters = [
        (sidecar_url(url, name), iter_tar_samples(sidecar_url(url, name), allow_pipe=allow_pipe, skips=skips))
        for name in sidecars
    ]
    for sample in iter_tar_samples(url, allow_pipe=allow_pipe, skips=skips, skip_missing=skip_missing):
        for side_url, it in side_iters:
            side = next(it, None)
            if side is None or side["__key__"] != sample["__key__"]:
                got = None if side is None else side["__key__"]
                raise SidecarMismatchError(
                    f"sidecar {side_url} does not match shard {url}: expected key "
                    f"{sample['__key__']!r}, found {got!r}"
                )
            sample.update((k, v) for k, v in side.items() if not k.startswith("__"))
        yield sample
    if skips.counts["unreadable_shard"] > unreadable:
        return  # the shard's rest is gone, so its sidecar's rest has nothing to match
    for side_url, it in side_iters:
        extra = next(it, None)
        if extra is not None:
            raise SidecarMismatchError(
                f"sidecar {side_url} has key {extra['__key__']!r} that shard {url} does not have"
            )


def shards_to_samples(
    src: Iterable[dict | str],
    *,
    sidecars: Sequence[str] = (),
    allow_pipe: bool = False,
    skips: SkipLog | None = None,
) -> Iterator[dict]:
    """Pipeline stage: shard URLs (or ``{"url": ...}`` dicts) in, joined raw samples out."""
    for item in src:
        url = item["url"] if isinstance(item, dict) else item
        yield from iter_shard(url, sidecars=sidecars, allow_pipe=allow_pipe, skips=skips)


samples_from_shards = stage(shards_to_samples)


def _decode_image(data: bytes, mode, max_pixels: int | None = None):
    if mode != "pil" and not callable(mode):
        raise ValueError(f"image decode mode must be 'pil', a callable (bytes -> image) or None, got {mode!r}")
    check_image_pixels(data, max_pixels=max_pixels)  # header only: refuse bombs before decoding
    if mode == "pil":
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    return mode(data)  # e.g. clip_models.preprocess.decode_uint8: tensors, without torch in wds_tools


def _decode_member(ext: str, data: bytes, image: str | None, max_pixels: int | None = None):
    last = ext.rsplit(".", 1)[-1].lower()
    if last in IMAGE_EXTS or last in ("jpeg", "tif", "tiff"):
        return _decode_image(data, image, max_pixels) if image else data
    if last in ("txt", "text"):
        return data.decode("utf-8")
    if last == "json":
        return json.loads(data)
    if last == "msgpack":
        # Plain msgpack with no ext hooks builds only basic types: nothing can execute.
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    if last in ("cls", "index"):
        return int(data)
    return data


def decode_sample(sample: dict, *, image: str | None = "pil", skips: SkipLog | None = None,
                  max_pixels: int | None = None) -> dict | None:
    """Decode members by extension; a corrupt member makes the sample a counted skip (``None``).

    An image above ``max_pixels`` (0/None: PIL's ``Image.MAX_IMAGE_PIXELS``) is a counted
    ``decompression_bomb`` skip, found from its header before any pixel is decoded.
    """
    out = {}
    for ext, data in sample.items():
        if ext.startswith("__"):
            out[ext] = data
            continue
        try:
            out[ext] = _decode_member(ext, data, image, max_pixels)
        except Image.DecompressionBombError as e:
            (skips or SkipLog()).add("decompression_bomb", sample.get("__key__"), sample.get("__url__"))
            log.debug("decompression bomb %s: %s", sample.get("__key__"), e)
            return None
        except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt member
            reason = f"corrupt_{ext}"
            (skips or SkipLog()).add(reason, sample.get("__key__"), sample.get("__url__"))
            log.debug("decode error %s: %s", reason, e)
            return None
    return out


def decode(src: Iterable[dict], *, image: str | None = "pil", skips: SkipLog | None = None,
           max_pixels: int | None = None) -> Iterator[dict]:
    """Pipeline stage: decode each sample, dropping (and counting) corrupt ones."""
    for sample in src:
        out = decode_sample(sample, image=image, skips=skips, max_pixels=max_pixels)
        if out is not None:
            yield out


decoded = stage(decode)


def keep_if(src: Iterable[dict], predicate, *, skips: SkipLog | None = None, reason: str = "not_kept"):
    """Pipeline stage: keep samples where ``predicate(sample)`` is true, counting the rest as ``reason``.
    (The quality filter's keep decisions are read by ``wds_tools.quality_record``, not here.)"""
    for sample in src:
        if predicate(sample):
            yield sample
        elif skips is not None:
            skips.add(reason, sample.get("__key__"), sample.get("__url__"))


kept_if = stage(keep_if)
