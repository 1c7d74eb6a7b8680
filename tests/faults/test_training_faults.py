"""Stage 2 under faults: kill -9 between and during checkpoints then resume, hostile checkpoint
files, decompression bombs in training and evaluation shards, and user errors that must fail
before any work with a clear message."""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.common.images import png_bomb
from tests.common.loader import TOKENIZER
from tests.training.conftest import REPO, TINY_CONFIG, shard_dirs  # noqa: F401 - the shared shard fixture
from training.config import Stage2Config
from training.data import LoaderSpec, build_sources, iter_batches
from training.evaluate import load_eval_set
from training.trainer import plan_steps, train
from wds_tools.config import ConfigError, load_config
from wds_tools.manifest import write_index
from wds_tools.sample import make_sample
from wds_tools.writer import shard_name, write_shard

STEPS = 7  # checkpoints at 3 and 6, and at 7 (the last step)


def _overrides(shard_dirs, out: Path, *extra: str) -> list[str]:
    return [f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
            f"train.output={out}", f"train.max_steps={STEPS}", "train.checkpoint_every=3",
            "train.log_sample_keys=true", "eval.before=false", "eval.after=false", *extra]


def _key_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "sample_keys.rank0.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(shard_dirs, tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny config."""
    out = tmp_path_factory.mktemp("reference")
    train(load_config(Stage2Config, TINY_CONFIG, _overrides(shard_dirs, out)))
    return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_no_survivors(pids: list[int], timeout: float = 30.0) -> float:
    """Seconds until every pid is gone; fails if one outlives ``timeout``."""
    t0 = time.time()
    while any(_alive(p) for p in pids):
        assert time.time() - t0 < timeout, f"processes outlived the killed trainer: {[p for p in pids if _alive(p)]}"
        time.sleep(0.1)
    return time.time() - t0


def _assert_nothing_partial_under_a_final_name(out: Path) -> None:
    for ckpt in (out / "checkpoints").glob("step_???????"):
        for name in ("trainer_state.json", "data_state.rank0.json", "model.safetensors", "optimizer.bin"):
            assert (ckpt / name).is_file(), f"{ckpt.name} is published without {name}"
    if (out / "lora_final.pt").exists():
        assert torch.load(out / "lora_final.pt", weights_only=True)
    if (out / "peft_adapter").exists():
        found = {p.name for p in (out / "peft_adapter").iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= found
    if (out / "training_log.json").exists():
        assert json.loads((out / "training_log.json").read_text())["summary"]["outputs"]


def _run_until_killed(point: str, args: list[str], report: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.faults.kill_point", point, str(report), *args],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]
    return json.loads(report.read_text())


def test_kill9_between_and_during_checkpoints_then_resume(reference, shard_dirs, tmp_path, caplog):
    out = tmp_path / "run"
    args = ["--config", str(TINY_CONFIG), *_overrides(shard_dirs, out)]
    ckpts = out / "checkpoints"

    # 1. mid-run, between checkpoints 3 and 6 (batch 5 loaded, its keys not yet logged)
    killed = _run_until_killed("step:5", args, tmp_path / "kill1.json")
    assert len(killed["children"]) >= 2  # the two loader workers were alive at the kill
    _wait_for_no_survivors(killed["children"])
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003"]
    assert [r["step"] for r in _key_records(out)] == [0, 1, 2, 3]
    _assert_nothing_partial_under_a_final_name(out)

    # 2. resumed from 3, killed while publishing checkpoint 6: it stays under its temporary name
    killed = _run_until_killed("commit:step_0000006", args, tmp_path / "kill2.json")
    _wait_for_no_survivors(killed["children"])
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000003", "step_0000006.tmp-partial"]
    assert [r["step"] for r in _key_records(out)] == [0, 1, 2, 3, 4, 5]  # no step twice
    _assert_nothing_partial_under_a_final_name(out)

    # 3. resumed from 3 again, killed while publishing the final adapter
    killed = _run_until_killed("commit:peft_adapter", args, tmp_path / "kill3.json")
    _wait_for_no_survivors(killed["children"])
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000006", "step_0000007"]
    assert (out / "peft_adapter.tmp-partial").is_dir() and not (out / "peft_adapter").exists()
    assert not (out / "training_log.json").exists()
    _assert_nothing_partial_under_a_final_name(out)

    # 4. the last resume starts at the final checkpoint and only writes the outputs
    with caplog.at_level(logging.WARNING):
        train(load_config(Stage2Config, TINY_CONFIG, _overrides(shard_dirs, out)))
    assert not [r for r in caplog.records if "random_states" in r.getMessage()]  # honest states load
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "temporary files left behind"
    _assert_nothing_partial_under_a_final_name(out)

    # Same samples, each step logged once, same weights as the uninterrupted run.
    ours, ref = _key_records(out), _key_records(reference)
    assert [r["step"] for r in ours] == list(range(STEPS))
    assert ours == ref
    log, ref_log = (json.loads((d / "training_log.json").read_text()) for d in (out, reference))
    assert [e["step"] for e in log["training_log"]] == list(range(1, STEPS + 1))
    for a, b in zip(log["training_log"], ref_log["training_log"]):
        assert a["total_loss"] == pytest.approx(b["total_loss"], rel=1e-4)
    assert log["summary"]["counters"] == ref_log["summary"]["counters"]
    got, want = (torch.load(d / "lora_final.pt", weights_only=True) for d in (out, reference))
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


def test_sigterm_to_the_process_group_checkpoints_the_step_then_resume_is_exact(reference, shard_dirs, tmp_path):
    """Preemption as SLURM does it: SIGTERM to every process of the job (trainer and loader workers)."""
    from training.preempt import PREEMPTED_EXIT_CODE

    out = tmp_path / "run"
    args = ["--config", str(TINY_CONFIG), *_overrides(shard_dirs, out, "train.checkpoint_every=0")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    report = tmp_path / "sig.json"
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults.kill_point", "signal:5", str(report), *args],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not report.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # from outside, to the trainer and its loader workers
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert "Traceback" not in stderr and "DataLoader worker" not in stderr, stderr[-3000:]
    assert "stopped on SIGTERM after step 5" in stderr
    signalled = json.loads(report.read_text())
    assert len(signalled["children"]) >= 2  # the loader workers got the signal too
    _wait_for_no_survivors(signalled["children"])
    # The step in flight (batch 5) was finished and checkpointed, though checkpoint_every=0.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000005"]
    assert [r["step"] for r in _key_records(out)] == [0, 1, 2, 3, 4]
    assert not (out / "training_log.json").exists() and not (out / "lora_final.pt").exists()
    _assert_nothing_partial_under_a_final_name(out)

    train(load_config(Stage2Config, TINY_CONFIG, _overrides(shard_dirs, out, "train.checkpoint_every=0")))
    assert _key_records(out) == _key_records(reference)
    got, want = (torch.load(d / "lora_final.pt", weights_only=True) for d in (out, reference))
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)  # bit for bit
    log, ref_log = (json.loads((d / "training_log.json").read_text()) for d in (out, reference))
    assert log["summary"]["counters"] == ref_log["summary"]["counters"]


# --- an output folder that cannot be written ------------------------------------------------------

def _train_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """``training.train`` with RLIMIT_FSIZE set: a write past ``limit`` bytes fails as on a full disk
    (EFBIG where a full disk gives ENOSPC; both reach the writer the same way)."""
    import resource

    def limit_writes() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "training.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_writes)


@pytest.mark.parametrize("limit, failing", [
    (0, ".write-check.rank0"),  # before any work
    (64 * 1024, "checkpoints/step_0000003.tmp-partial"),  # the first checkpoint (the weights are larger)
])
def test_a_full_disk_under_train_output_is_one_line_naming_the_path(shard_dirs, tmp_path, limit, failing):
    out = tmp_path / "run"
    proc = _train_with_file_size_limit(["--config", str(TINY_CONFIG), *_overrides(shard_dirs, out)], limit)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m training.train: error: cannot write ") and f"{out}/{failing}" in last, last
    assert "File too large" in last and f"train.output='{out}'" in last
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("step_???????"))


@pytest.mark.parametrize("where", ["read-only folder", "sysfs"])
def test_an_unwritable_train_output_is_one_line_naming_it(where, shard_dirs, tmp_path, capsys):
    from training.train import main

    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes through permission bits")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "run"
    else:
        if not os.path.isdir("/sys"):
            pytest.skip("no sysfs")
        out = Path("/sys") / "remoteclip-stage2-output"  # the kernel refuses a folder here, even to root
    assert main(["--config", str(TINY_CONFIG), *_overrides(shard_dirs, out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m training.train: error: cannot write {out}: "), err
    assert f"train.output='{out}'" in err[0]


class _Planted:
    """Unpickling this runs ``open(path, "w")``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_planted_random_states_pickle_is_refused_with_a_warning(reference, shard_dirs, tmp_path, caplog):
    out = tmp_path / "planted"
    final = sorted((reference / "checkpoints").iterdir())[-1]
    shutil.copytree(final, out / "checkpoints" / final.name)
    marker = tmp_path / "code_ran"
    (out / "checkpoints" / final.name / "random_states_0.pkl").write_bytes(pickle.dumps(_Planted(marker)))
    with caplog.at_level(logging.INFO):
        train(load_config(Stage2Config, TINY_CONFIG, _overrides(shard_dirs, out)))
    assert not marker.exists()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "random_states_0.pkl" in r.getMessage()]
    assert warned and final.name in warned[0].getMessage()
    assert (out / "lora_final.pt").is_file()  # the run still resumes: weights and data position are safe


def test_logit_scale_is_clamped_after_each_step(shard_dirs, tmp_path):
    # Adam's first step moves every parameter by about the learning rate: 10 takes the scale
    # (ln(1/0.07) = 2.66 at init) far outside [0, ln 100] in one direction or the other.
    cfg = load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, tmp_path, "train.max_steps=1", "train.learning_rate=10.0", "train.warmup_steps=0",
        "train.checkpoint_every=0", "train.log_sample_keys=false", "loss.use_fine_grained=false",
        "data.num_workers=0"))
    train(cfg)
    scale = torch.load(tmp_path / "projection_heads_final.pt", weights_only=True)["logit_scale"].item()
    assert scale == pytest.approx(0.0, abs=1e-6) or scale == pytest.approx(math.log(100), abs=1e-6)


# --- decompression bombs in Stage 2 ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bomb_source(tmp_path_factory) -> Path:
    """One shard: three ordinary 48 px samples and a 12000x12000 PNG bomb (key ``real_bomb``)."""
    from tests.training.conftest import tile
    from wds_tools.sample import encode_image

    out = tmp_path_factory.mktemp("bomb_source")
    samples = []
    for key, image in (("real_a", None), ("real_bomb", png_bomb()), ("real_b", None), ("real_c", None)):
        meta = {"source": "real", "class": "forest", "split": "train", "kind": "original"}
        data = image if image is not None else encode_image(tile("forest", len(samples)), ext="png")
        samples.append(make_sample(key=key, image=data, caption="a forest from above", meta=meta, image_ext="png"))
    write_shard(out / shard_name("real", 0), samples)
    write_index(out, name="bombs")
    return out


def test_training_loader_counts_a_bomb_and_never_decodes_it(bomb_source, caplog):
    spec = LoaderSpec(sources=build_sources([str(bomb_source)], [], 0.0), batch_size=3, image_size=32,
                      tokenizer=TOKENIZER, shards_per_chunk=1, quality_sidecar=None,
                      shuffle_buffer=1)  # shard order, so 9 good samples are exactly 3 passes
    with caplog.at_level(logging.WARNING, logger="wds_tools"):
        batches = [b for _, b in zip(range(3), iter_batches(spec, 0))]
    keys = [k for b in batches for k in b["keys"]]
    assert "real_bomb" not in keys and set(keys) == {"real_a", "real_b", "real_c"}
    assert sum(b["counts"].get("skip_decompression_bomb", 0) for b in batches) == 3  # once per pass
    assert any("decompression_bomb" in r.getMessage() and "real_bomb" in r.getMessage()
               and str(bomb_source) in r.getMessage() for r in caplog.records)


def test_evaluation_counts_a_bomb(bomb_source):
    data = load_eval_set([str(bomb_source)], size=32)
    assert data.images.shape == (3, 3, 32, 32)
    assert data.skipped == {"decompression_bomb": 1}
    with pytest.raises(ValueError, match="no evaluable samples"):
        load_eval_set([str(bomb_source)], size=32, max_pixels=47 * 48)  # the 48x48 tiles too


# --- user errors fail before any work --------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train.batch_size=0"], "batch_size must be >= 1, got 0"),
    (["data.num_workers=-1"], "num_workers must be >= 0, got -1"),
    (["--max-steps", "-1"], "max_steps must be >= 0 (0 = unset"),
    (["train.grad_accum=0"], "grad_accum must be >= 1, got 0"),
    (["train.mixed_precision=bf17"], "mixed_precision must be one of"),
    (["data.max_image_pixels=-5"], "max_image_pixels must be >= 0, got -5"),
    (["eval.batch_size=0"], "batch_size must be >= 1, got 0"),
    (["train.learning_rate=0"], "learning_rate must be > 0, got 0"),  # trained nothing, silently
    (["train.learning_rate=-1e-4"], "learning_rate must be > 0, got -0.0001"),
])
def test_bad_training_values_exit_2_naming_the_value(argv, message, capsys, tmp_path):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(["--config", str(TINY_CONFIG), f"train.output={tmp_path / 'out'}", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_ratio_that_leaves_the_only_source_unused_says_so():
    with pytest.raises(ValueError, match=r"synthetic_ratio=1 gives data\.real weight 0, so it is unused, and "
                                         r"data\.synthetic is empty"):
        build_sources(["real-shards"], [], 1.0)
    with pytest.raises(ValueError, match=r"synthetic_ratio=0 gives data\.synthetic weight 0, so it is unused, "
                                         r"and data\.real is empty: give data\.real shards \(--real\)"):
        build_sources([], ["synthetic-shards"], 0.0)


def test_a_shard_listed_twice_is_read_once_with_a_counted_warning(shard_dirs, caplog):
    real = shard_dirs["real"]
    first = sorted(real.glob("real-??????.tar"))[0]
    spelled_again = f"{real}/./{first.name}"
    with caplog.at_level(logging.WARNING, logger="training.mix"):
        sources = build_sources([str(real), str(first), spelled_again], [], 0.0)
    assert sources[0].urls == sorted(str(p) for p in real.glob("real-??????.tar"))  # 4 shards, not 6
    warned = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert warned == [f"data.real lists 1 shard(s) more than once; each is read once ({first} x3)"]
    assert len(load_eval_set([str(shard_dirs["val"])] * 2, size=32).images) == 8  # each held-out image once


def test_help_says_what_max_steps_0_means(capsys):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "0 (the default) means unset" in " ".join(capsys.readouterr().out.split())


def test_unsized_run_names_the_real_cause(tmp_path):
    cfg = load_config(Stage2Config, TINY_CONFIG, ["train.max_steps=0"])
    with pytest.raises(ValueError, match=r"train\.max_steps is 0 \(unset\).*counts 0 samples"):
        plan_steps(cfg, 0, 1)
    assert plan_steps(cfg, 40, 1) == (10, 10)  # 40 samples / batch 4, one epoch


@pytest.mark.parametrize("device, message", [
    ("cuda9", "model.device 'cuda9' is not a device"),
    ("cuda:9", "model.device 'cuda:9' does not exist"),
    ("tpu", "model.device 'tpu' is not a device"),
])
def test_bad_device_strings_are_config_errors(device, message):
    from builders.common.vlm_captions import VLMConfig
    from builders.quality.config import QualityConfig

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda:9" and n > 9:
        pytest.skip("this machine has a cuda:9")
    with pytest.raises(ConfigError) as e:
        load_config(QualityConfig, None, [f"model.device={device}"])
    assert message in str(e.value) and ("no CUDA device" in str(e.value) or f"{n} CUDA device" in str(e.value))
    with pytest.raises(ConfigError, match=f"device '{device}'"):
        load_config(VLMConfig, None, [f"device={device}"])
    assert load_config(QualityConfig, None, ["model.device=cpu"]).model.device == "cpu"


def test_filter_prefetch_factor_0_is_a_config_error():
    from builders.quality.config import QualityConfig

    with pytest.raises(ConfigError, match="loader.prefetch_factor must be >= 1, got 0"):
        load_config(QualityConfig, None, ["loader.prefetch_factor=0"])
