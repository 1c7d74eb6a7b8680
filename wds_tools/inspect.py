"""What shards hold: samples, member extensions, sources, sidecars and the range of each score.

    python -m wds_tools.inspect shards/real/ [more URLs ...] [--json]

Reads with the same safety rules as training: no ``pipe:`` unless ``--allow-pipe``, nothing unpickled.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Sequence

import msgpack

from wds_tools.config import prog_name, run_main
from wds_tools.manifest import classes_per_shard
from wds_tools.reader import SkipLog, iter_shard
from wds_tools.urls import expand_urls, url_to_fs


def find_sidecars(shard_url: str) -> list[str]:
    """Names of the sidecars that exist beside ``shard_url`` (``X.<name>.tar``)."""
    if shard_url.startswith("pipe:"):
        return []
    fs, path = url_to_fs(shard_url)
    stem = path[: -len(".tar")]
    names = []
    for p in fs.glob(f"{stem}.*.tar"):
        middle = p[len(stem) + 1 : -len(".tar")]
        if middle and "." not in middle:
            names.append(middle)
    return sorted(names)


class _Range:
    def __init__(self) -> None:
        self.n, self.lo, self.hi, self.total, self.missing = 0, math.inf, -math.inf, 0.0, 0

    def add(self, v) -> None:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            self.missing += 1
            return
        self.n += 1
        self.lo, self.hi, self.total = min(self.lo, v), max(self.hi, v), self.total + v

    def as_dict(self) -> dict:
        if not self.n:
            return {"n": 0, "missing": self.missing}
        return {"n": self.n, "min": self.lo, "max": self.hi, "mean": self.total / self.n, "missing": self.missing}


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}", v, out)
    elif isinstance(obj, bool):
        out.setdefault("bools", {}).setdefault(prefix, Counter())[str(obj).lower()] += 1
    elif isinstance(obj, (int, float)) or obj is None:
        out.setdefault("numbers", {}).setdefault(prefix, _Range()).add(obj)


def _read_json(sample: dict, url: str, skips: SkipLog) -> dict:
    """The sample's metadata; an invalid or non-object ``json`` member is a counted skip ({})."""
    try:
        meta = json.loads(sample["json"])
    except ValueError:  # also UnicodeDecodeError
        skips.add("corrupt_json", sample["__key__"], url)
        return {}
    if not isinstance(meta, dict):
        skips.add(f"json_not_object_{type(meta).__name__}", sample["__key__"], url)
        return {}
    return meta


def inspect_shard(url: str, *, allow_pipe: bool = False) -> dict:
    """Summarise one shard and its sidecars."""
    sidecars = find_sidecars(url)
    skips = SkipLog()
    exts, sources, classes = Counter(), Counter(), Counter()
    fields: dict = {}
    n = 0
    for sample in iter_shard(url, sidecars=sidecars, allow_pipe=allow_pipe, skips=skips):
        n += 1
        exts.update(k for k in sample if not k.startswith("__"))
        if "json" in sample:
            meta = _read_json(sample, url, skips)
            sources[str(meta.get("source"))] += 1
            if meta.get("class") is not None:
                classes[str(meta["class"])] += 1
        for ext, value in sample.items():
            if ext.endswith(".msgpack"):
                try:
                    record = msgpack.unpackb(value, raw=False, strict_map_key=False)
                except ValueError:  # msgpack's format, extra-data and stack errors are ValueErrors
                    skips.add(f"corrupt_{ext}", sample["__key__"], url)
                    continue
                _flatten(ext[: -len(".msgpack")], record, fields)
    return {
        "url": url,
        "samples": n,
        "extensions": dict(sorted(exts.items())),
        "sources": dict(sorted(sources.items())),
        "classes": dict(sorted(classes.items())),
        "sidecars": sidecars,
        "scores": {k: r.as_dict() for k, r in sorted(fields.get("numbers", {}).items())},
        "flags": {k: dict(c) for k, c in sorted(fields.get("bools", {}).items())},
        "skipped": skips.as_dict(),
    }


def _merge(reports: list[dict]) -> dict:
    total: dict = {"shards": len(reports), "samples": 0, "extensions": Counter(), "sources": Counter(),
                   "classes": Counter(), "skipped": Counter(), "scores": {}, "flags": {}}
    for r in reports:
        total["samples"] += r["samples"]
        for f in ("extensions", "sources", "classes", "skipped"):
            total[f].update(r[f])
        for k, s in r["scores"].items():
            agg = total["scores"].setdefault(k, {"n": 0, "min": math.inf, "max": -math.inf, "sum": 0.0, "missing": 0})
            agg["missing"] += s["missing"]
            if s["n"]:
                agg["n"] += s["n"]
                agg["min"], agg["max"] = min(agg["min"], s["min"]), max(agg["max"], s["max"])
                agg["sum"] += s["mean"] * s["n"]
        for k, c in r["flags"].items():
            total["flags"].setdefault(k, Counter()).update(c)
    total["classes_per_shard"] = classes_per_shard([r["classes"] for r in reports])
    for agg in total["scores"].values():
        agg["mean"] = agg.pop("sum") / agg["n"] if agg["n"] else None
        if not agg["n"]:
            agg["min"] = agg["max"] = None
    for f in ("extensions", "sources", "classes", "skipped"):
        total[f] = dict(sorted(total[f].items()))
    total["flags"] = {k: dict(c) for k, c in total["flags"].items()}
    return total


def format_report(report: dict) -> str:
    """Human-readable summary."""
    t = report["total"]
    lines = [f"{t['shards']} shard(s), {t['samples']} samples"]
    for r in report["shards"]:
        side = f"  sidecars: {', '.join(r['sidecars'])}" if r["sidecars"] else ""
        classes = f", {len(r['classes'])} classes" if r["classes"] else ""
        lines.append(f"  {r['url']}: {r['samples']} samples{classes}{side}")
    lines.append(f"members:  {t['extensions']}")
    lines.append(f"sources:  {t['sources']}")
    if t["classes"]:
        lines.append(f"classes:  {t['classes']}")
        c = t["classes_per_shard"]
        lines.append(f"classes per shard: min {c['min']}  median {c['median']}  max {c['max']}")
    for k, s in t["scores"].items():
        if s["n"]:
            lines.append(f"score {k}: min {s['min']:.4g}  mean {s['mean']:.4g}  max {s['max']:.4g}  "
                         f"(n={s['n']}, missing {s['missing']})")
        else:
            lines.append(f"score {k}: no values (missing {s['missing']})")
    for k, c in t["flags"].items():
        lines.append(f"flag {k}: {c}")
    if t["skipped"]:
        lines.append(f"skipped: {t['skipped']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-inspect``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("wds_tools.inspect"))


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("wds_tools.inspect"), description=__doc__.split("\n")[0])
    parser.add_argument("urls", nargs="+", help="shards: brace pattern, directory, .txt list or URL")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--allow-pipe", action="store_true", help="allow pipe: URLs (runs shell commands)")
    args = parser.parse_args(argv)
    urls = expand_urls(list(args.urls), allow_pipe=args.allow_pipe)
    shards = [inspect_shard(u, allow_pipe=args.allow_pipe) for u in urls]
    report = {"total": _merge(shards), "shards": shards}
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
