"""Resumable checkpoints (accelerate state + per-rank data position) and the final outputs.

A checkpoint is written to ``step_NNNNNNN.tmp-partial`` and renamed to ``step_NNNNNNN`` by the main
process once every rank has written its part, so a run killed mid-save leaves no folder that looks
complete. The output folder must be shared by all nodes (as for ``accelerator.save_state``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from torch import nn

from training.config import LoraConfig
from training.lora import head_parameter_names, lora_state_dict, save_peft_adapter, trained_full_parameter_names
from wds_tools.atomic import atomic_open, write_json

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{7})$")
# How torch.save and safetensors report a failed write (they raise RuntimeError / SafetensorError,
# not OSError): "file write failed", "... (os error 28)".
_WRITE_FAILED = re.compile(r"write failed|os error \d+|no space left|file too large|read-only file system|"
                           r"permission denied|disk quota", re.IGNORECASE)


class OutputError(ValueError):
    """Stage 2 cannot write under train.output (full disk, read-only, no permission): a user error."""


@contextmanager
def output_errors(path: str | Path, *, output: str | Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (under train.output ``output``) into one :class:`OutputError`
    line naming the path; anything else keeps its traceback."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise OutputError(f"cannot write {e.filename or path}: {reason} (train.output={str(output)!r})") from e
    except Exception as e:
        text = " ".join(str(e).split())
        if not _WRITE_FAILED.search(text):
            raise
        raise OutputError(f"cannot write {path}: {text[:200]} (train.output={str(output)!r})") from e


def check_writable(output: str | Path, rank: int) -> None:
    """Create train.output and write (then remove) a probe file in it, so an unwritable folder is one
    clear error before any work, not a traceback at the first checkpoint."""
    output = Path(output)
    probe = output / f".write-check.rank{rank}"
    with output_errors(output, output=output):
        output.mkdir(parents=True, exist_ok=True)
    with output_errors(probe, output=output):
        with open(probe, "w") as f:
            f.write("ok\n")
        probe.unlink()


def checkpoint_root(output: str | Path) -> Path:
    return Path(output) / "checkpoints"


def list_checkpoints(output: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and _STEP_DIR.match(p.name) and (p / "trainer_state.json").exists()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve_resume(output: str | Path, resume: str) -> Path | None:
    """The checkpoint to resume from: ``"auto"`` = newest complete one, ``""`` = none, else a path."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").exists():
        raise ValueError(f"train.resume {resume!r} is not a complete checkpoint folder")
    return path


def save_checkpoint(accelerator, output: str | Path, *, step: int, trainer_state: dict, data_state: dict,
                    keep: int) -> Path:
    """Collective: every rank calls it. Returns the final folder. A failed write is an
    :class:`OutputError` naming the path (the launcher then stops the other ranks)."""
    final = checkpoint_root(output) / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp-partial")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        with output_errors(tmp, output=output):
            tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with output_errors(tmp, output=output):
        accelerator.save_state(str(tmp))
        write_json(tmp / f"data_state.rank{accelerator.process_index}.json", data_state)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with output_errors(tmp, output=output):
            write_json(tmp / "trainer_state.json", {**trainer_state, "step": step,
                                                   "world_size": accelerator.num_processes})
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        for old in list_checkpoints(output)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        log.info("checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def check_random_states(path: Path, rank: int) -> bool:
    """True if this rank's RNG file loads with the safe loader Accelerate uses.

    Accelerate refuses a file that needs an unpickle (a planted ``random_states_0.pkl``) but says
    so only at INFO level and resumes with fresh random states: that is worth a warning.
    """
    from accelerate.utils import load

    rng_file = path / f"random_states_{rank}.pkl"
    try:
        load(rng_file, map_location="cpu")
        return True
    except Exception as e:  # noqa: BLE001 - any refusal or damage means the states are not restored
        log.warning("checkpoint %s: %s was refused by the safe loader (%s: %s); the random states are "
                    "not restored (the data position and weights are)", path, rng_file.name,
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return False


def load_checkpoint(accelerator, path: Path) -> tuple[dict, dict]:
    """Restore the accelerate state; returns (trainer_state, this rank's data_state)."""
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    if trainer_state["world_size"] != accelerator.num_processes:
        raise ValueError(f"{path} was written with {trainer_state['world_size']} processes, now "
                         f"{accelerator.num_processes}: the data position only resumes at the same world size")
    check_random_states(path, accelerator.process_index)
    accelerator.load_state(str(path))
    data_state = json.loads((path / f"data_state.rank{accelerator.process_index}.json").read_text())
    return trainer_state, data_state


def open_sample_keys(path: Path, *, resume_step: int) -> IO[str]:
    """The per-rank sample-key log, opened for appending after cutting it back to the steps before
    ``resume_step``: a resumed run writes the later steps again (a fresh run starts it empty), and a
    line cut by a kill is dropped."""
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] < resume_step:
                kept.append(line + "\n")
    with atomic_open(path, "w") as f:
        f.writelines(kept)
    return open(path, "a")


def head_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter trained in full beside LoRA: projection heads (visual.proj, text_projection,
    logit_scale; RN50 attnpool.c_proj) and, where lora.train_* asked for them, LayerNorms and the
    token embedding. A model with nothing marked trainable gives the heads."""
    params = dict(model.named_parameters())
    names = trained_full_parameter_names(model) or head_parameter_names(model)
    return {n.removeprefix("module.").removeprefix("_orig_mod."): params[n].detach().float().cpu().clone()
            for n in names}


def save_final(model: nn.Module, output: str | Path, *, lora_cfg: LoraConfig) -> dict[str, str]:
    """``lora_final.pt``, ``projection_heads_final.pt`` and the peft adapter folder ``peft_adapter``."""
    output = Path(output)
    paths = {"lora": output / "lora_final.pt", "heads": output / "projection_heads_final.pt",
             "adapter": output / "peft_adapter"}
    for key, state in (("lora", lora_state_dict(model)), ("heads", head_state_dict(model))):
        tmp = paths[key].with_name(paths[key].name + ".tmp-partial")
        torch.save(state, tmp)
        os.replace(tmp, paths[key])
    tmp_adapter = output / "peft_adapter.tmp-partial"
    shutil.rmtree(tmp_adapter, ignore_errors=True)
    save_peft_adapter(model, tmp_adapter, cfg=lora_cfg)
    shutil.rmtree(paths["adapter"], ignore_errors=True)
    os.replace(tmp_adapter, paths["adapter"])
    return {k: str(v) for k, v in paths.items()}


def load_heads(model: nn.Module, path: str | Path) -> None:
    """Load ``projection_heads_final.pt`` into a model (safe load)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    unknown = [n for n in state if n not in params]
    if unknown:
        raise ValueError(f"{path}: heads {unknown} not in the model")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
