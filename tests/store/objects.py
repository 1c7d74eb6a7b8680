"""The files of a dataset on the S3 test server or on disk, as ``{relative name: bytes}``, and
their comparable form (what names the output location left out)."""
from __future__ import annotations

import json
from pathlib import Path


def local_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the lock."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "build.lock"}


def store_files(server, url: str) -> dict[str, bytes]:
    """Every object under ``url`` on the test server, read now (no cached listing)."""
    server.fs.invalidate_cache()
    base = url.split("://", 1)[1].rstrip("/")
    return {p[len(base) + 1:]: server.fs.cat_file(p) for p in sorted(server.fs.find(base))}


def comparable(files: dict[str, bytes], *, rerun: bool = False) -> dict[str, object]:
    """The files with what names the output location (the resolved config's ``output``, and its
    ``workers``, which a run may change) left out;
    ``rerun``: and the summary's count of shards kept from an earlier run."""
    out: dict[str, object] = {}
    for name, data in files.items():
        if name.endswith(".json") and name.rsplit("/", 1)[-1] in ("dataset.json", "build_summary.json"):
            d = json.loads(data)
            d.pop("config", None)
            if rerun:
                d.pop("resumed_shards", None)
            for split in d.get("splits", {}).values():
                split.pop("config", None)
            out[name] = d
        elif name == "build_config.yaml":
            out[name] = [line for line in data.decode().splitlines() if not line.startswith(("output:", "workers:"))]
        else:
            out[name] = data
    return out
