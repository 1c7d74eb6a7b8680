"""The files of a dataset on the S3 test server or on disk, as ``{relative name: bytes}``, and
their comparable form (what names the output location left out); the tiny Stage 1 chain (real
build -> synthetic build -> filter -> materialize) the S3 tests run on the server and on disk."""
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


REAL_ARGS = ["size=32", "images_per_shard=2", "workers=1", "m2b.analysis_size=32", "augment.per_image=1",
             "zoom.enabled=false", "preview=false", "splits.val_fraction=0.5", "splits.test_fraction=0.0"]


def demo_tiles(tmp_path: Path) -> Path:
    """The builders' demo image tree at test size: the real builder's input."""
    from builders.demo_images import make_demo_tree

    return make_demo_tree(tmp_path / "tiles", per_class=2, size=32, seed=3)


def shard_keys(url_or_dir: str) -> list[str]:
    """The sorted sample keys of every shard ``url_or_dir`` names."""
    from wds_tools.reader import iter_shard
    from wds_tools.urls import expand_urls

    return sorted(s["__key__"] for u in expand_urls(str(url_or_dir)) for s in iter_shard(u))


def build_chain(root: str, tiles: Path, report: Path, model_overrides: list[str]) -> dict:
    """real build -> synthetic build -> filter -> materialize, every output under ``root``
    (``real/``, ``syn/``, ``mat/``); the keys of each set and of what the filter kept."""
    from builders.quality.run import run as run_filter
    from builders.real.build import build_real
    from builders.real.config import RealBuildConfig
    from builders.synthetic.build import build_synthetic
    from builders.synthetic.config import SyntheticBuildConfig
    from tests.builders.quality.conftest import tiny_config
    from tests.builders.synthetic.build_fixtures import FAST, REPO, TINY
    from wds_tools.config import load_config
    from wds_tools.materialize import MaterializeConfig, materialize

    real, syn, mat = f"{root}/real", f"{root}/syn", f"{root}/mat"
    build_real(load_config(RealBuildConfig, REPO / "configs/build/real.yaml",
                           [f"input={tiles}", f"output={real}", *REAL_ARGS]), progress=False)
    build_synthetic(load_config(SyntheticBuildConfig, TINY, [f"input={real}/train", f"output={syn}", *FAST,
                                                             *model_overrides, "preview=true"]), progress=False)
    sets = [f"{real}/train", f"{syn}/train"]
    filtered = run_filter(tiny_config(report.parent, f"input=[{','.join(sets)}]", f"output={report}",
                                      "selection.min_clip_score_synthetic=0.0"))
    materialize(MaterializeConfig(input=sets, output=mat, maxcount=4))
    return {"real": shard_keys(f"{real}/train") + shard_keys(f"{real}/val"), "synthetic": shard_keys(f"{syn}/train"),
            "kept": filtered["kept"], "kept_keys": kept_keys(sets), "materialized": shard_keys(mat)}


def kept_keys(sets: list[str]) -> list[str]:
    """Keys the filter's sidecars (read beside the shards) select."""
    from wds_tools import quality_record
    from wds_tools.reader import iter_shard
    from wds_tools.urls import expand_urls

    return sorted(s["__key__"] for d in sets for u in expand_urls(d)
                  for s in iter_shard(u, sidecars=[quality_record.SIDECAR])
                  if quality_record.keep(quality_record.decode_record(s[quality_record.MEMBER])))
