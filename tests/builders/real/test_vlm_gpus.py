"""Real-set VLM captions on CUDA: one worker per GPU, each pinned to its own, not one model copy
per CPU core on GPU 0. The GPUs are injected (a parameter, or CUDA_VISIBLE_DEVICES): this
machine has none."""
from __future__ import annotations

import logging
from dataclasses import replace

from builders.common import executors
from builders.real.build import build_real, place_vlm
from builders.real.config import RealBuildConfig
from wds_tools.config import load_config
from wds_tools.reader import decode_sample, iter_shard


def _cfg(*extra: str) -> RealBuildConfig:
    return load_config(RealBuildConfig, None, ["input=in", "output=out", *extra])


def test_vlm_on_cuda_gets_one_worker_per_gpu():
    run, place = place_vlm(_cfg("vlm.model=qwen", "workers=0"), gpus=["0", "1"])
    assert (place.gpus_per_task, place.gpus) == (1.0, ["0", "1"])
    assert run.vlm.device == "auto"  # in a pinned worker: its one GPU
    cfg = _cfg("vlm.model=qwen", "workers=0")  # cuda:1 set past validation: no GPU here
    run, place = place_vlm(replace(cfg, vlm=replace(cfg.vlm, device="cuda:1")), gpus=["0", "1"])
    assert (place.gpus, run.vlm.device) == (["1"], "cuda")


def test_vlm_without_a_gpu_runs_on_the_cpu_pool():
    run, place = place_vlm(_cfg("vlm.model=qwen", "workers=0"), gpus=[])
    assert (place.gpus_per_task, place.gpus, run.workers) == (0.0, None, 0)  # one per CPU
    assert run.vlm.device == "cpu"  # the workers must not find a GPU the builder did not see
    run, place = place_vlm(_cfg("vlm.model=qwen", "vlm.device=cpu"), gpus=["0", "1"])
    assert (place.gpus_per_task, run.vlm.device) == (0.0, "cpu")


def test_no_vlm_leaves_the_pool_alone():
    cfg = _cfg("workers=3")
    run, place = place_vlm(cfg, gpus=["0", "1"])
    assert run is cfg and (place.gpus_per_task, place.gpus, place.workers) == (0.0, None, 3)


def test_build_with_a_vlm_pins_one_worker_per_gpu(demo_tree, tiny_vlm, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # two "GPUs"; torch finds no CUDA in them
    pools = []
    real_run_local = executors.run_local

    def run_local(fn, units, args, **kw):
        pools.append((kw["workers"], list(kw["gpus"])))
        return real_run_local(fn, units, args, **kw)

    monkeypatch.setattr(executors, "run_local", run_local)
    out = tmp_path / "out"
    cfg = load_config(RealBuildConfig, None, [
        f"input={demo_tree}", f"output={out}", "size=32", "images_per_shard=5", "workers=0",
        "augment.per_image=0", "zoom.enabled=false", "m2b.enabled=false", f"vlm.model={tiny_vlm}",
        "vlm.max_new_tokens=4", "vlm.batch_size=5", f"vlm.max_pixels={56 * 56}",
        f"vlm.min_pixels={56 * 56}"])
    with caplog.at_level(logging.INFO):
        summary = build_real(cfg, progress=False)
    assert pools == [(2, ["3", "5"])]
    assert "one worker per GPU (2: CUDA_VISIBLE_DEVICES=3,5)" in caplog.text
    assert summary["splits"]["train"]["shards"] == 2
    samples = [decode_sample(s) for tar in sorted((out / "train").glob("*.tar"))
               for s in iter_shard(str(tar))]
    assert len(samples) == 10 and any("vlm" in s["json"]["caption_sources"] for s in samples)
