"""Held-out evaluation: image<->text retrieval R@1/5/10 + mean recall, and zero-shot accuracy.

Retrieval follows RemoteCLIP's protocol: every caption of an image (meta["captions"]) is a query
and a target (``eval.caption_sources=[original]``: only the human captions, for benchmark
numbers). Image->text counts a hit when any of the image's captions is in the top k; text->image
when the caption's image is in the top k. Zero-shot classifies each image among the
class names found in the held-out shards, averaging text embeddings over prompt templates.

``python -m training.evaluate --config configs/train/lora.yaml --shards DIR [--adapter DIR | --output DIR]``

It evaluates the trained adapter the config names: ``--adapter`` / ``eval.adapter``, by default
``<train.output>/peft_adapter`` (``--output`` sets train.output); a missing one is an error.
``eval.base_only=true`` evaluates the base model alone.
``... --zeroshot DIR``: zero-shot on a class-per-subfolder image tree (``training/zeroshot.py``);
``... --shards DIR --export-clip-benchmark OUT``: the split as CLIP_benchmark datasets
(``training/clip_benchmark_export.py``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from clip_models.device import resolve_device
from clip_models.preprocess import decode_uint8, image_norm, image_size, resize_center_crop
from clip_models.text_tower import build_tokenizer, encode_text, tokenizer_spec, trim_text
from wds_tools.quality_record import sample_captions
from wds_tools.reader import SkipLog, decode_sample, iter_shard
from wds_tools.sample import IMAGE_EXTS
from wds_tools.urls import expand_urls, unique_urls

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class EvalSet:
    """Decoded held-out samples: images (uint8), captions per image, class per image."""

    images: torch.Tensor
    captions: list[list[str]]
    classes: list[str | None]
    skipped: dict = field(default_factory=dict)


HELDOUT_EXTS = IMAGE_EXTS + ("jpeg",)


def iter_heldout(urls: Sequence[str], *, image: Callable = decode_uint8, max_samples: int = 0,
                 allow_pipe: bool = False, caption_sources: Sequence[str] = (), max_pixels: int = 0,
                 skips: SkipLog) -> Iterator[dict]:
    """The held-out samples evaluation reads, in order: ``{"key", "ext", "image", "captions",
    "class"}``, ``image`` as the ``image`` decoder returned it (the CLIP_benchmark export keeps
    the bytes). Each shard is read once, however often it is listed. See :func:`load_eval_set`."""
    expanded, repeats = unique_urls(expand_urls(list(urls), allow_pipe=allow_pipe))
    if repeats:  # each held-out image counts once
        log.warning("eval.shards lists %d shard(s) more than once; each is read once", len(repeats))
    n = 0
    for url in expanded:
        for raw in iter_shard(url, allow_pipe=allow_pipe, skips=skips):
            s = decode_sample(raw, image=image, skips=skips, max_pixels=max_pixels)
            ext = next((e for e in HELDOUT_EXTS if s and e in s), None)
            if s is None or ext is None:
                continue
            meta = s.get("json") if isinstance(s.get("json"), dict) else {}
            pairs = sample_captions(meta, s.get("txt"))
            caps = [c for c, src in pairs if not caption_sources or src in caption_sources]
            if not caps:
                skips.add("no_caption_of_sources" if pairs else "no_caption", raw["__key__"], url)
                continue
            yield {"key": raw["__key__"], "ext": ext, "image": s[ext], "captions": caps, "class": meta.get("class")}
            n += 1
            if max_samples and n >= max_samples:
                return


def load_eval_set(urls: Sequence[str], *, size: int, max_samples: int = 0, allow_pipe: bool = False,
                  caption_sources: Sequence[str] = (), max_pixels: int = 0) -> EvalSet:
    """Read held-out shards (no sidecars: evaluation sees the whole held-out set).

    ``caption_sources`` (e.g. ``["original"]``) keeps only captions from those sources
    (``meta["caption_sources"]``), so benchmark numbers are on human captions; an image with none
    left is a counted skip. Empty = every caption. Images above ``max_pixels`` (0 = PIL's
    ``Image.MAX_IMAGE_PIXELS``) are counted skips.
    """
    skips = SkipLog()
    images, captions, classes = [], [], []
    for s in iter_heldout(urls, max_samples=max_samples, allow_pipe=allow_pipe, caption_sources=caption_sources,
                          max_pixels=max_pixels, skips=skips):
        images.append(resize_center_crop(s["image"], size))
        captions.append(s["captions"])
        classes.append(s["class"])
    if not images:
        raise ValueError(f"no evaluable samples in {list(urls)}")
    return EvalSet(images=torch.stack(images), captions=captions, classes=classes, skipped=skips.as_dict())


@torch.no_grad()
def _embed_images(model, images: torch.Tensor, *, mean, std, batch_size: int, device) -> torch.Tensor:
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].to(device).float() / 255 - m) / s
        out.append(F.normalize(model.encode_image(x).float(), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def _embed_texts(model, texts: list[str], *, tokenizer, batch_size: int, device) -> torch.Tensor:
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = trim_text(model, tokenizer(texts[i:i + batch_size])).to(device)
        out.append(F.normalize(encode_text(model, tokens, trim=False).float(), dim=-1))
    return torch.cat(out)


def retrieval_metrics(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, ks=(1, 5, 10),
                      relevant: torch.Tensor | None = None) -> dict:
    """R@k both ways for L2-normalised embeddings; ``owner[j]`` is the image of caption j.

    ``relevant[i, j]`` (images x captions, bool) marks every image a caption is true of; by
    default only its owner. :func:`evaluate_model` passes one that also marks images holding the
    identical caption text: on class-template captions four images share "an aerial image of a
    beach", and which of four tied captions ranks first says nothing about the model.
    """
    sim = img @ txt.T  # images x captions
    if relevant is None:
        relevant = owner.unsqueeze(0) == torch.arange(len(img)).unsqueeze(1)
    out = {}
    for k in ks:
        top_txt = sim.topk(min(k, sim.shape[1]), dim=1).indices  # per image
        i2t = relevant.gather(1, top_txt).any(dim=1).float().mean()
        top_img = sim.T.topk(min(k, sim.shape[0]), dim=1).indices  # per caption
        t2i = relevant.T.gather(1, top_img).any(dim=1).float().mean()
        out[f"i2t_R@{k}"], out[f"t2i_R@{k}"] = 100 * i2t.item(), 100 * t2i.item()
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def caption_relevance(captions: Sequence[Sequence[str]]) -> torch.Tensor:
    """images x captions: True where the caption's text is one of the image's own captions."""
    flat = [c for caps in captions for c in caps]
    own = [set(caps) for caps in captions]
    return torch.tensor([[c in mine for c in flat] for mine in own], dtype=torch.bool)


@torch.no_grad()
def evaluate_model(model, data: EvalSet, *, tokenizer, templates: Sequence[str], batch_size: int = 64,
                   device: str | torch.device = "cpu") -> dict:
    """Retrieval and zero-shot figures of ``model`` (an open_clip model) on ``data``."""
    was_training = model.training
    model.eval()
    mean, std = image_norm(model)
    img = _embed_images(model, data.images, mean=mean, std=std, batch_size=batch_size, device=device)
    texts = [c for caps in data.captions for c in caps]
    owner = torch.tensor([i for i, caps in enumerate(data.captions) for _ in caps])
    txt = _embed_texts(model, texts, tokenizer=tokenizer, batch_size=batch_size, device=device)
    result = {"num_images": len(img), "num_captions": len(texts),
              "retrieval": retrieval_metrics(img.cpu(), txt.cpu(), owner,
                                             relevant=caption_relevance(data.captions))}
    labelled = [(i, c) for i, c in enumerate(data.classes) if c]
    names = sorted({c for _, c in labelled})
    if len(names) >= 2:
        prompts = [t.format(c.replace("_", " ")) for c in names for t in templates]
        emb = _embed_texts(model, prompts, tokenizer=tokenizer, batch_size=batch_size, device=device)
        cls_emb = F.normalize(emb.view(len(names), len(templates), -1).mean(dim=1), dim=-1)
        idx = torch.tensor([i for i, _ in labelled])
        pred = (img[idx] @ cls_emb.T).argmax(dim=1).cpu()
        truth = torch.tensor([names.index(c) for _, c in labelled])
        result["zeroshot"] = {"accuracy": 100 * (pred == truth).float().mean().item(), "num_classes": len(names)}
    else:
        result["zeroshot"] = {"accuracy": None, "num_classes": len(names)}
        log.warning("zero-shot skipped: fewer than 2 class names in the held-out shards")
    model.train(was_training)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-evaluate``): a user error is one line and exit status 2."""
    from wds_tools.config import prog_name, run_main

    return run_main(_main, argv, prog=prog_name("training.evaluate"))


def _main(argv: Sequence[str] | None) -> int:
    """Evaluate base + LoRA adapter + heads (or the base alone with eval.base_only) on held-out shards;
    prints JSON."""
    from clip_models.loading import model_name
    from training.config import CLI_FLAGS, Stage2Config
    from training.export import adapter_dir, load_trained
    from wds_tools.config import parse_cli, prog_name

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--zeroshot" in argv:  # a class-per-subfolder image tree (training/zeroshot.py)
        from training.zeroshot import zeroshot_main

        return zeroshot_main(argv)
    if "--export-clip-benchmark" in argv:  # the held-out split as CLIP_benchmark datasets
        from training.clip_benchmark_export import export_main

        return export_main(argv)
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.evaluate"), description=__doc__.splitlines()[0],
                    flags={**CLI_FLAGS, "--shards": "eval.shards", "--adapter": "eval.adapter"})
    if not cfg.eval.shards:
        raise ValueError("give held-out shards with --shards (eval.shards)")
    # The adapter the config names (default <train.output>/peft_adapter); the base alone only on request.
    adapter = None if cfg.eval.base_only else str(adapter_dir(cfg))
    model = load_trained(cfg, adapter)
    log.info("evaluating %s", "the base model alone (eval.base_only)" if adapter is None else f"adapter {adapter}")
    data = load_eval_set(cfg.eval.shards, size=image_size(model), max_samples=cfg.eval.max_samples,
                         allow_pipe=cfg.data.allow_pipe, caption_sources=cfg.eval.caption_sources,
                         max_pixels=cfg.data.max_image_pixels)
    device = resolve_device(cfg.model.device)
    tokenizer = build_tokenizer(tokenizer_spec(model_name(cfg.model)))
    result = evaluate_model(model.to(device), data, tokenizer=tokenizer, templates=cfg.eval.templates,
                            batch_size=cfg.eval.batch_size, device=device)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
