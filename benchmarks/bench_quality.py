"""Quality-filter scoring throughput against a bare single-process decode + model loop.

    python benchmarks/bench_quality.py [--images 960] [--model configs/models/tiny-clip.json] [--workers 2]

Both sides score the same JPEG shards with the same model object and batch size, side by side in
one run. "bare" decodes, resizes and runs the model in one process; "bare+iq" adds the same
image-quality measures the filter computes; "filter" is phase 1 of ``builders.quality`` (worker
decoding overlapped with inference, plus sanity checks and sidecar writing). With CUDA, the
filter is also compared with the model's bare ``encode_image`` on pre-made batches.

The balance of decode and model cost decides how much overlap can win on a CPU: with
``configs/models/tiny-clip.json`` decoding dominates, with ``benchmarks/models/clip_small_128.json``
the model does, and ``benchmarks/models/clip_mid_64.json`` puts them near parity.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from builders.quality.clip_model import load_clip, resolve_device  # noqa: E402
from builders.quality.clip_score import ClipScorer  # noqa: E402
from builders.quality.config import QualityConfig  # noqa: E402
from builders.quality.image_quality import ImageQualityConfig, image_quality_scores  # noqa: E402
from builders.quality.loader import clip_input, decode_rgb  # noqa: E402
from builders.quality.run import score_shards  # noqa: E402
from wds_tools.reader import iter_tar_samples  # noqa: E402
from wds_tools.sample import encode_image, make_key, make_sample  # noqa: E402
from wds_tools.writer import shard_name, write_shard  # noqa: E402

# plain captions: nothing for the sanity checks to verify, so no region detection runs
CAPTIONS = ("an aerial image of farmland", "an aerial image of buildings next to a road",
            "an aerial image of a river", "an aerial image of a parking lot", "an aerial image of a forest")
# captions with count/position claims: the filter also runs M2B region detection on them
CLAIM_CAPTIONS = ("two buildings next to a road", "a river on the left", "many cars in a parking lot")


def aerial_like(rng: np.random.Generator, size: int) -> Image.Image:
    """Smooth colour fields plus texture and a few bright rectangles (roofs, roads)."""
    low = rng.random((8, 8, 3)) * 180 + 40
    img = np.array(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    img += rng.normal(0, 18, (size, size, 3))
    for _ in range(rng.integers(2, 8)):
        x, y = rng.integers(0, size - 20, 2)
        w, h = rng.integers(6, 40, 2)
        img[y:y + h, x:x + w] = rng.random(3) * 80 + 170
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_shards(out: Path, *, images: int, shards: int, size: int, captions=CAPTIONS) -> list[str]:
    rng = np.random.default_rng(0)
    samples = [make_sample(key=make_key("b", i), image=encode_image(aerial_like(rng, size), ext="jpg"),
                           caption=captions[i % len(captions)],
                           meta={"source": "synthetic" if i % 3 == 0 else "real"}) for i in range(images)]
    urls = []
    for s in range(shards):
        path = out / shard_name("bench", s)
        write_shard(path, samples[s::shards])
        urls.append(str(path))
    return urls


def bare_loop(urls, scorer, tokenizer, size: int, batch: int, iq_cfg: ImageQualityConfig | None) -> int:
    """Decode, resize and score in one process (optionally with the image-quality measures)."""
    n, imgs, caps, small = 0, [], [], []

    def flush():
        scorer(torch.stack(imgs), tokenizer(caps))
        if iq_cfg is not None:
            image_quality_scores(torch.stack(small), iq_cfg)
        imgs.clear(), caps.clear(), small.clear()

    for url in urls:
        for s in iter_tar_samples(url):
            img = decode_rgb(s["jpg"])
            imgs.append(clip_input(img, size))
            caps.append(s["txt"].decode())
            if iq_cfg is not None:
                from torchvision.transforms.v2 import functional as TF
                small.append(TF.resize(img, [iq_cfg.size, iq_cfg.size], antialias=True))
            n += 1
            if len(imgs) == batch:
                flush()
    if imgs:
        flush()
    return n


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the loader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


CPU: dict[str, float] = {}


def timed(fn, name: str = "") -> tuple[float, object]:
    c, t = cpu_seconds(), time.perf_counter()
    out = fn()
    CPU[name] = cpu_seconds() - c
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--image-px", type=int, default=256, help="side of the source JPEGs")
    ap.add_argument("--model", default="configs/models/tiny-clip.json")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--main-threads", type=int, default=0, help="model threads of the filter (0: auto)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--claims", action="store_true", help="captions with count/position claims (adds M2B)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(args.device)
    model, size, tokenizer = load_clip(model_name=args.model, pretrained=args.pretrained, device=device,
                                       precision=args.precision)
    scorer = ClipScorer(model=model, device=device, precision=args.precision)
    cfg = QualityConfig(input=["unused"])
    cfg.model.name, cfg.model.pretrained, cfg.model.device = args.model, args.pretrained, str(device)
    cfg.model.precision, cfg.model.batch_size, cfg.loader.num_workers = args.precision, args.batch, args.workers
    cfg.loader.main_threads = args.main_threads
    load = tuple(round(x, 2) for x in os.getloadavg())
    print(f"cpu cores {os.cpu_count()}, load average {load}, device {device}, model {args.model} "
          f"({size} px input), {args.images} JPEGs of {args.image_px} px in {args.shards} shards, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        urls = make_shards(Path(tmp), images=args.images, shards=args.shards, size=args.image_px,
                           captions=CLAIM_CAPTIONS if args.claims else CAPTIONS)
        bare_loop(urls[:1], scorer, tokenizer, size, args.batch, None)  # warm-up
        t_bare, n = timed(lambda: bare_loop(urls, scorer, tokenizer, size, args.batch, None), "bare")
        t_bare_iq, _ = timed(lambda: bare_loop(urls, scorer, tokenizer, size, args.batch, cfg.image_quality),
                             "bare+iq")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        t_bare1, _ = timed(lambda: bare_loop(urls, scorer, tokenizer, size, args.batch, None), "bare1")
        torch.set_num_threads(threads)
        t_filter, res = timed(lambda: score_shards(cfg, urls, clip=(model, size, tokenizer)), "filter")
        assert len(res["scored"]) == len(urls) and not res["failed"], res
        rows = [(f"bare decode+model, 1 process, {threads} torch threads", t_bare, "bare"),
                ("bare decode+model, 1 process, 1 torch thread", t_bare1, "bare1"),
                ("bare decode+model+image quality, 1 process", t_bare_iq, "bare+iq"),
                (f"quality filter phase 1, {args.workers} workers", t_filter, "filter")]
        for name, t, key in rows:
            print(f"{name:52s} {n / t:9.1f} images/s   {CPU[key] / n * 1000:6.2f} CPU ms/image")
        print(f"ratio filter / bare            {t_bare / t_filter:.2f}x  (target >= 1.5x)")
        print(f"ratio filter / bare, 1 thread  {t_bare1 / t_filter:.2f}x")
        print(f"ratio filter / bare+iq         {t_bare_iq / t_filter:.2f}x")
        if device.type == "cuda":
            x = torch.randint(0, 255, (args.batch, 3, size, size), dtype=torch.uint8)
            tok = tokenizer([CAPTIONS[0]] * args.batch)
            reps = max(1, n // args.batch)

            def bare_encode():
                with torch.inference_mode(), scorer._autocast():
                    for _ in range(reps):
                        model.encode_image((x.to(device).float() - scorer.mean) / scorer.std)
                torch.cuda.synchronize()
            bare_encode()
            t_enc, _ = timed(bare_encode, "encode")
            t_score, _ = timed(lambda: [scorer(x, tok) for _ in range(reps)], "scorer")
            enc = reps * args.batch / t_enc
            print(f"bare encode_image               {enc:9.1f} images/s")
            print(f"scorer (image+text) on batches  {reps * args.batch / t_score:9.1f} images/s")
            print(f"filter end-to-end / bare encode_image: {n / t_filter / enc:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
