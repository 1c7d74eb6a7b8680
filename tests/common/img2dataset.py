"""Shards in img2dataset's output layout, for the tests that read them as an input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tests.builders.quality.conftest import texture


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_img2dataset_shards(out: Path, *, shards: int = 2, per_shard: int = 6) -> Path:
    """img2dataset's output folder: numbered tars of jpg/txt/json, a parquet and _stats.json beside."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for s in range(shards):
        with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
            for _ in range(per_shard):
                key = f"{s:05d}{n:04d}"
                buf = io.BytesIO()
                texture(n).save(buf, format="JPEG", quality=90)
                caption = f"an aerial image of fields and roads number {n}"
                meta = {"url": f"https://example.com/{n}.jpg", "key": key, "status": "success",
                        "caption": caption, "width": 64, "height": 64, "error_message": None}
                _add(tar, f"{key}.jpg", buf.getvalue())
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
                n += 1
        (out / f"{s:05d}.parquet").write_bytes(b"PAR1 not read by the pipeline PAR1")
        (out / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
    return out
