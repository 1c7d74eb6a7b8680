"""bench_train's CPU smoke mode runs (it pointed at a missing config) and compares like with like."""

from __future__ import annotations

import json

from benchmarks import bench_train


def test_tiny_mode_runs_and_compares_eager_with_eager(tmp_path, capsys):
    assert bench_train.main(["--tiny", "--steps", "2", "--warmup", "1", "--batch", "4", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results) == {"full_ft", "lora_eager"}
    assert results["lora_eager"]["trainable"] < results["full_ft"]["trainable"]
    assert set(results["lora_eager"]["ratio_to"]) == {"full_ft"}
    assert "x full_ft" in capsys.readouterr().out


def test_compiled_variants_are_compared_with_the_compiled_full_fine_tune():
    assert bench_train.baseline_of("lora_compiled") == "full_ft_compiled"
    assert bench_train.baseline_of("lora_eager") == "full_ft"
