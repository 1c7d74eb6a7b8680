"""A held-out split as CLIP_benchmark webdatasets, and CLIP_benchmark's figures beside ours.

``python -m training.evaluate --config CFG --shards DIR --export-clip-benchmark OUT [--name NAME]``
reads the split exactly as ``training.evaluate`` does (``eval.caption_sources``,
``eval.max_samples``, the pixel limit, the same skips) and writes the two datasets LAION's
CLIP_benchmark reads (one task per dataset folder)::

    OUT/wds_NAME/             zero-shot classification: the labelled images
        test/0.tar ...        <key>.<jpg|png|webp> + <key>.cls (class index) + <key>.txt
        test/nshards.txt
        classnames.txt        one class per line, in index order ("_" read as a space)
        zeroshot_classification_templates.txt   eval.templates with {c} for the class
    OUT/wds_NAME_retrieval/   image-text retrieval: every image, <key>.txt one caption per line
        test/..., dataset_type.txt ("retrieval")

and prints the ``clip_benchmark eval`` commands for a model folder written by
``training.export --format open_clip-hub``. Image bytes are copied as they are (evaluate reads only
formats CLIP_benchmark decodes), so CLIP_benchmark applies open_clip's own preprocessing.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from clip_models.preprocess import decode_uint8, image_size
from training.evaluate import iter_heldout
from wds_tools.atomic import atomic_open, write_json
from wds_tools.reader import SkipLog
from wds_tools.writer import write_tar_members

log = logging.getLogger(__name__)


def _decodable_bytes(data: bytes) -> bytes:
    """The image bytes as stored, once evaluation's decoder has read them (one it cannot read is the
    same counted skip in both)."""
    decode_uint8(data)
    return data


def bench_templates(templates: Sequence[str]) -> list[str]:
    """eval.templates (``{}``) in CLIP_benchmark's spelling (``{c}``)."""
    bad = [t for t in templates if t.count("{}") != 1 or "\n" in t]
    if bad or not templates:
        raise ValueError(f"eval.templates: each template needs exactly one '{{}}' and no line break, "
                         f"got {bad or templates}")
    return [t.replace("{}", "{c}") for t in templates]


def _members(i: int, sample: dict, label: int | None) -> list[tuple[str, bytes]]:
    key = f"{i:06d}"  # CLIP_benchmark's keys only need to be unique and free of dots
    ext, data = sample["ext"], sample["image"]  # evaluate's formats: all read by CLIP_benchmark
    text = "\n".join(" ".join(c.split()) for c in sample["captions"])
    members = [(f"{key}.{ext}", data), (f"{key}.txt", text.encode("utf-8"))]
    if label is not None:
        members.append((f"{key}.cls", str(label).encode()))
    return members


def _write_dataset(folder: Path, samples: list[dict], labels: list[int | None], *, per_shard: int,
                   extra: dict[str, str]) -> None:
    """One CLIP_benchmark dataset folder, built aside and renamed into place."""
    tmp = folder.with_name(folder.name + ".tmp-partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "test").mkdir(parents=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for n, chunk in enumerate(shards):
        start = n * per_shard
        write_tar_members(tmp / "test" / f"{n}.tar",
                          [m for j, s in enumerate(chunk) for m in _members(start + j, s, labels[start + j])])
    files = {"test/nshards.txt": f"{len(shards)}\n", **extra}
    for name, text in files.items():
        with atomic_open(tmp / name, "w") as f:
            f.write(text)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def export_clip_benchmark(urls: Sequence[str], out: str | Path, *, name: str, templates: Sequence[str],
                          caption_sources: Sequence[str] = (), max_samples: int = 0, allow_pipe: bool = False,
                          max_pixels: int = 0, per_shard: int = 1000) -> dict:
    """Write ``out/wds_<name>`` (classification) and ``out/wds_<name>_retrieval``; returns what was written."""
    if not name or "/" in name or "." in name:
        raise ValueError(f"--name must be a plain dataset name without '/' or '.', got {name!r}")
    lines = bench_templates(templates)
    skips = SkipLog()
    samples = list(iter_heldout(urls, image=_decodable_bytes, caption_sources=caption_sources,
                                max_samples=max_samples, allow_pipe=allow_pipe, max_pixels=max_pixels, skips=skips))
    if not samples:
        raise ValueError(f"no evaluable samples in {list(urls)} (skips: {skips.as_dict()})")
    out = Path(out)
    retrieval = out / f"wds_{name}_retrieval"
    _write_dataset(retrieval, samples, [None] * len(samples), per_shard=per_shard,
                   extra={"dataset_type.txt": "retrieval\n"})
    names = sorted({s["class"] for s in samples if s["class"]})
    summary = {"source": list(urls), "images": len(samples), "captions": sum(len(s["captions"]) for s in samples),
               "retrieval": str(retrieval), "classification": None, "classes": names, "skipped": skips.as_dict()}
    if len(names) >= 2:
        labelled = [s for s in samples if s["class"]]
        classification = out / f"wds_{name}"
        _write_dataset(classification, labelled, [names.index(s["class"]) for s in labelled], per_shard=per_shard,
                       extra={"classnames.txt": "".join(c.replace("_", " ") + "\n" for c in names),
                              "zeroshot_classification_templates.txt": "".join(t + "\n" for t in lines)})
        summary.update(classification=str(classification), labelled_images=len(labelled))
    else:
        log.warning("classification dataset not written: %d class names in the split (needs 2)", len(names))
    write_json(out / f"{name}_export.json", summary)
    return summary


def clip_benchmark_cmd() -> list[str]:
    """``clip_benchmark`` through :mod:`training.clip_benchmark_compat` (numpy 2.4 fix), in this interpreter."""
    try:
        import clip_benchmark  # noqa: F401
    except ImportError as e:
        raise ValueError("clip_benchmark is not installed here (pip install clip-benchmark)") from e
    return [sys.executable, "-m", "training.clip_benchmark_compat"]


def eval_command(root: str | Path, name: str, model_dir: str | Path, task: str, output: str | Path, *,
                 batch_size: int = 64, recall_k: Sequence[int] = (1, 5, 10)) -> list[str]:
    """``clip_benchmark eval`` on ``wds/<name>`` (classification) or ``wds/<name>_retrieval`` for a hub folder."""
    dataset = f"wds/{name}" if task == "zeroshot_classification" else f"wds/{name}_retrieval"
    return ["python", "-m", "training.clip_benchmark_compat", "eval", "--dataset", dataset,
            "--dataset_root", f"{root}/wds_{{dataset_cleaned}}",
            "--model", f"local-dir:{model_dir}", "--task", task, "--recall_k", *map(str, recall_k),
            "--batch_size", str(batch_size), "--num_workers", "0", "--no_amp", "--output", str(output)]


def run_clip_benchmark(root: str | Path, name: str, model_dir: str | Path, results: str | Path, *,
                       recall_k: Sequence[int] = (1, 5, 10)) -> dict:
    """Run both tasks with CLIP_benchmark (fp32, CPU or its CUDA device); their metrics by task.
    Every k must be at most the number of images (CLIP_benchmark's top-k does not clip it)."""
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    out = {}
    for task in ("zeroshot_classification", "zeroshot_retrieval"):
        path = results / f"{name}_{task}.json"
        cmd = eval_command(root, name, model_dir, task, path, recall_k=recall_k)
        proc = subprocess.run([*clip_benchmark_cmd(), *cmd[3:]], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"clip_benchmark {task} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        out[task] = json.loads(path.read_text())["metrics"]
    return out


def export_main(argv: list[str]) -> int:
    """``training.evaluate --shards DIR --export-clip-benchmark OUT [--name NAME]``."""
    from training.config import CLI_FLAGS, Stage2Config
    from training.zeroshot import pop_option
    from wds_tools.config import parse_cli, prog_name

    argv = list(argv)
    out, name = pop_option(argv, "--export-clip-benchmark"), pop_option(argv, "--name") or "heldout"
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.evaluate"), description=__doc__.splitlines()[0],
                    flags={**CLI_FLAGS, "--shards": "eval.shards", "--adapter": "eval.adapter"})
    if not cfg.eval.shards:
        raise ValueError("give the held-out shards with --shards (eval.shards)")
    summary = export_clip_benchmark(cfg.eval.shards, out, name=name, templates=cfg.eval.templates,
                                    caption_sources=cfg.eval.caption_sources, max_samples=cfg.eval.max_samples,
                                    allow_pipe=cfg.data.allow_pipe, max_pixels=cfg.data.max_image_pixels)
    model = Path(cfg.train.output) / "open_clip_hub"
    summary["commands"] = [shlex.join(eval_command(out, name, model, task, f"{name}_{task}.json"))
                           for task in ("zeroshot_classification", "zeroshot_retrieval")
                           if task == "zeroshot_retrieval" or summary["classification"]]
    print(json.dumps(summary, indent=2))
    return 0


def side_by_side(model, urls: Sequence[str], bench: dict, *, tokenizer, templates: Sequence[str],
                 caption_sources: Sequence[str] = (), max_samples: int = 0, max_pixels: int = 0,
                 device="cpu") -> list[dict]:
    """``training.evaluate``'s figures on ``urls`` beside CLIP_benchmark's (``bench``, from
    :func:`run_clip_benchmark`), all in %. "owner only" counts a retrieval hit only for the image a
    caption belongs to, as CLIP_benchmark does; ``training.evaluate`` also counts every image that
    holds the identical caption text."""
    import torch

    from training.evaluate import evaluate_model, load_eval_set, retrieval_metrics
    from training.zeroshot import class_embeddings, classification_metrics, embed_images

    data = load_eval_set(urls, size=image_size(model), max_samples=max_samples, caption_sources=caption_sources,
                         max_pixels=max_pixels)
    ours = evaluate_model(model, data, tokenizer=tokenizer, templates=templates, device=device)
    model.eval()
    img = torch.cat([embed_images(model, data.images[i:i + 64], device=device)
                     for i in range(0, len(data.images), 64)])
    texts = [c for caps in data.captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
    txt = class_embeddings(model, texts, ["{}"], tokenizer=tokenizer, device=device)  # one "template": the caption
    strict = retrieval_metrics(img.cpu(), txt.cpu(), owner)
    rows = []
    cls, ret = bench.get("zeroshot_classification", {}), bench.get("zeroshot_retrieval", {})
    labelled = [(i, c) for i, c in enumerate(data.classes) if c]
    names = sorted({c for _, c in labelled})
    if len(names) >= 2 and cls:
        emb = class_embeddings(model, [n.replace("_", " ") for n in names], templates, tokenizer=tokenizer,
                               device=device)
        zs = classification_metrics((img[[i for i, _ in labelled]] @ emb.T).cpu(),
                                    torch.tensor([names.index(c) for _, c in labelled]), names)
        pct = lambda v: None if v is None or v != v else 100 * v  # noqa: E731 - NaN (under 5 classes) = n/a
        rows += [{"metric": "zero-shot top-1", "training.evaluate": ours["zeroshot"]["accuracy"],
                  "owner only": zs["top1"], "clip_benchmark": pct(cls.get("acc1"))},
                 {"metric": "zero-shot top-5", "training.evaluate": None,
                  "owner only": zs["top5"] if len(names) >= 5 else None, "clip_benchmark": pct(cls.get("acc5"))},
                 {"metric": "zero-shot mean per-class", "training.evaluate": None, "owner only": zs["mean_per_class"],
                  "clip_benchmark": pct(cls.get("mean_per_class_recall"))}]
    for k in (1, 5, 10):
        for ours_key, theirs_key in ((f"i2t_R@{k}", f"text_retrieval_recall@{k}"),
                                     (f"t2i_R@{k}", f"image_retrieval_recall@{k}")):
            if theirs_key in ret:
                rows.append({"metric": ours_key, "training.evaluate": ours["retrieval"][ours_key],
                             "owner only": strict[ours_key], "clip_benchmark": 100 * ret[theirs_key]})
    if ret:
        theirs = [100 * v for k, v in ret.items() if "recall@" in k]
        rows.append({"metric": "mean recall", "training.evaluate": ours["retrieval"]["mean_recall"],
                     "owner only": strict["mean_recall"], "clip_benchmark": sum(theirs) / len(theirs)})
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a Markdown table (n/a where a figure does not exist)."""
    cols = ("metric", "training.evaluate", "owner only", "clip_benchmark")
    show = lambda v: "n/a" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
                     + ["| " + " | ".join(show(r[c]) for c in cols) + " |" for r in rows])


def compare_main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.clip_benchmark_export --config CFG --shards DIR [--output RUN] --work DIR
    [--hub DIR] [--name NAME]``: hub export (unless ``--hub``), CLIP_benchmark datasets, both tasks
    through CLIP_benchmark, and the side-by-side table (printed, and ``side_by_side.md``/``.json`` in WORK)."""
    import open_clip

    from training.config import CLI_FLAGS, Stage2Config
    from training.zeroshot import pop_option
    from wds_tools.config import parse_cli, prog_name

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    work, hub = pop_option(argv, "--work"), pop_option(argv, "--hub")
    name = pop_option(argv, "--name") or "heldout"
    if not work:
        raise ValueError("give a working folder with --work DIR")
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.clip_benchmark_export"),
                    description=compare_main.__doc__.splitlines()[0],
                    flags={**CLI_FLAGS, "--shards": "eval.shards", "--adapter": "eval.adapter"})
    work_dir = Path(work)
    if not hub:
        from training.hub_export import export_hub

        hub = str(export_hub(cfg, out=str(work_dir / "hub")))
    kw = {"caption_sources": cfg.eval.caption_sources, "max_samples": cfg.eval.max_samples,
          "max_pixels": cfg.data.max_image_pixels}
    summary = export_clip_benchmark(cfg.eval.shards, work_dir / "bench", name=name, templates=cfg.eval.templates, **kw)
    ks = [k for k in (1, 5, 10) if k <= summary["images"]]
    bench = run_clip_benchmark(work_dir / "bench", name, hub, work_dir / "results", recall_k=ks)
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{hub}")
    rows = side_by_side(model, cfg.eval.shards, bench, tokenizer=open_clip.get_tokenizer(f"local-dir:{hub}"),
                        templates=cfg.eval.templates, **kw)
    text = table(rows)
    write_json(work_dir / "side_by_side.json", {"export": summary, "clip_benchmark": bench, "rows": rows})
    with atomic_open(work_dir / "side_by_side.md", "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    from wds_tools.config import run_main

    sys.exit(run_main(compare_main, None, prog="training.clip_benchmark_export"))
