"""run_batched: out-of-memory halving, one failing item isolated, non-finite results; device/dtype."""
import weakref
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from builders.synthetic.stages.base import (
    NON_FINITE,
    OUT_OF_MEMORY,
    Skip,
    Stage,
    autocast,
    has_non_finite,
    is_out_of_memory,
    pick_dtype,
    run_batched,
)
from tests.common.oom import FakeOOM


def double(batch):
    return [2 * x for x in batch]


def test_results_keep_order_across_batches():
    assert run_batched(double, list(range(7)), 3) == [0, 2, 4, 6, 8, 10, 12]


def test_out_of_memory_halves_the_batch_and_retries():
    fn = FakeOOM(double, limit=2)
    assert run_batched(fn, list(range(12)), 8) == [2 * x for x in range(12)]
    assert fn.sizes[:3] == [8, 4, 2]  # halved until it fits
    assert fn.sizes[3:] == [2, 2, 2, 2, 2]  # the rest, and the next batch, at the size that fit


def test_out_of_memory_retry_starts_after_the_failed_batch_is_freed():
    """The failed forward's tensors (locals of the frame that raised) are gone before the retry:
    a kept exception would hold them through its traceback and the retry would run out too."""
    refs: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    def fn(batch):
        if refs:
            alive_at_retry.append(refs[-1]() is not None)
        if len(batch) > 1:
            activations = torch.zeros(256, 256)  # what the forward had allocated when it ran out
            refs.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return double(batch)

    assert run_batched(fn, [1, 2, 3, 4], 4) == [2, 4, 6, 8]
    assert len(refs) == 2 and alive_at_retry == [False] * 5  # 4 -> 2 -> 1, 1, 1, 1


def test_item_out_of_memory_alone_is_skipped_others_kept():
    fn = FakeOOM(double, limit=4, hog=5)
    out = run_batched(fn, list(range(8)), 8)
    assert out[5] == Skip(OUT_OF_MEMORY)
    assert [o for i, o in enumerate(out) if i != 5] == [2 * x for x in range(8) if x != 5]


def test_one_failing_item_skips_that_item_only():
    calls = []

    def fn(batch):
        calls.append(list(batch))
        if 3 in batch:
            raise ValueError("bad image 3")
        return double(batch)

    out = run_batched(fn, list(range(6)), 6)
    assert out[3].reason == "error: ValueError" and "bad image 3" in out[3].detail
    assert [o for i, o in enumerate(out) if i != 3] == [0, 2, 4, 8, 10]


def test_non_finite_results_become_skips_and_stage_skips_pass_through():
    def fn(batch):
        return [Skip("no boxes") if x == 0 else torch.tensor([1.0, float("nan")]) if x == 1
                else {"score": float("inf")} if x == 2 else torch.ones(2) for x in batch]

    out = run_batched(fn, [0, 1, 2, 3], 4)
    assert out[:3] == [Skip("no boxes"), Skip(NON_FINITE), Skip(NON_FINITE)]
    assert torch.equal(out[3], torch.ones(2))


def test_wrong_result_count_is_a_bug_not_a_skip():
    with pytest.raises(ValueError, match="2 results for a batch of 3"):
        run_batched(lambda b: b[:2], [1, 2, 3], 3)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        run_batched(double, [1], 0)


@dataclass
class Holder:
    x: object


def test_has_non_finite_looks_inside_containers():
    assert has_non_finite(np.array([0.0, np.inf]))
    assert not has_non_finite(np.array([1, 2], dtype=np.uint8))
    assert has_non_finite(Holder([{"a": float("nan")}]))
    assert not has_non_finite(Holder(["text", 3, torch.zeros(3, dtype=torch.bool)]))


def test_out_of_memory_recognised_on_cuda_and_cpu_messages():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_dtype_bf16_on_cuda_fp32_on_cpu():
    assert pick_dtype("cuda:0") == torch.bfloat16
    assert pick_dtype("cpu") == torch.float32
    assert pick_dtype("cuda", "float16") == torch.float16
    with pytest.raises(ValueError, match="'int8'"):
        pick_dtype("cpu", "int8")
    with autocast("cpu", torch.bfloat16):  # CPU runs fp32 models in fp32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


class Counting(Stage):
    loads = 0

    def _load(self):
        Counting.loads += 1
        self.model = object()

    def _batch(self, batch):
        assert self.model is not None
        return batch


@dataclass
class CountingConfig:
    batch_size: int = 2


def test_stage_loads_once_and_unload_drops_models():
    stage = Counting(CountingConfig(), device="cpu")
    assert stage([1, 2, 3]) == [1, 2, 3] and stage([4]) == [4]
    assert Counting.loads == 1
    stage.unload()
    assert stage.model is None and not stage.loaded
