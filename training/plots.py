"""Pictures of a training run: loss terms and retrieval accuracy per step (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wds_tools.atomic import atomic_open  # noqa: E402

LOSS_KEYS = ("total_loss", "clip_loss", "fine_grained_loss")
ACC_KEYS = ("acc_i2t", "acc_t2i", "synthetic_share")


def plot_training_log(log: dict, path: str | Path) -> Path:
    """Two panels (losses; in-batch accuracies and synthetic share) from training_log entries."""
    entries = log.get("training_log", [])
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [e["step"] for e in entries]
    for key in LOSS_KEYS:
        if any(key in e for e in entries):
            ax_loss.plot(steps, [e.get(key) for e in entries], marker=".", label=key)
    for key in ACC_KEYS:
        if any(key in e for e in entries):
            ax_acc.plot(steps, [e.get(key) for e in entries], marker=".", label=key)
    ax_loss.set(title="Stage 2 loss", xlabel="optimizer step", ylabel="loss")
    ax_acc.set(title="in-batch accuracy and synthetic share", xlabel="optimizer step", ylim=(0, 1.05))
    evaluation = log.get("evaluation", {})
    if evaluation:
        text = "\n".join(
            f"{when}: mean recall {r['retrieval']['mean_recall']:.1f}, zero-shot "
            f"{r['zeroshot']['accuracy'] if r['zeroshot']['accuracy'] is None else round(r['zeroshot']['accuracy'], 1)}"
            for when, r in evaluation.items())
        ax_acc.text(0.02, 0.97, text, transform=ax_acc.transAxes, fontsize=8, va="top")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG under its final name only once whole, and close it."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path
