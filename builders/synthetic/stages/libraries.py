"""Import the libraries behind the five stages, and nothing else.

A local worker pool's fork server imports this module once, before it forks the workers
(:func:`builders.common.executors.run_local`'s ``preload``), so each worker starts with torch,
diffusers' SD3 pipelines, the transformers models, spandrel and segment_anything already loaded:
about 3 s of imports on a 2-core machine (file cache warm) that every worker would otherwise
repeat. The stage modules still import what they use lazily, so importing the builder stays cheap.
"""
from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

MODULES = ("torch", "torchvision.ops", "spandrel", "segment_anything",
           "transformers.models.qwen2_vl.modeling_qwen2_vl",
           "transformers.models.grounding_dino.modeling_grounding_dino",
           "diffusers.pipelines.stable_diffusion_3")


def _import_all() -> None:
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:  # the stage that needs it reports the missing package when it loads
            log.debug("preload of %s failed: %s", name, e)


_import_all()
