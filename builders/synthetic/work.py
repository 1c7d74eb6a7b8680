"""Per-chunk intermediates in the work folder: how a killed build resumes at its stage.

Layout (one folder per output shard, one per chunk of its source images)::

    WORK/synthetic-train-000000/chunk-0000/
        upscale/<key>.png      upscale.json   {key: null | {"skip": reason}}
        describe.json          {key: {"caption", "objects", "raw", "fallback"} | {"skip": reason}}
        ground.json            {key: [box, ...] | {"skip": reason}}
        segment/<key>-<i>.png  segment.json   {key: number of masks | {"skip": reason}}
        generate/<out key>.png generate.json  {out key: plan dict | {"skip": reason}}
        verify.json            {out key: verify dict | null}

A stage's JSON is written atomically after all its files, so it is the stage's "done" mark; a
chunk whose JSON is missing runs that stage again from the previous stage's files. Every image
is stored losslessly (PNG) and read back as it was written, so a resumed run ends with the same
bytes as an uninterrupted one.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from wds_tools.atomic import temp_path_for, write_json

_IMAGE_STAGES = {"upscale": "upscale", "segment": "segment", "generate": "generate"}


class ChunkWork:
    """The intermediates of one chunk."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def done(self, stage: str) -> bool:
        return (self.root / f"{stage}.json").exists()

    def read(self, stage: str) -> dict:
        return json.loads((self.root / f"{stage}.json").read_text())

    def write(self, stage: str, results: dict) -> None:
        """Mark ``stage`` done with its per-key results (after its image files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / f"{stage}.json", results)

    def clear(self, stage: str) -> None:
        """Forget ``stage``'s results (a rerun with ``stages=``)."""
        (self.root / f"{stage}.json").unlink(missing_ok=True)
        sub = _IMAGE_STAGES.get(stage)
        if sub and (self.root / sub).is_dir():
            shutil.rmtree(self.root / sub)

    def _png(self, stage: str, name: str) -> Path:
        return self.root / _IMAGE_STAGES[stage] / f"{name}.png"

    def save_image(self, stage: str, name: str, img: Image.Image) -> None:
        """Write-then-rename without fsync: a kill -9 loses nothing the page cache holds, and
        the stage JSON (fsynced) is written after every image it vouches for."""
        path = self._png(stage, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        tmp = temp_path_for(path)
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)

    def load_image(self, stage: str, name: str) -> Image.Image:
        with Image.open(self._png(stage, name)) as im:
            im.load()
            return im.copy()

    def save_mask(self, name: str, mask: np.ndarray) -> None:
        self.save_image("segment", name, Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, "L"))

    def load_mask(self, name: str) -> np.ndarray:
        return np.asarray(self.load_image("segment", name)) > 127


def unit_work(work_dir: str | Path, unit_name: str) -> Path:
    return Path(work_dir) / unit_name.removesuffix(".tar")


def chunk_work(work_dir: str | Path, unit_name: str, index: int) -> ChunkWork:
    return ChunkWork(unit_work(work_dir, unit_name) / f"chunk-{index:04d}")
