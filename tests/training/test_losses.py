"""Weighted CLIP loss, rare-class weights and the SPARC fine-grained loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from training.losses import rare_class_weights, sparc_loss, weighted_clip_loss, word_token_mask


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
