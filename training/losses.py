"""Losses of Stage 2: weighted CLIP contrastive loss with global negatives and SPARC-style
fine-grained word-region alignment.

Normalisation across processes: every rank divides its weighted sum by the *global* mean weight
(``sum of all weights / world size``), so the mean of the per-rank losses (what DDP's gradient
averaging optimises and what is logged) equals the single-process loss on the same global batch.

Fine-grained loss (choice: SPARC, Bica et al. 2024, "Improving fine-grained understanding in
image-text pre-training"): per sample, each caption token is matched to a sparse, similarity-weighted
sum of that image's patch embeddings and contrasted against the other tokens of the same caption.
It needs no cross-sample token comparison (FILIP's token-wise max over all image/caption pairs is
B^2 x L x P), so it costs one B x L x P product and needs no gather.

False negatives (choice: masking, not multi-positive targets): an original and its augmentations
(same ``group`` id: the parent key, or the key of an original) and samples whose captions tokenise
identically (same ``caption`` id) are removed from each other's softmax denominators; each sample's
own pair stays the only target. Multi-positive targets would pull an augmented crop towards its
sibling's caption, which after a flip or crop may no longer describe it (M2B/B2C captions are made
per image), and the identical captions of different sources (class templates) say nothing about
whether the images match; masking only stops pushing such pairs apart. With no such pair in the
batch the masked loss equals the plain one exactly. Ids are all-gathered, so pairs split across
ranks are masked too. SPARC has no cross-sample negatives (each caption's words are contrasted with
the other words of the same caption), so its false negatives are repeated tokens of one caption:
they are masked the same way.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import gather_features

# open_clip's gather uses torch.distributed.nn.all_gather, which still works; silence its notice.
warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)


def rare_class_weights(by_class: dict[str, int], *, rare_weight: float, threshold: float) -> dict[str, float]:
    """Weight per class: ``rare_weight`` when its share of classed samples < threshold / n_classes, else 1."""
    counts = {c: int(n) for c, n in by_class.items() if c not in ("", None, "null", "None") and int(n) > 0}
    total = sum(counts.values())
    if not counts:
        return {}
    cutoff = threshold / len(counts)
    return {c: (rare_weight if n / total < cutoff else 1.0) for c, n in counts.items()}


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def global_weight_mean(weights: torch.Tensor) -> torch.Tensor:
    """Mean sample weight over the global batch (all ranks), without gradient."""
    total = torch.stack([weights.detach().sum(), torch.tensor(float(weights.numel()), device=weights.device)])
    _, world = _dist_info()
    if world > 1:
        dist.all_reduce(total)
    return total[0] / total[1]


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """All ranks' int64 ids concatenated in rank order (no gradient); the local ids when alone."""
    _, world = _dist_info()
    if world == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def false_negative_mask(labels: torch.Tensor, ids: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """B x N: True where local row i and global column j share any id (``(local, global)`` pairs),
    except each row's own target column ``labels[i]``."""
    mask = torch.zeros(labels.numel(), ids[0][1].numel(), dtype=torch.bool, device=labels.device)
    for local, every in ids:
        mask |= local.unsqueeze(1) == every.unsqueeze(0)
    mask[torch.arange(labels.numel(), device=labels.device), labels] = False
    return mask


def masked_clip_ce(logits_i2t: torch.Tensor, logits_t2i: torch.Tensor, labels: torch.Tensor,
                   mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample symmetric cross-entropy and the (masked) logits; masked columns are -inf, so
    they take no part in the softmax and get no gradient. ``mask=None`` is the plain loss."""
    logits_i2t, logits_t2i = logits_i2t.float(), logits_t2i.float()
    if mask is not None:
        logits_i2t = logits_i2t.masked_fill(mask, float("-inf"))
        logits_t2i = logits_t2i.masked_fill(mask, float("-inf"))
    ce = (F.cross_entropy(logits_i2t, labels, reduction="none")
          + F.cross_entropy(logits_t2i, labels, reduction="none")) / 2
    return ce, logits_i2t, logits_t2i


def weighted_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                       weights: torch.Tensor, *, groups: torch.Tensor | None = None,
                       captions: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE over the global batch (gathered with gradient), rows weighted per sample.

    Features must be L2-normalised. ``groups`` / ``captions``: int64 ids per local sample; pairs
    sharing one are not negatives of each other (module docstring). Returns ``loss`` (this rank's
    share), ``acc_i2t``, ``acc_t2i`` and ``masked_pairs`` (masked cells of this rank's rows).
    """
    rank, world = _dist_info()
    if world > 1:
        all_img, all_txt = gather_features(image_features, text_features, local_loss=True,
                                           gather_with_grad=True, rank=rank, world_size=world)
    else:
        all_img, all_txt = image_features, text_features
    logits_i2t = logit_scale * image_features @ all_txt.T
    logits_t2i = logit_scale * text_features @ all_img.T
    labels = torch.arange(image_features.shape[0], device=image_features.device) + rank * image_features.shape[0]
    ids = [(i, gather_ids(i)) for i in (groups, captions) if i is not None]
    mask = false_negative_mask(labels, ids) if ids else None
    ce, logits_i2t, logits_t2i = masked_clip_ce(logits_i2t, logits_t2i, labels, mask)
    w = weights.to(ce.dtype)
    loss = (w * ce).sum() / (global_weight_mean(w) * w.numel())
    with torch.no_grad():
        acc_i2t = (logits_i2t.argmax(dim=1) == labels).float().mean()
        acc_t2i = (logits_t2i.argmax(dim=1) == labels).float().mean()
        masked = mask.sum().float() if mask is not None else torch.zeros((), device=labels.device)
    return {"loss": loss, "acc_i2t": acc_i2t, "acc_t2i": acc_t2i, "masked_pairs": masked}


def word_token_mask(text: torch.Tensor) -> torch.Tensor:
    """Caption word positions: not padding (id 0), not start-of-text, not end-of-text (argmax id).

    These are the conventions of open_clip's default tokenizer (all RemoteCLIP models use it).
    """
    pos = torch.arange(text.shape[1], device=text.device).unsqueeze(0)
    eot = text.argmax(dim=1, keepdim=True)
    return (text != 0) & (pos > 0) & (pos != eot)


def repeated_token_mask(text: torch.Tensor) -> torch.Tensor:
    """B x L x L: True where positions l != m of one caption hold the same token id."""
    same = text.unsqueeze(2) == text.unsqueeze(1)
    return same & ~torch.eye(text.shape[1], dtype=torch.bool, device=text.device)


def sparc_loss(word_tokens: torch.Tensor, patch_tokens: torch.Tensor, word_mask: torch.Tensor, *,
               temperature: float = 0.07, text: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample SPARC fine-grained loss (B,) for word tokens B x L x D and patches B x P x D.

    ``text`` (token ids, B x L): a token repeated within a caption is not a negative of its other
    occurrences (masked; see the module docstring). Samples without any word token get 0.
    """
    words = F.normalize(word_tokens.float(), dim=-1)
    patches = F.normalize(patch_tokens.float(), dim=-1)
    sim = words @ patches.transpose(1, 2)  # B x L x P
    lo, hi = sim.amin(dim=-1, keepdim=True), sim.amax(dim=-1, keepdim=True)
    align = (sim - lo) / (hi - lo + 1e-6)
    # Sparsify: keep patches above the uniform share, as SPARC does.
    align = torch.where(align < 1.0 / patches.shape[1], torch.zeros_like(align), align)
    align = align / (align.sum(dim=-1, keepdim=True) + 1e-6)
    grouped = F.normalize(align @ patches, dim=-1)  # B x L x D, language-grouped vision embeddings
    logits = words @ grouped.transpose(1, 2) / temperature  # B x L x L
    valid = word_mask.bool()
    pair = valid.unsqueeze(1) & valid.unsqueeze(2)
    if text is not None:
        pair = pair & ~repeated_token_mask(text[:, : logits.shape[1]])
    logits = logits.masked_fill(~pair, -1e4)
    labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    ce_w2v = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # word -> its grouped vision
    ce_v2w = F.cross_entropy(logits, labels, reduction="none")
    per_token = (ce_w2v + ce_v2w) / 2 * valid
    n_words = valid.sum(dim=1)
    return per_token.sum(dim=1) / n_words.clamp(min=1)


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """This rank's share of the globally weight-normalised mean (see module docstring)."""
    w = weights.to(per_sample.dtype)
    return (w * per_sample).sum() / (global_weight_mean(w) * w.numel())
