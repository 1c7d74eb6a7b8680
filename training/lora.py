"""A lean LoRA Linear that saves and loads as a peft LoRA adapter.

peft's own LoRA layer costs a lot of per-call Python at CLIP sizes (NOTES: eager peft LoRA ran
at 0.6x a full fine-tune). :class:`LoraLinear` is the same maths (``base(x) + B(A(drop(x))) *
alpha / r``, A kaiming-uniform, B zero) in one small module; :func:`save_peft_adapter` writes
``adapter_config.json`` + ``adapter_model.safetensors`` with peft's key names, so
``PeftModel.from_pretrained(<swapped base model>, folder)`` loads it.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from training.config import LoraConfig

log = logging.getLogger(__name__)

PEFT_PREFIX = "base_model.model."


class LoraLinear(nn.Module):
    """Frozen ``base`` Linear plus a rank-``rank`` update scaled by ``alpha / rank``
    (``rslora``: ``alpha / sqrt(rank)``)."""

    def __init__(self, *, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 rslora: bool = False) -> None:
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.rslora = rank, alpha, rslora
        self.scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    # open_clip reads ``mlp.c_fc.weight.dtype``; keep the Linear attributes visible.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The dense update ``B @ A * scaling``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded into the weight."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.delta_weight().to(self.base.weight.dtype))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _skip_reason(model: nn.Module, name: str) -> str | None:
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        return "inside nn.MultiheadAttention (weights read directly; enable model.swap_attention)"
    if type(parent).__name__ == "AttentionPool2d":
        return "RN50 attention pooling calls F.multi_head_attention_forward on raw weights"
    return None


def apply_lora(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Wrap every Linear whose last name part is in ``cfg.targets``; returns the wrapped names."""
    targets = set(cfg.targets)
    wrapped, skipped = [], []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, nn.Linear) or name.rpartition(".")[2] not in targets:
            continue
        reason = _skip_reason(model, name)
        if reason:
            skipped.append((name, reason))
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoraLinear(base=mod, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout,
                                          rslora=cfg.rslora))
        wrapped.append(name)
    for name, reason in skipped:
        if "MultiheadAttention" in reason:
            raise ValueError(f"LoRA target {name}: {reason}")
        log.info("LoRA skips %s: %s", name, reason)
    if not wrapped:
        raise ValueError(f"no Linear matched lora.targets {cfg.targets}")
    return wrapped


def head_parameter_names(model: nn.Module) -> list[str]:
    """Projection heads trained in full: visual.proj, text_projection, logit_scale (RN50: attnpool.c_proj)."""
    names = dict(model.named_parameters())
    heads = [n for n in ("visual.proj", "text_projection", "text.text_projection", "logit_scale") if n in names]
    heads += [n for n in names if n.startswith(("text_projection.", "text.text_projection."))]
    if "visual.proj" not in names:
        heads += [n for n in names if n.startswith("visual.attnpool.c_proj.")]
    return heads


def full_parameter_names(model: nn.Module, cfg: LoraConfig | None = None) -> list[str]:
    """Parameters trained in full beside LoRA, as ``cfg`` asks (default: the projection heads)."""
    cfg = cfg or LoraConfig()
    names = head_parameter_names(model) if cfg.train_heads else []
    if cfg.train_layernorms:
        names += [f"{m}.{p}" if m else p for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
                  for p, _ in mod.named_parameters(recurse=False)]
    if cfg.train_token_embedding:
        emb = [n for n in dict(model.named_parameters()) if n.endswith("token_embedding.weight")]
        if not emb:
            raise ValueError("lora.train_token_embedding: the model has no token_embedding table")
        names += emb
    return list(dict.fromkeys(names))


def mark_trainable(model: nn.Module, cfg: LoraConfig | None = None) -> dict[str, int]:
    """Freeze the backbone; train LoRA factors and :func:`full_parameter_names`. Returns counts."""
    model.requires_grad_(False)
    for mod in model.modules():
        if isinstance(mod, LoraLinear):
            mod.lora_A.requires_grad_(True)
            mod.lora_B.requires_grad_(True)
    params = dict(model.named_parameters())
    full = full_parameter_names(model, cfg)
    for name in full:
        params[name].requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters()),
            "full_parameters": sum(params[n].numel() for n in full)}


def trained_full_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters that are not LoRA factors (saved beside the adapter)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and ".lora_" not in n]


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Name -> LoraLinear (names without wrappers such as DDP's ``module.``)."""
    return {n.removeprefix("module.").removeprefix("_orig_mod."): m
            for n, m in model.named_modules() if isinstance(m, LoraLinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<module>.lora_A.weight`` / ``.lora_B.weight`` tensors (fp32, CPU)."""
    out = {}
    for name, mod in lora_modules(model).items():
        out[f"{name}.lora_A.weight"] = mod.lora_A.weight.detach().float().cpu().clone()
        out[f"{name}.lora_B.weight"] = mod.lora_B.weight.detach().float().cpu().clone()
    return out


def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`lora_state_dict`; every LoRA module must be covered."""
    mods = lora_modules(model)
    expected = {f"{n}.lora_{ab}.weight" for n in mods for ab in "AB"}
    if set(state) != expected:
        raise ValueError(f"LoRA state mismatch: missing {sorted(expected - set(state))[:3]}, "
                         f"unexpected {sorted(set(state) - expected)[:3]}")
    with torch.no_grad():
        for name, mod in mods.items():
            mod.lora_A.weight.copy_(state[f"{name}.lora_A.weight"])
            mod.lora_B.weight.copy_(state[f"{name}.lora_B.weight"])


def save_peft_adapter(model: nn.Module, folder: str | Path, *, cfg: LoraConfig) -> Path:
    """Write a peft LoRA adapter folder for the attention-swapped model."""
    from peft import LoraConfig as PeftLoraConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(lora_modules(model))
    peft_cfg = PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=names, bias="none", use_rslora=cfg.rslora)
    peft_cfg.save_pretrained(str(folder))
    tensors = {PEFT_PREFIX + k: v.contiguous() for k, v in lora_state_dict(model).items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return folder


def load_peft_adapter(model: nn.Module, folder: str | Path) -> None:
    """Load a folder written by :func:`save_peft_adapter` into a model already wrapped by apply_lora."""
    folder = Path(folder)
    meta = json.loads((folder / "adapter_config.json").read_text())
    mods = lora_modules(model)
    if set(meta["target_modules"]) != set(mods):
        raise ValueError(f"{folder}: adapter targets do not match the model's LoRA modules")
    rslora = {m.rslora for m in mods.values()}
    if rslora != {bool(meta.get("use_rslora", False))}:
        raise ValueError(f"{folder}: adapter use_rslora={meta.get('use_rslora')} but the model's LoRA "
                         f"modules have rslora={sorted(rslora)} (set lora.rslora to match)")
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    load_lora_state_dict(model, state)


def merge_lora(model: nn.Module) -> int:
    """Replace every LoraLinear by its merged plain Linear; returns the count."""
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]
    for name, mod in mods:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, mod.merged())
    return len(mods)
