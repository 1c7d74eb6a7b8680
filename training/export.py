"""Merge a trained LoRA adapter + projection heads into a plain open_clip checkpoint.

``python -m training.export --config configs/train/lora.yaml [--adapter DIR] [--merged FILE]``
``python -m training.export --format open_clip-hub [--hub-dir DIR] ...``: the folder open_clip
pushes to a model hub, with a model card (``training/hub_export.py``; nothing is uploaded).

The result is a stock open_clip state dict (MultiheadAttention restored) that
``open_clip.create_model(name, pretrained=FILE)`` loads; the command checks that it does.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import open_clip
import torch
from torch import nn

from clip_models.attention import swap_attention, unswap_attention
from clip_models.loading import create_model, model_name
from training.checkpoint import load_heads
from training.config import CLI_FLAGS, Stage2Config
from training.lora import apply_lora, load_peft_adapter, merge_lora

log = logging.getLogger(__name__)


def adapter_dir(cfg: Stage2Config, adapter: str | None = None) -> Path:
    """The adapter folder: explicit, eval.adapter, or <train.output>/peft_adapter."""
    return Path(adapter or cfg.eval.adapter or Path(cfg.train.output) / "peft_adapter")


def load_trained(cfg: Stage2Config, adapter: str | None = None) -> nn.Module:
    """Base model (+ adapter and heads when given), merged into a stock open_clip model.

    ``adapter=None`` gives the base model alone; a named adapter folder must exist."""
    if adapter is None:
        return create_model(cfg.model)
    folder = adapter_dir(cfg, adapter)
    heads = folder.parent / "projection_heads_final.pt"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no trained adapter at {str(folder)!r} (eval.adapter / --adapter, default <train.output>/peft_adapter "
            f"with train.output={cfg.train.output!r}): name a finished Stage 2 run's train.output or adapter folder "
            "(training.evaluate: eval.base_only=true evaluates the base model alone)")
    if not (folder / "adapter_config.json").exists():
        raise ValueError(f"adapter folder {str(folder)!r} has no adapter_config.json")
    if not heads.exists():
        raise ValueError(f"projection heads {str(heads)!r} not found beside the adapter folder")
    model = create_model(cfg.model)
    swap_attention(model)
    apply_lora(model, cfg.lora)
    load_peft_adapter(model, folder)
    load_heads(model, heads)
    merge_lora(model)
    unswap_attention(model)
    return model


def export_merged(cfg: Stage2Config, *, adapter: str | None = None, merged: str | None = None) -> Path:
    """Write the merged checkpoint atomically and check that open_clip loads it."""
    model = load_trained(cfg, str(adapter_dir(cfg, adapter)))
    out = Path(merged or Path(cfg.train.output) / "open_clip_merged.pt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp-partial")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, out)
    check = open_clip.create_model(model_name(cfg.model), pretrained=str(out))
    ref, got = model.state_dict(), check.state_dict()
    bad = [k for k in ref if k in got and not torch.equal(ref[k].cpu(), got[k].cpu())]
    if bad:
        raise RuntimeError(f"{out}: reloaded weights differ at {bad[:3]}")
    log.info("merged checkpoint %s loads into open_clip %s", out, cfg.model.name)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-export``): a user error is one line and exit status 2."""
    from wds_tools.config import prog_name, run_main

    return run_main(_main, argv, prog=prog_name("training.export"))


def _main(argv: Sequence[str] | None) -> int:
    from wds_tools.config import parse_cli, prog_name

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    typed = list(argv)
    fmt, hub_dir = _pop(argv, "--format") or "open_clip", _pop(argv, "--hub-dir")
    merged = None
    if "--merged" in argv:
        i = argv.index("--merged")
        merged = argv[i + 1] if i + 1 < len(argv) else None
        if merged is None:
            raise ValueError("--merged needs a file path")
        del argv[i:i + 2]
    cfg = parse_cli(Stage2Config, argv, prog=prog_name("training.export"), description=__doc__.splitlines()[0],
                    flags={**CLI_FLAGS, "--adapter": "eval.adapter"})
    if fmt == "open_clip-hub":
        from training.hub_export import export_command, export_hub

        print(export_hub(cfg, out=hub_dir, command=export_command(typed)))
    elif fmt == "open_clip":
        print(export_merged(cfg, merged=merged))
    else:
        raise ValueError(f"--format must be open_clip (a merged .pt) or open_clip-hub (a hub folder), got {fmt!r}")
    return 0


def _pop(argv: list[str], flag: str) -> str | None:
    """Remove ``flag VALUE`` from ``argv`` and return VALUE (None when the flag is absent)."""
    if flag not in argv:
        return None
    i = argv.index(flag)
    if i + 1 >= len(argv):
        raise ValueError(f"{flag} needs a value")
    value = argv[i + 1]
    del argv[i:i + 2]
    return value


if __name__ == "__main__":
    sys.exit(main())
