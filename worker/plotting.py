"""A picture of a replay: score, threshold, labels and flags over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_replay(path: str | Path, index: np.ndarray, score: np.ndarray, threshold: np.ndarray,
                flags: np.ndarray, labels: np.ndarray | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4), constrained_layout=True)
    if labels is not None and len(labels):
        ax.fill_between(index, 0, 1, where=labels > 0.5, transform=ax.get_xaxis_transform(),
                        color="tab:red", alpha=0.15, step="mid", label="labelled anomaly")
    ax.plot(index, score, lw=0.8, color="tab:blue", label="score")
    ax.plot(index, threshold, lw=1.2, color="tab:orange", label="threshold")
    ax.scatter(index[flags], score[flags], s=6, color="tab:red", zorder=3, label="flagged")
    shown = score[np.isfinite(score)]
    if (shown > 0).any() and (shown > 0).all():  # a log scale needs positive values (none in warm-up)
        ax.set_yscale("log")
    ax.set_xlabel("row")
    ax.set_ylabel("reconstruction error (smoothed)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
