"""A picture of a replay: score, threshold, labels, flags, alerts and accepted new normals over time."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np


def time_axis(times: np.ndarray | None, count: int) -> np.ndarray | None:
    """The time column as date-times for the x axis, or None when there is none or one fails to parse."""
    if times is None or len(times) != count or not count:
        return None
    try:
        return np.array([datetime.fromisoformat(str(t).strip().replace("Z", "+00:00")) for t in times])
    except ValueError:
        return None


def plot_replay(path: str | Path, index: np.ndarray, score: np.ndarray, threshold: np.ndarray,
                flags: np.ndarray, labels: np.ndarray | None, title: str, alerts: np.ndarray | None = None,
                regime_changes: np.ndarray | None = None, times: np.ndarray | None = None) -> None:
    """``score`` against ``threshold``; flagged events as dots, alerts (what pages someone) as
    triangles, accepted new normals as dashed lines; labelled anomalies shaded. The x axis is the
    recording's time column when every row has a parseable one, else the row number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = time_axis(times, len(index))
    x = index if x is None else x
    fig, ax = plt.subplots(figsize=(12, 4), constrained_layout=True)
    if labels is not None and len(labels):
        ax.fill_between(x, 0, 1, where=labels > 0.5, transform=ax.get_xaxis_transform(),
                        color="tab:red", alpha=0.15, step="mid", label="labelled anomaly")
    ax.plot(x, score, lw=0.8, color="tab:blue", label="score")
    ax.plot(x, threshold, lw=1.2, color="tab:orange", label="threshold")
    ax.scatter(x[flags], score[flags], s=6, color="tab:red", zorder=3, label="flagged")
    if alerts is not None and alerts.any():
        ax.scatter(x[alerts], score[alerts], s=60, marker="v", color="black", zorder=4, label="alert")
    if regime_changes is not None and regime_changes.any():
        for i, at in enumerate(x[regime_changes]):
            ax.axvline(at, color="tab:green", ls="--", lw=1.0, label="new normal accepted" if i == 0 else None)
    shown = score[np.isfinite(score)]
    if (shown > 0).any() and (shown > 0).all():  # a log scale needs positive values (none in warm-up)
        ax.set_yscale("log")
    ax.set_xlabel("time" if x is not index else "row")
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
