import pytest
import torch
from safetensors.torch import save_file

from clip_models.scoring import load_clip
from builders.quality.clip_score import ClipScorer
from tests.builders.quality.conftest import REPO

TINY = str(REPO / "configs" / "models" / "tiny-clip.json")


def test_tiny_model_scores_and_reloads_weights(tmp_path):
    model, size, tok = load_clip(model_name=TINY, pretrained=None, device="cpu", precision="fp32")
    assert size == 64
    torch.save(model.state_dict(), tmp_path / "w.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    scorer = ClipScorer(model=model, device=torch.device("cpu"), precision="fp32")
    imgs = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    toks = tok(["a road", "a river", "two buildings"])
    ref = scorer(imgs, toks)
    assert ref.shape == (3,) and bool(((ref >= -1) & (ref <= 1)).all())
    for name in ("w.pt", "w.safetensors"):
        again, _, _ = load_clip(model_name=TINY, pretrained=str(tmp_path / name), device="cpu", precision="fp32")
        torch.testing.assert_close(ClipScorer(model=again, device=torch.device("cpu"))(imgs, toks), ref)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precision"):
        load_clip(model_name=TINY, pretrained=None, device="cpu", precision="fp8")
    with pytest.raises(ValueError, match="missing.pt"):
        load_clip(model_name=TINY, pretrained="/nonexistent/missing.pt", device="cpu", precision="fp32")
    with pytest.raises(ValueError, match="no-such-model"):
        load_clip(model_name="no-such-model", pretrained=None, device="cpu", precision="fp32")
