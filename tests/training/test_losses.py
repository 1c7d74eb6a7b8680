"""Weighted CLIP loss, rare-class weights and the SPARC fine-grained loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from training.losses import (
    false_negative_mask,
    masked_clip_ce,
    rare_class_weights,
    repeated_token_mask,
    sparc_loss,
    weighted_clip_loss,
    word_token_mask,
)


def test_rare_class_weights_threshold():
    counts = {"forest": 50, "river": 40, "airport": 5, "beach": 5}
    # uniform share 1/4; threshold 0.5 -> rare below 12.5 %
    assert rare_class_weights(counts, rare_weight=2.0, threshold=0.5) == {
        "forest": 1.0, "river": 1.0, "airport": 2.0, "beach": 2.0}
    assert rare_class_weights({}, rare_weight=2.0, threshold=0.5) == {}


def test_unit_weights_equal_open_clip_loss_and_weights_shift_it():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    ours = weighted_clip_loss(img, txt, scale, torch.ones(6))
    assert ours["loss"].item() == pytest.approx(ClipLoss()(img, txt, scale).item(), rel=1e-6)
    # per-sample CE, weighted mean: equal to doubling the rows of sample 0
    w = torch.tensor([2.0, 1, 1, 1, 1, 1])
    ce = (F.cross_entropy(scale * img @ txt.T, torch.arange(6), reduction="none")
          + F.cross_entropy(scale * txt @ img.T, torch.arange(6), reduction="none")) / 2
    assert weighted_clip_loss(img, txt, scale, w)["loss"].item() == pytest.approx((w * ce).sum().item() / 7, rel=1e-6)


def test_word_token_mask_excludes_specials_and_padding():
    text = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 49407, 0, 0, 0, 0]])
    assert word_token_mask(text).tolist() == [[False, True, True, False, False, False], [False] * 6]


def test_sparc_loss_decreases_on_a_learnable_toy():
    """Words are noisy linear images of specific patches; learning the map lowers the loss."""
    g = torch.Generator().manual_seed(0)
    b, p, w, d = 8, 9, 5, 16
    patches = torch.randn(b, p, d, generator=g)
    which = torch.stack([torch.randperm(p, generator=g)[:w] for _ in range(b)])
    mix = torch.randn(d, d, generator=g)
    words_in = patches.gather(1, which.unsqueeze(-1).expand(-1, -1, d)) @ mix + 0.05 * torch.randn(b, w, d, generator=g)
    mask = torch.ones(b, w, dtype=torch.bool)
    mask[0, 3:] = False
    proj = torch.nn.Linear(d, d)
    opt = torch.optim.Adam(proj.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss = sparc_loss(proj(words_in), patches, mask, temperature=0.1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    empty = sparc_loss(torch.randn(2, 3, d), torch.randn(2, p, d), torch.zeros(2, 3, dtype=torch.bool))
    assert empty.tolist() == [0.0, 0.0]


def _features(b=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    return img, txt


def _hand_loss(img, txt, scale, w, groups, caps):
    """The CLIP loss written out term by term, leaving out every pair that shares an id."""
    b = len(groups)
    total = 0.0
    for i in range(b):
        keep = [j for j in range(b) if j == i or (groups[i] != groups[j] and caps[i] != caps[j])]
        i2t = -scale * img[i] @ txt[i] + torch.logsumexp(torch.stack([scale * img[i] @ txt[j] for j in keep]), 0)
        t2i = -scale * txt[i] @ img[i] + torch.logsumexp(torch.stack([scale * txt[i] @ img[j] for j in keep]), 0)
        total = total + w[i] * (i2t + t2i) / 2
    return total / w.sum()


def test_masked_loss_equals_the_loss_without_the_duplicate_pairs():
    img, txt = _features()
    scale, w = torch.tensor(10.0), torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0])
    groups, caps = [1, 1, 2, 3, 4], [7, 8, 9, 10, 9]   # 0~1 same source, 2~4 same caption
    ours = weighted_clip_loss(img, txt, scale, w, groups=torch.tensor(groups), captions=torch.tensor(caps))
    hand = _hand_loss(img, txt, scale, w, groups, caps)
    assert ours["loss"].item() == pytest.approx(hand.item(), rel=1e-6)
    assert ours["masked_pairs"].item() == 4
    plain = weighted_clip_loss(img, txt, scale, w)["loss"]
    assert abs(plain.item() - hand.item()) > 1e-3  # the masked pairs did count before
    # Same gradients as the hand-written loss, where the masked pairs do not appear at all.
    g_ours = torch.autograd.grad(ours["loss"], (img, txt))
    g_hand = torch.autograd.grad(hand, (img, txt))
    for a, b in zip(g_ours, g_hand):
        assert torch.allclose(a, b, atol=1e-6)


def test_masked_pairs_get_no_gradient():
    g = torch.Generator().manual_seed(1)
    li = torch.randn(4, 4, generator=g, requires_grad=True)
    lt = torch.randn(4, 4, generator=g, requires_grad=True)
    labels = torch.arange(4)
    mask = false_negative_mask(labels, [(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 2]))])
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False],
                             [False] * 4, [False] * 4]
    ce, _, _ = masked_clip_ce(li, lt, labels, mask)
    ce.sum().backward()
    for grad in (li.grad, lt.grad):
        assert (grad[mask] == 0).all() and (grad[~mask] != 0).all()


def test_masking_off_or_nothing_to_mask_is_the_old_loss_exactly():
    img, txt = _features(6, seed=2)
    scale, w = torch.tensor(12.0), torch.tensor([2.0, 1, 1, 1, 1, 1])
    old = (F.cross_entropy((scale * img @ txt.T).float(), torch.arange(6), reduction="none")
           + F.cross_entropy((scale * txt @ img.T).float(), torch.arange(6), reduction="none")) / 2
    old = (w * old).sum() / (w.mean() * 6)
    assert torch.equal(weighted_clip_loss(img, txt, scale, w)["loss"], old)
    distinct = weighted_clip_loss(img, txt, scale, w, groups=torch.arange(6), captions=torch.arange(6) + 100)
    assert torch.equal(distinct["loss"], old) and distinct["masked_pairs"].item() == 0


def test_sparc_repeated_tokens_are_not_negatives():
    g = torch.Generator().manual_seed(3)
    b, w, p, d, t = 2, 5, 4, 8, 0.1
    words, patches = torch.randn(b, w, d, generator=g), torch.randn(b, p, d, generator=g)
    text = torch.tensor([[49406, 320, 900, 320, 49407], [49406, 11, 12, 13, 49407]])
    valid = word_token_mask(text)
    assert repeated_token_mask(text)[0, 1, 3] and not repeated_token_mask(text)[1].any()
    ours = sparc_loss(words, patches, valid, temperature=t, text=text)
    # By hand: the same grouping, then each word's cross-entropy over the words it may be confused
    # with: valid and not the same token id (sample 0: positions 1 and 3 are both token 320).
    wn, pn = F.normalize(words, dim=-1), F.normalize(patches, dim=-1)
    sim = wn @ pn.transpose(1, 2)
    a = (sim - sim.amin(-1, keepdim=True)) / (sim.amax(-1, keepdim=True) - sim.amin(-1, keepdim=True) + 1e-6)
    a = torch.where(a < 1 / p, torch.zeros_like(a), a)
    grouped = F.normalize((a / (a.sum(-1, keepdim=True) + 1e-6)) @ pn, dim=-1)
    logits = wn @ grouped.transpose(1, 2) / t
    for s in range(b):
        pos = [i for i in range(w) if valid[s, i]]
        terms = []
        for i in pos:
            allowed = [j for j in pos if j == i or text[s, j] != text[s, i]]
            w2v = -logits[s, i, i] + torch.logsumexp(logits[s, i, allowed], 0)
            v2w = -logits[s, i, i] + torch.logsumexp(logits[s, allowed, i], 0)
            terms.append((w2v + v2w) / 2)
        assert ours[s].item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5)
    plain = sparc_loss(words, patches, valid, temperature=t)
    assert plain[1].item() == pytest.approx(ours[1].item(), rel=1e-6)
    assert plain[0].item() != pytest.approx(ours[0].item())
