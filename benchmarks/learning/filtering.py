"""The quality filter scored by the stand-in base, and the synthetic set when it exists."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from wds_tools.config import parse_cli

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
FILTER_DEFAULTS = REPO / "configs" / "filter" / "default.yaml"


def run_filter(train_dir: str | list[str], *, base: str, report_dir: Path, keep_all: bool = False,
               rescore: bool = True, extra: list[str] | tuple[str, ...] = ()) -> dict:
    """Score the train shards with the base (production filter defaults, caption floor off); sidecars beside them.

    ``keep_all`` scores and keeps everything: the tiny random-weight generators draw noise, which
    a CLIP-score cut would mostly drop, and the arm measures what such a set does when kept.
    ``rescore=False`` keeps whole sidecars' scores and only selects again (``extra``: selection
    overrides, e.g. ``selection.per_class=true``)."""
    from builders.quality.config import QualityConfig
    from builders.quality.run import run

    dirs = [train_dir] if isinstance(train_dir, str) else train_dir
    cfg = parse_cli(QualityConfig, ["--config", str(FILTER_DEFAULTS),
                                    f"input=[{','.join(dirs)}]", f"output={report_dir}",
                                    f"rescore={str(rescore).lower()}",
                                    f"model.name={REPO / 'configs/models/tiny-clip.json'}",
                                    f"model.pretrained={base}", "model.device=cpu", "model.precision=fp32",
                                    "model.batch_size=64", "loader.num_workers=1",
                                    # the per-caption floor is in RemoteCLIP's cosine range; a tiny
                                    # stand-in's cosines sit elsewhere, so only the top-share cut acts
                                    "selection.min_clip_score_caption=-1.0",
                                    *(["selection.keep_top_percent=1.0", "selection.min_clip_score_synthetic=-1.0"]
                                      if keep_all else []), *extra],
                    prog="bench_learning", description="", default_config=None)
    report = run(cfg)
    return {**{k: report.get(k) for k in ("total", "kept", "dropped", "threshold")},
            "by_source": report.get("by_source"),
            "kept_share_by_class": {k: round(v["kept_share"], 3) for k, v in (report.get("by_class") or {}).items()}}


def cached_filter(train_dir: str, *, base: str, report_dir: Path, reuse: bool) -> dict:
    """:func:`run_filter`, or with ``reuse`` its summary saved by an earlier run scored by the same
    base file with the same filter defaults (a changed cut selects again) on the same shards
    (sidecars beside them untouched since)."""
    from benchmarks.learning.runs import file_digest

    saved = report_dir / "bench_filter_summary.json"
    key = {"train_dir": str(train_dir), "base": file_digest(Path(base)), "filter": file_digest(FILTER_DEFAULTS)}
    if reuse and saved.exists():
        doc = json.loads(saved.read_text())
        if doc.get("key") == key:
            log.info("reusing the filter selection of %s", report_dir)
            return doc["summary"]
    summary = run_filter(train_dir, base=base, report_dir=report_dir)
    saved.write_text(json.dumps({"key": key, "summary": summary}))
    return summary


def reselect_copy(train_dir: str, folder: Path, *, base: str, extra: list[str]) -> tuple[str, dict]:
    """A copy of the scored ``train_dir`` (shards and sidecars) selected again with ``extra``
    (another cut on the same scores, leaving the original's selection as it is); returns
    (the copy's folder, its filter summary)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(train_dir, folder)
    return str(folder), run_filter(str(folder), base=base, report_dir=folder.parent / f"{folder.name}_report",
                                   rescore=False, extra=extra)


def synthetic_unavailable() -> str | None:
    """None when ``builders.synthetic`` can be imported, else why not."""
    if importlib.util.find_spec("builders.synthetic") is None:
        return "builders.synthetic does not exist in this tree"
    try:
        importlib.import_module("builders.synthetic")
    except Exception as e:  # any import failure means the arm cannot run
        return f"builders.synthetic does not import: {e!r}"
    return None


def build_synthetic(train_dir: str, out: Path, *, extra: list[str]) -> str:
    """Run ``python -m builders.synthetic`` on the train shards with the tiny random-weight models of
    ``scripts/tiny_synthetic_models.py`` (the demo's); returns the train shard folder."""
    models = subprocess.run([sys.executable, str(REPO / "scripts" / "tiny_synthetic_models.py"),
                             "--output", str(out.parent / "synthetic_models")],
                            capture_output=True, text=True, timeout=600, check=True).stdout.split()
    cmd = [sys.executable, "-m", "builders.synthetic", "--config", str(REPO / "configs/build/synthetic-tiny.yaml"),
           "--input", train_dir, "--output", str(out), *models, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"builders.synthetic failed (rc {proc.returncode}): {proc.stderr[-1500:]}")
    return str(out / "train")
