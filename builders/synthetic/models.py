"""The five model stages of a worker: built on first use, loaded one at a time unless resident.

``StageModels.get(name)`` returns the loaded stage; ``release(name)`` unloads it again unless
``resident`` is set, so only one model occupies the device at a time (the whole pipeline fits
a 24 GB card). Verification reuses the ground stage. With ``resident`` the stages stay loaded
for every later unit of the same worker process.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# stage -> (module, class) in builders.synthetic.stages
STAGE_CLASSES = {
    "upscale": ("builders.synthetic.stages.upscale", "Upscaler"),
    "describe": ("builders.synthetic.stages.describe", "Describer"),
    "ground": ("builders.synthetic.stages.ground", "Grounder"),
    "segment": ("builders.synthetic.stages.segment", "Segmenter"),
    "generate": ("builders.synthetic.stages.generate", "SD3Generator"),
}
_RESIDENT: dict[tuple, object] = {}   # per process: (stage, config repr, device) -> loaded stage


def model_id(cfg, stage: str) -> str:
    """The weights a stage loads (for the sample's ``models`` record)."""
    sub = getattr(cfg, stage)
    return str(getattr(sub, "model", "") or "")


class StageModels:
    """Stage instances of one build config in one process."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._live: dict[str, object] = {}

    def _key(self, name: str) -> tuple:
        return name, repr(getattr(self.cfg, name)), self.cfg.device

    def get(self, name: str):
        if name in self._live:
            return self._live[name]
        key = self._key(name)
        stage = _RESIDENT.get(key) if self.cfg.resident else None
        if stage is None:
            module, cls = STAGE_CLASSES[name]
            stage = getattr(importlib.import_module(module), cls)(getattr(self.cfg, name),
                                                                   device=self.cfg.device)
            stage.load()
            if self.cfg.resident:
                _RESIDENT[key] = stage
        self._live[name] = stage
        return stage

    def release(self, name: str) -> None:
        stage = self._live.pop(name, None)
        if stage is not None and not self.cfg.resident:
            stage.unload()

    def close(self) -> None:
        for name in list(self._live):
            self.release(name)
