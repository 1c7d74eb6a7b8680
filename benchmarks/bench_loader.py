"""Stage 2 loader throughput vs. an open_clip-style per-sample float pipeline, same shards and workers.

Stage 2 loader: two weighted sources, quality-sidecar join, uint8 decode + seeded crop in the
workers, tokenise per batch (normalisation happens later, on the device). Baseline: what
open_clip's trainer does in its WebDataset pipeline: PIL decode, RandomResizedCrop, ToTensor,
Normalize and tokenise per sample, then batch.

Equal work: on a CPU device the Stage 2 side is also charged for the float normalisation that the
trainer does on the device (moved there, not removed), so two Stage 2 figures are printed: the
loader alone, and the loader plus normalisation in the consuming process (the CPU-device figure).
Captions are distinct per sample by default (``--caption-repeats 1``), so the tokenizer cache of
the Stage 2 loader gains nothing it would not gain on a real set; ``--caption-repeats 6`` mimics a
real set, where an original and its five augmentations share a caption.

    python -m benchmarks.bench_loader [--workers 2] [--batches 40] [--caption-repeats 1] [--out bench_out/loader]

``--source s3``: instead, the Stage 2 loader on the same shards from local disk and from an S3 API
server on 127.0.0.1 (moto's standalone server, the ``dev`` extra; s3fs from the ``cloud`` extra),
side by side in one run, at ``shards_per_chunk`` 1, 2 and 4 and each DataLoader ``prefetch_factor``
of ``--prefetch`` (batches each worker prepares ahead; ``data.prefetch_factor`` in training):

    python -m benchmarks.bench_loader --source s3 [--prefetch 2,8] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from wds_tools.manifest import write_index
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.sidecar import write_sidecar
from wds_tools.writer import shard_name, write_shard


def aerial_tile(rng: np.random.Generator, size: int) -> Image.Image:
    """Aerial-like texture: smooth fields, a few 'roads' and noise (compresses like real tiles)."""
    low = rng.uniform(40, 200, (size // 32 + 1, size // 32 + 1, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BILINEAR), dtype=np.float32)
    for _ in range(3):
        pos = int(rng.integers(0, size - 4))
        img[pos:pos + 4] = 180 if rng.random() < 0.5 else img[pos:pos + 4]
        img[:, pos:pos + 4] = 90
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


WORDS = ("farmland", "roads", "river", "houses", "forest", "parking", "lake", "bridge", "field", "trees",
         "runway", "beach", "harbor", "meadow", "church", "square")


def caption(rng: np.random.Generator, n_words: int) -> str:
    """A caption of ``n_words`` words drawn from a small aerial vocabulary."""
    return "an aerial photo of " + " ".join(rng.choice(WORDS, size=n_words))


def make_shards(root: Path, *, source: str, shards: int, per_shard: int, size: int, quality: bool,
                caption_repeats: int = 1) -> Path:
    """JPEG shards of the sample contract (+ quality sidecars keeping 90 %)."""
    out = root / f"{source}-rep{caption_repeats}"
    if (out / "dataset.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(source))
    for s in range(shards):
        samples, records = [], []
        for i in range(per_shard):
            key = make_key(source, s, i)
            # consecutive groups of `caption_repeats` samples share their captions, like a real set's augmentations
            crng = np.random.default_rng([len(source), s, i // caption_repeats])
            caps = [caption(crng, int(crng.integers(4, 16))), caption(crng, int(crng.integers(4, 16)))]
            meta = {"source": source, "captions": caps, "caption_sources": ["original", "vlm"], "class": "farmland"}
            samples.append(make_sample(key=key, image=encode_image(aerial_tile(rng, size), quality=90),
                                       caption=caps[0], meta=meta))
            records.append((key, {"msgpack": {"keep": i % 10 != 9, "composite": 0.5, "scores": {}, "reasons": []}}))
        path = out / shard_name(source, s)
        write_shard(path, samples)
        if quality:
            write_sidecar(path, "quality", records)
    write_index(out, name=source)
    return out


def stage2_loader(dirs: dict[str, Path | str], *, batch: int, workers: int, size: int, shards_per_chunk: int = 2,
                  prefetch_factor: int = 2):
    from training.data import LoaderSpec, build_sources, make_loader

    sources = build_sources([str(dirs["real"])], [str(dirs["synthetic"])], 0.8)
    spec = LoaderSpec(sources=sources, batch_size=batch, image_size=size, num_workers=workers,
                      tokenizer={"hf_name": None, "context_length": 77}, shards_per_chunk=shards_per_chunk)
    return make_loader(spec, prefetch_factor=prefetch_factor)


def openclip_style_loader(dirs: dict[str, Path], *, batch: int, workers: int, size: int):
    """open_clip_train's get_wds_dataset pipeline, resampled, per-sample float transforms."""
    import open_clip
    import webdataset as wds
    from torch.utils.data import DataLoader

    from wds_tools.urls import expand_urls

    preprocess = open_clip.image_transform(size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    urls = expand_urls([str(dirs["real"]), str(dirs["synthetic"])])
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls), wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(100), wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda t: tokenizer(t)[0]),
        wds.to_tuple("image", "text"), wds.batched(batch, partial=False))
    return DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=False)


def normalise_like_trainer(batch) -> None:
    """The trainer's device-side step (Stage2Model.forward): uint8 -> float, OpenAI mean/std."""
    import open_clip
    import torch

    images = batch["images"]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    (images.float() / 255.0 - mean) / std


def measure(loader, *, batches: int, warmup: int, batch: int, consume=None) -> float:
    """Samples/s over ``batches`` batches after ``warmup`` batches (worker start-up excluded).

    ``consume(batch)`` runs in this process on every timed batch (work charged to this side).
    """
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
        if consume is not None:
            consume(b)
    rate = batches * batch / (time.perf_counter() - t0)
    del it
    return rate


def compare_s3(args, dirs: dict[str, Path], out: Path) -> dict:
    """Stage 2 loader samples/s, local disk vs the same shards on a loopback S3 server."""
    import s3fs

    from tests.store.server import start_moto, stop

    proc, endpoint = start_moto()
    try:
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                          AWS_DEFAULT_REGION="us-east-1")  # the loader's workers inherit them
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench")
        remote = {}
        for name, d in dirs.items():
            fs.put([str(p) for p in sorted(d.iterdir()) if p.is_file()], f"bench/{d.name}/")
            remote[name] = f"s3://bench/{d.name}"
        grid = [(k, p) for k in (1, 2, 4) for p in args.prefetch]
        runs = [(f"{where} shards_per_chunk={k} prefetch={p}", src, k, p) for k, p in grid
                for where, src in (("local", dirs), ("s3", remote))]
        results: dict[str, list[float]] = {name: [] for name, *_ in runs}
        for _ in range(args.rounds):  # alternate so both see the same machine load
            for name, src, k, p in runs:
                loader = stage2_loader(src, batch=args.batch, workers=args.workers, size=args.size,
                                       shards_per_chunk=k, prefetch_factor=p)
                results[name].append(measure(loader, batches=args.batches, warmup=args.warmup, batch=args.batch))
    finally:
        stop(proc)
    best = {k: max(v) for k, v in results.items()}
    print(f"Stage 2 loader, workers={args.workers} batch={args.batch} image={args.size}px from "
          f"{args.source_size}px JPEG; S3 = moto server on 127.0.0.1 via s3fs")
    for k, p in grid:
        loc, s3 = best[f"local shards_per_chunk={k} prefetch={p}"], best[f"s3 shards_per_chunk={k} prefetch={p}"]
        print(f"  shards_per_chunk={k} prefetch={p}: local {loc:8.1f}  s3 {s3:8.1f} samples/s   "
              f"s3/local {s3 / loc:.2f}x")
    doc = {"args": vars(args), "samples_per_s": results, "best": best}
    (out / "results_s3.json").write_text(json.dumps(doc, indent=2))
    return doc


def int_list(text: str) -> list[int]:
    """``"2,8"`` -> ``[2, 8]`` (argparse names the option and the value when this raises)."""
    return [int(x) for x in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--size", type=int, default=224, help="training image size")
    ap.add_argument("--source-size", type=int, default=256, help="stored JPEG size")
    ap.add_argument("--out", default="bench_out/loader")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds, best of each kept")
    ap.add_argument("--source", choices=("local", "s3"), default="local",
                    help="s3: Stage 2 loader from local disk vs a loopback S3 server, side by side")
    ap.add_argument("--prefetch", default="2,8", type=int_list,
                    help="--source s3: DataLoader prefetch_factor values to compare (comma-separated)")
    ap.add_argument("--caption-repeats", type=int, default=1,
                    help="samples sharing one caption (1 = every caption distinct; a real set repeats about 6)")
    args = ap.parse_args(argv)
    if args.caption_repeats < 1:
        raise SystemExit(f"--caption-repeats must be >= 1, got {args.caption_repeats}")
    if min(args.prefetch) < 1:
        raise SystemExit(f"--prefetch values must be >= 1, got {args.prefetch}")
    out = Path(args.out)
    dirs = {name: make_shards(out / "shards", source=name, shards=6, per_shard=100, size=args.source_size,
                              quality=(name == "synthetic"), caption_repeats=args.caption_repeats)
            for name in ("real", "synthetic")}
    if args.source == "s3":
        compare_s3(args, dirs, out)
        return 0
    runs = (("stage2_uint8", stage2_loader, None),
            ("stage2_uint8+normalise", stage2_loader, normalise_like_trainer),
            ("openclip_float", openclip_style_loader, None))
    results: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.rounds):  # alternate so all see the same machine load
        for name, build, consume in runs:
            loader = build(dirs, batch=args.batch, workers=args.workers, size=args.size)
            results[name].append(measure(loader, batches=args.batches, warmup=args.warmup, batch=args.batch,
                                         consume=consume))
    best = {k: max(v) for k, v in results.items()}
    ratios = {k: best[k] / best["openclip_float"] for k in ("stage2_uint8", "stage2_uint8+normalise")}
    print(f"workers={args.workers} batch={args.batch} image={args.size}px from {args.source_size}px JPEG, "
          f"captions repeated x{args.caption_repeats}")
    for k, v in results.items():
        print(f"  {k:24s} {best[k]:8.1f} samples/s   (rounds: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"  ratio stage2 loader alone / open_clip-style:        {ratios['stage2_uint8']:.2f}x")
    print(f"  ratio stage2 + normalisation (CPU device) / open_clip: {ratios['stage2_uint8+normalise']:.2f}x "
          "(target >= 1.8x; on a GPU the normalisation runs on the device)")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "samples_per_s": results,
                                                 "best": best, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
