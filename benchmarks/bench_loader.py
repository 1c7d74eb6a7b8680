"""Stage 2 loader throughput vs. an open_clip-style per-sample float pipeline, same shards and workers.

Stage 2 loader: two weighted sources, quality-sidecar join, uint8 decode + seeded crop in the
workers, tokenise per batch (normalisation happens later, on the device). Baseline: what
open_clip's trainer does in its WebDataset pipeline: PIL decode, RandomResizedCrop, ToTensor,
Normalize and tokenise per sample, then batch.

    python -m benchmarks.bench_loader [--workers 2] [--batches 40] [--out bench_out/loader]
"""

from __future__ import annotations

import argparse
import json
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


def make_shards(root: Path, *, source: str, shards: int, per_shard: int, size: int, quality: bool) -> Path:
    """JPEG shards of the sample contract (+ quality sidecars keeping 90 %)."""
    out = root / source
    if (out / "dataset.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(source))
    for s in range(shards):
        samples, records = [], []
        for i in range(per_shard):
            key = make_key(source, s, i)
            caps = [f"an aerial photo of farmland and roads {i}", f"fields seen from above {s}"]
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


def stage2_loader(dirs: dict[str, Path], *, batch: int, workers: int, size: int):
    from training.data import LoaderSpec, build_sources, make_loader

    sources = build_sources([str(dirs["real"])], [str(dirs["synthetic"])], 0.8)
    spec = LoaderSpec(sources=sources, batch_size=batch, image_size=size, num_workers=workers,
                      tokenizer={"hf_name": None, "context_length": 77}, shards_per_chunk=2)
    return make_loader(spec)


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


def measure(loader, *, batches: int, warmup: int, batch: int) -> float:
    """Samples/s over ``batches`` batches after ``warmup`` batches (worker start-up excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t0)
    del it
    return rate


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
    args = ap.parse_args(argv)
    out = Path(args.out)
    dirs = {name: make_shards(out / "shards", source=name, shards=6, per_shard=100, size=args.source_size,
                              quality=(name == "synthetic")) for name in ("real", "synthetic")}
    results = {"stage2_uint8": [], "openclip_float": []}
    for _ in range(args.rounds):  # alternate so both see the same machine load
        for name, build in (("stage2_uint8", stage2_loader), ("openclip_float", openclip_style_loader)):
            loader = build(dirs, batch=args.batch, workers=args.workers, size=args.size)
            results[name].append(measure(loader, batches=args.batches, warmup=args.warmup, batch=args.batch))
    best = {k: max(v) for k, v in results.items()}
    ratio = best["stage2_uint8"] / best["openclip_float"]
    print(f"workers={args.workers} batch={args.batch} image={args.size}px from {args.source_size}px JPEG")
    for k, v in results.items():
        print(f"  {k:16s} {best[k]:8.1f} samples/s   (rounds: {', '.join(f'{x:.1f}' for x in v)})")
    print(f"  ratio stage2 / open_clip-style: {ratio:.2f}x (target >= 1.8x)")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "samples_per_s": results,
                                                 "best": best, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
