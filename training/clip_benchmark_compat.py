"""LAION's ``clip_benchmark`` command with one compatibility fix, same arguments:
``python -m training.clip_benchmark_compat eval --dataset wds/NAME ...``.

clip-benchmark 1.6.2 (the newest release) computes top-k accuracy with ``float()`` of a
one-element array, which numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python
scalars"), so its zero-shot classification fails in this environment. The replacement below is
the same computation with ``.item()``; everything else is clip_benchmark's own code.
"""

from __future__ import annotations

import sys

import torch


def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Share of rows whose target is among the ``k`` highest logits, for each ``k`` in ``topk``."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]


def main() -> int:
    """Run clip_benchmark's CLI with :func:`accuracy` in place of its own."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    zeroshot_classification.accuracy = accuracy
    sys.argv[0] = "clip_benchmark"
    return int(cli.main() or 0)


if __name__ == "__main__":
    sys.exit(main())
