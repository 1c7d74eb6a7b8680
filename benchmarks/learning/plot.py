"""The learning benchmark's picture: held-out figures per run (mean and seed spread), loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_results(results: dict, path: Path) -> Path:
    """One row per data set: zero-shot bars, mean-recall bars, loss curves of seed 0."""
    sets = [(n, d) for n, d in results["datasets"].items() if d and "runs" in d]
    fig, axes = plt.subplots(max(1, len(sets)), 3, figsize=(15, 4 * max(1, len(sets))), squeeze=False)
    for row, (name, d) in zip(axes, sets):
        arms = list(d["runs"])
        for ax, metric, label in ((row[0], "zeroshot", "zero-shot accuracy (%)"),
                                  (row[1], "mean_recall", "retrieval mean recall")):
            means = [d["base"][metric]] + [d["runs"][a]["figures"][metric]["mean"] for a in arms]
            stds = [0] + [d["runs"][a]["figures"][metric]["std"] for a in arms]
            colors = ["grey"] + ["tab:orange" if a.startswith("full_ft") else "tab:blue" for a in arms]
            ax.bar(range(len(means)), means, yerr=stds, color=colors, capsize=3)
            ax.axhline(d["base"][metric], color="grey", lw=0.8, ls="--")
            ax.set_xticks(range(len(means)), ["base"] + arms, rotation=35, ha="right", fontsize=8)
            ax.set_title(f"{name}: held-out {label}", fontsize=10)
        for arm in arms:
            curve = d["runs"][arm]["seeds"][0]["loss_curve"]
            if curve:
                ax = row[2]
                ax.plot([c[0] for c in curve], [c[1] for c in curve], label=arm, lw=1)
        row[2].set_title(f"{name}: training loss (first seed; full_ft: contrastive only)", fontsize=10)
        row[2].set_xlabel("step")
        row[2].legend(fontsize=7)
    fig.suptitle(f"bench_learning {results['date']} ({results['machine']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
