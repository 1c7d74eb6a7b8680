"""Per-chunk intermediates in the work folder: how a killed build resumes at its stage.

Layout (one folder per output shard, one per chunk of its source images)::

    WORK/synthetic-train-000000/chunk-0000/
        upscale/<key>.png      upscale.json   {key: null | {"skip": reason}}
        describe.json          {key: {"caption", "objects", "raw", "fallback"} | {"skip": reason}}
        ground.json            {key: [box, ...] | {"skip": reason}}
        segment/<key>.png      segment.json   {key: {"masks": n, "empty": [i, ...]} | {"skip": reason}}
        generate/<out key>.png generate.json  {"results": {out key: plan dict | {"skip": reason}},
                                               "plan_skips": {key: [reason]}, "mode_tally": {...}}
        verify.json            {out key: verify dict | null}

A stage's JSON is written atomically after all its files, so it is the stage's "done" mark; a
chunk whose JSON is missing runs that stage again from the previous stage's files. A work file
that cannot be read back (garbage JSON, a cut PNG, a mask stack of the wrong size) raises
:class:`DamagedWork`, naming the file and its stage: the unit then runs that stage and every later
one again for that chunk (``builders.synthetic.unit``). Every image
is stored losslessly (PNG) and read back as it was written, so a resumed run ends with the same
bytes as an uninterrupted one. An image's masks are one PNG, stacked top to bottom: a file per
box made 16 files per source image with the tiny models' many boxes, and creating files was
most of the writer thread's time (profiled), time a second worker needs for itself.

Images are encoded and written by one background thread per process, so the PNG work of a
chunk overlaps the next model call (PIL and torch both release the GIL); a stage's JSON waits
for its chunk's images, so the "done" mark still vouches only for files on disk.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from wds_tools.atomic import temp_path_for, write_json

_IMAGE_STAGES = {"upscale": "upscale", "segment": "segment", "generate": "generate"}
# What a damaged PNG raises in PIL: UnidentifiedImageError and "truncated" are OSErrors, a broken
# chunk a SyntaxError, a cut stream EOFError or ValueError.
_UNREADABLE = (OSError, SyntaxError, EOFError, ValueError)


class DamagedWork(ValueError):
    """A work file of ``stage`` in chunk folder ``chunk`` that cannot be read back."""

    def __init__(self, chunk: Path, stage: str, path: Path, problem: str):
        super().__init__(f"work file {path} is unreadable: {' '.join(problem.split())[:300]}")
        self.chunk, self.stage, self.path = chunk, stage, path
_WRITER: ThreadPoolExecutor | None = None
_LOCK = threading.Lock()
_PENDING: dict[Path, list[Future]] = {}  # chunk folder -> its writes in flight, in order


def _writer() -> ThreadPoolExecutor:
    """This process's writer thread (made on first use, so a forked worker makes its own)."""
    global _WRITER
    if _WRITER is None:
        _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="work-writer")
    return _WRITER


def _submit(root: Path, fn, *args) -> None:
    with _LOCK:
        _PENDING.setdefault(root, []).append(_writer().submit(fn, *args))


def _wait(root: Path) -> None:
    """Wait for ``root``'s writes in flight; the first failure raises here."""
    with _LOCK:
        pending = _PENDING.pop(root, [])
    for fut in pending:
        fut.result()


def drain() -> None:
    """Wait for every write in flight (the end of a stage, before a shard is written)."""
    with _LOCK:
        roots = list(_PENDING)
    for root in roots:
        _wait(root)


def _save_png(path: Path, img: Image.Image) -> None:
    """Write-then-rename without fsync: a kill -9 loses nothing the page cache holds, and the
    stage JSON (fsynced) is written after every image it vouches for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    tmp = temp_path_for(path)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def _mark_done(path: Path, results: dict, before: list[Future]) -> None:
    """The stage JSON, only when every image written before it made it to disk (same thread, so
    they have all finished)."""
    for fut in before:
        if fut.exception() is not None:
            raise RuntimeError(f"not marking {path} done: an image of it failed") from fut.exception()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, results)


class ChunkWork:
    """The intermediates of one chunk."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def done(self, stage: str) -> bool:
        _wait(self.root)
        return (self.root / f"{stage}.json").exists()

    def read(self, stage: str) -> dict:
        """``stage``'s results; :class:`DamagedWork` when its JSON is not a readable object."""
        _wait(self.root)
        path = self.root / f"{stage}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DamagedWork(self.root, stage, path, f"{type(e).__name__}: {e}") from None
        if not isinstance(data, dict) or (stage == "generate" and not {"results", "plan_skips"} <= set(data)):
            raise DamagedWork(self.root, stage, path, "not the stage's JSON object")
        return data

    def write(self, stage: str, results: dict) -> None:
        """Mark ``stage`` done with its per-key results, after its image files (queued behind them)."""
        with _LOCK:
            before = list(_PENDING.get(self.root, []))
        _submit(self.root, _mark_done, self.root / f"{stage}.json", results, before)

    def clear(self, stage: str) -> None:
        """Forget ``stage``'s results (a rerun with ``stages=``)."""
        _wait(self.root)
        (self.root / f"{stage}.json").unlink(missing_ok=True)
        sub = _IMAGE_STAGES.get(stage)
        if sub and (self.root / sub).is_dir():
            shutil.rmtree(self.root / sub)

    def _png(self, stage: str, name: str) -> Path:
        return self.root / _IMAGE_STAGES[stage] / f"{name}.png"

    def save_image(self, stage: str, name: str, img: Image.Image) -> None:
        """Queue ``img`` for the writer thread (the stage's JSON is queued after it)."""
        _submit(self.root, _save_png, self._png(stage, name), img.copy())

    def load_image(self, stage: str, name: str) -> Image.Image:
        """A stage's image as written; :class:`DamagedWork` when it is missing or cannot be decoded."""
        _wait(self.root)
        path = self._png(stage, name)
        try:
            with Image.open(path) as im:
                im.load()
                return im.copy()
        except _UNREADABLE as e:  # FileNotFoundError included: the stage JSON vouched for it
            raise DamagedWork(self.root, stage, path, f"{type(e).__name__}: {e}") from None

    def save_masks(self, key: str, masks: list[np.ndarray]) -> None:
        """All of ``key``'s (H, W) boolean masks as one PNG of n*H rows, in order."""
        stack = np.concatenate([np.asarray(m, bool) for m in masks], axis=0)
        self.save_image("segment", key, Image.fromarray(stack.astype(np.uint8) * 255, "L"))

    def load_masks(self, key: str, count: int, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``key``'s ``count`` masks as a (count, H, W) boolean array; with ``shape`` (H, W of the
        image they belong to), a stack of another size is :class:`DamagedWork`, never a mask of
        the wrong size handed to generation."""
        path = self._png("segment", key)
        if not path.exists() and any(path.parent.glob(f"{key}-*.png")):
            raise FileNotFoundError(f"{path} is missing but {key}-<i>.png files are there: this work "
                                    "folder is from a build whose masks were one file per box; rerun "
                                    "with stages=[segment] (it and every later stage) or delete the work folder")
        stack = np.asarray(self.load_image("segment", key)) > 127
        if count <= 0 or stack.shape[0] % count:
            raise DamagedWork(self.root, "segment", path, f"it holds {stack.shape[0]} rows, "
                              f"not {count} masks of equal height")
        if shape is not None and stack.shape != (count * shape[0], shape[1]):
            raise DamagedWork(self.root, "segment", path, f"{count} masks of {stack.shape[0] // count} x "
                              f"{stack.shape[1]} px, not {shape[0]} x {shape[1]} (the image's size)")
        return stack.reshape(count, stack.shape[0] // count, stack.shape[1])


def unit_work(work_dir: str | Path, unit_name: str) -> Path:
    return Path(work_dir) / unit_name.removesuffix(".tar")


def chunk_work(work_dir: str | Path, unit_name: str, index: int) -> ChunkWork:
    return ChunkWork(unit_work(work_dir, unit_name) / f"chunk-{index:04d}")
