"""The folder open_clip pushes to a model hub, written locally: ``training.export --format open_clip-hub``.

Layout (open_clip's own ``push_to_hf_hub`` names; nothing is uploaded)::

    open_clip_config.json          {"model_cfg": ..., "preprocess_cfg": ...}
    open_clip_model.safetensors    the merged weights (a stock open_clip state dict)
    README.md                      the model card (training/model_card.py)
    peft_adapter/                  adapter_config.json, adapter_model.safetensors (peft's format)
                                   + projection_heads.safetensors (heads trained in full)
    training_config.yaml           the run's whole configuration

``open_clip.create_model_and_transforms("local-dir:FOLDER")`` loads it, and the export checks that
it does, with the same weights, before the folder takes its final name.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from clip_models.loading import model_name
from clip_models.preprocess import preprocess_of
from training.config import Stage2Config
from training.export import adapter_dir, load_trained
from training.model_card import load_run_log, render_card, selection_facts
from wds_tools.config import config_to_dict

log = logging.getLogger(__name__)
FORMATS = ("open_clip", "open_clip-hub")
CONFIG_NAME, WEIGHTS_NAME = "open_clip_config.json", "open_clip_model.safetensors"
ADAPTER_NAME, HEADS_NAME = "peft_adapter", "projection_heads.safetensors"


def hub_config(model: torch.nn.Module, name: str) -> dict:
    """open_clip_config.json: the model config open_clip builds ``name`` from, and its preprocessing."""
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"open_clip has no config for model {name!r}")
    p = preprocess_of(model)
    return {"model_cfg": model_cfg,
            "preprocess_cfg": {"size": p.size, "mean": list(p.mean), "std": list(p.std),
                               "interpolation": p.interpolation, "resize_mode": "shortest"}}


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _check_loads(folder: Path, want: dict[str, torch.Tensor]) -> None:
    """open_clip builds the folder through ``local-dir:`` with exactly the exported weights."""
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    got = model.state_dict()
    bad = [k for k in want if k not in got or not torch.equal(want[k], got[k].cpu())] + sorted(set(got) - set(want))
    if bad:
        raise RuntimeError(f"{folder}: open_clip's local-dir: load differs at {bad[:3]}")


def _copy_adapter(folder: Path, dest: Path) -> None:
    """The peft adapter and, beside it, the projection heads as safetensors (no pickle to open)."""
    heads = folder.parent / "projection_heads_final.pt"
    shutil.copytree(folder, dest)
    tensors = torch.load(heads, map_location="cpu", weights_only=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dest / HEADS_NAME), metadata={"format": "pt"})


def _replace_dir(tmp: Path, out: Path) -> None:
    """Give ``tmp`` the name ``out``; an older export there is moved aside first, then removed."""
    old = out.with_name(out.name + ".old-export")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def export_hub(cfg: Stage2Config, *, adapter: str | None = None, out: str | None = None,
               command: str | None = None) -> Path:
    """Write the hub folder (default ``<train.output>/open_clip_hub``) and check open_clip loads it."""
    folder = adapter_dir(cfg, adapter)
    run_dir = folder.parent
    model = load_trained(cfg, str(folder))
    name = model_name(cfg.model)
    dest = Path(out or run_dir / "open_clip_hub")
    tmp = dest.with_name(dest.name + ".tmp-partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(hub_config(model, name), indent=2))
        weights = _state_dict(model)
        save_file(weights, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        _copy_adapter(folder, tmp / ADAPTER_NAME)
        run_log = load_run_log(run_dir)
        config = run_log.get("config") or config_to_dict(cfg)
        if (run_dir / "config.yaml").is_file():
            shutil.copyfile(run_dir / "config.yaml", tmp / "training_config.yaml")
        files = {"adapter": ADAPTER_NAME, "heads": f"{ADAPTER_NAME}/{HEADS_NAME}"}
        card = render_card(run_log=run_log, config=config, selections=selection_facts(config.get("data", {})),
                           export_command=command, files=files)
        (tmp / "README.md").write_text(card)
        _check_loads(tmp, weights)
        _replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("open_clip hub folder %s loads with open_clip.create_model_and_transforms('local-dir:%s')", dest, dest)
    return dest


def export_command(argv: list[str] | None = None) -> str:
    """This export's command line as typed."""
    return shlex.join(["python", "-m", "training.export", *(sys.argv[1:] if argv is None else argv)])
