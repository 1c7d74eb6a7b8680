"""Zero-shot classification of a labelled image folder: ``training.evaluate --zeroshot DIR``.

``DIR`` holds one subfolder per class, as AID, RESISC45, EuroSAT (RGB) and UC Merced are laid out
on disk. A folder name becomes the class text the prompts use: ``_`` and ``-`` become spaces and
CamelCase is split (``BaseballField`` -> ``baseball field``). Each class is the mean of its prompt
embeddings over ``eval.templates`` (aerial templates in RemoteCLIP's style); each image gets the
class of highest cosine similarity. Reported: top-1 and top-5 accuracy, per-class accuracy, their
mean, and a confusion matrix (JSON and PNG).

``python -m training.evaluate --config CFG --output RUN [--adapter DIR] --zeroshot DIR [--zeroshot-out DIR]``
writes ``zeroshot.json`` and ``confusion_matrix.png`` (default ``<train.output>/zeroshot_<name>``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from clip_models.preprocess import image_norm, image_size, resize_center_crop
from clip_models.text_tower import encode_text, trim_text
from wds_tools.images import check_image_pixels
from wds_tools.skips import SkipLog

log = logging.getLogger(__name__)
SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


def class_text(folder_name: str) -> str:
    """The words a folder name stands for: ``BareLand`` / ``bare_land`` / ``bare-land`` -> ``bare land``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", folder_name)
    return " ".join(re.sub(r"[_\-]+", " ", spaced).lower().split())


def scan_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class folder names, sorted; [(image path, class index)]) of a class-per-subfolder tree."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--zeroshot: {str(root)!r} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    items = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.is_file() and f.suffix.lower() in SUFFIXES and not f.name.startswith(".")]
    found = {classes[i] for _, i in items}
    if len(found) < 2:
        raise ValueError(f"--zeroshot: {str(root)!r} needs at least 2 class subfolders holding images "
                         f"({', '.join(SUFFIXES)}), found {len(found)}")
    empty = [c for c in classes if c not in found]
    if empty:
        log.warning("zero-shot: %d class folders hold no image and are left out: %s", len(empty), empty[:10])
        keep = [c for c in classes if c in found]
        items = [(f, keep.index(classes[i])) for f, i in items]
        classes = keep
    return classes, items


def read_image(path: Path, *, size: int, max_pixels: int = 0) -> torch.Tensor:
    """uint8 ``(3, size, size)``: EXIF orientation applied, RGB, shorter side resized, centre crop."""
    with open(path, "rb") as f:
        check_image_pixels(f.read(), max_pixels=max_pixels)  # the header first: no pixel bomb decoded
    with Image.open(path) as img:
        rgb = ImageOps.exif_transpose(img).convert("RGB")
    return resize_center_crop(torch.from_numpy(np.array(rgb)).permute(2, 0, 1), size)


def iter_batches(items: Sequence[tuple[Path, int]], *, size: int, batch_size: int, skips: SkipLog,
                 max_pixels: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, labels) batches; an unreadable image is a counted skip with its reason."""
    images, labels = [], []
    for path, label in items:
        try:
            images.append(read_image(path, size=size, max_pixels=max_pixels))
            labels.append(label)
        except Image.DecompressionBombError:
            skips.add("too_large", path.name, str(path.parent))
        except (OSError, ValueError, SyntaxError) as e:
            skips.add("unreadable_image", path.name, str(path.parent))
            log.debug("zero-shot: %s unreadable: %s", path, e)
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def class_embeddings(model, texts: Sequence[str], templates: Sequence[str], *, tokenizer, device,
                     batch_size: int = 256) -> torch.Tensor:
    """classes x dim: each class the normalised mean of its normalised prompt embeddings."""
    bad = [t for t in templates if t.count("{}") != 1]
    if bad or not templates:
        raise ValueError(f"eval.templates: each template needs exactly one '{{}}' for the class name, "
                         f"got {bad or templates}")
    prompts = [t.format(c) for c in texts for t in templates]
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = trim_text(model, tokenizer(prompts[i:i + batch_size])).to(device)
        out.append(F.normalize(encode_text(model, tokens, trim=False).float(), dim=-1))
    emb = torch.cat(out).view(len(texts), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


@torch.no_grad()
def embed_images(model, images: torch.Tensor, *, device) -> torch.Tensor:
    """L2-normalised image embeddings of a uint8 batch (the model's own mean/std)."""
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in image_norm(model))
    x = (images.to(device).float() / 255 - mean) / std
    return F.normalize(model.encode_image(x).float(), dim=-1)


def classification_metrics(sim: torch.Tensor, truth: torch.Tensor, names: Sequence[str]) -> dict:
    """Top-1/top-5 accuracy (%), per-class accuracy (%) and its mean, confusion counts [truth][pred]."""
    n_cls = len(names)
    top = sim.topk(min(5, n_cls), dim=1).indices
    hit1 = top[:, 0] == truth
    hit5 = (top == truth.unsqueeze(1)).any(dim=1)
    confusion = torch.zeros(n_cls, n_cls, dtype=torch.long)
    confusion.index_put_((truth, top[:, 0]), torch.ones_like(truth), accumulate=True)
    per_class = {name: (100 * confusion[i, i].item() / confusion[i].sum().item()) if confusion[i].sum() else None
                 for i, name in enumerate(names)}
    present = [v for v in per_class.values() if v is not None]
    return {"num_images": len(truth), "num_classes": n_cls, "top1": 100 * hit1.float().mean().item(),
            "top5": 100 * hit5.float().mean().item(), "mean_per_class": sum(present) / len(present),
            "per_class": per_class, "confusion": confusion.tolist()}


def zeroshot_folder(model, root: str | Path, *, tokenizer, templates: Sequence[str], device="cpu",
                    batch_size: int = 64, max_pixels: int = 0) -> dict:
    """Zero-shot figures of ``model`` on the class-per-subfolder tree ``root`` (see the module docstring)."""
    folders, items = scan_folder(root)
    texts = [class_text(c) for c in folders]
    was_training = model.training
    model.eval()
    cls_emb = class_embeddings(model, texts, templates, tokenizer=tokenizer, device=device)
    skips = SkipLog()
    sims, truth = [], []
    for images, labels in iter_batches(items, size=image_size(model), batch_size=batch_size, skips=skips,
                                       max_pixels=max_pixels):
        sims.append((embed_images(model, images, device=device) @ cls_emb.T).cpu())
        truth.append(labels)
    model.train(was_training)
    if not sims:
        raise ValueError(f"--zeroshot: no readable image under {str(root)!r} (skips: {skips.as_dict()})")
    result = classification_metrics(torch.cat(sims), torch.cat(truth), folders)
    skipped = skips.as_dict()
    if skipped:
        log.warning("zero-shot: skipped images %s", skipped)
    return {"folder": str(root), "classes": dict(zip(folders, texts)), "templates": list(templates),
            **result, "skipped": skipped}


def plot_confusion(result: dict, path: str | Path) -> Path:
    """Confusion matrix picture (rows: true class, columns: predicted), row-normalised colours."""
    from training.plots import plt, save_png  # matplotlib (Agg) only when a picture is drawn

    names = list(result["per_class"])
    counts = torch.tensor(result["confusion"], dtype=torch.float)
    share = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    side = max(5.0, 0.35 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    if len(names) <= 25:
        for i in range(len(names)):
            for j in range(len(names)):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true",
           title=f"zero-shot: top-1 {result['top1']:.1f}%, top-5 {result['top5']:.1f}% ({result['num_images']} images)")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return save_png(fig, path)


def pop_option(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return VALUE (None when absent)."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise ValueError(f"{flag} needs a value")
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


def zeroshot_main(argv: list[str]) -> int:
    """``training.evaluate ... --zeroshot DIR [--zeroshot-out DIR]``: writes the JSON and the PNG, prints a summary."""
    from clip_models.device import resolve_device
    from clip_models.loading import model_name
    from clip_models.text_tower import build_tokenizer, tokenizer_spec
    from training.config import CLI_FLAGS, Stage2Config
    from training.export import adapter_dir, load_trained
    from wds_tools.atomic import write_json
    from wds_tools.config import parse_cli, prog_name

    argv = list(argv)
    root, out = pop_option(argv, "--zeroshot"), pop_option(argv, "--zeroshot-out")
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.evaluate"), description=__doc__.splitlines()[0],
                    flags={**CLI_FLAGS, "--adapter": "eval.adapter"})
    scan_folder(root)  # a wrong folder fails before the model loads
    # as training.evaluate: the configured adapter (default <train.output>/peft_adapter; missing is an
    # error), the base model alone only with eval.base_only
    model = load_trained(cfg, None if getattr(cfg.eval, "base_only", False) else str(adapter_dir(cfg)))
    device = resolve_device(cfg.model.device)
    result = zeroshot_folder(model.to(device), root, tokenizer=build_tokenizer(tokenizer_spec(model_name(cfg.model))),
                             templates=cfg.eval.templates, device=device, batch_size=cfg.eval.batch_size,
                             max_pixels=cfg.data.max_image_pixels)
    out_dir = Path(out or Path(cfg.train.output) / f"zeroshot_{Path(root).resolve().name}")
    result["confusion_png"] = str(plot_confusion(result, out_dir / "confusion_matrix.png"))
    write_json(out_dir / "zeroshot.json", result)
    shown = {k: result[k] for k in ("folder", "num_images", "num_classes", "top1", "top5", "mean_per_class", "skipped")}
    print(json.dumps({**shown, "json": str(out_dir / "zeroshot.json"), "confusion_png": result["confusion_png"]},
                     indent=2))
    return 0

