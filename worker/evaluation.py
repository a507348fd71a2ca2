"""Detection quality of flags and scores against labels."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (ties share one step)."""
    y = np.asarray(labels) > 0.5
    if not y.any():
        return float("nan")
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)  # warm-up: not judged
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], y[order]
    last_of_tie = np.r_[np.diff(s) != 0, True]
    tp = np.cumsum(y)[last_of_tie]
    seen = np.arange(1, len(y) + 1)[last_of_tie]
    precision, recall = tp / seen, tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random anomaly outscores a random normal event (Mann-Whitney)."""
    y = np.asarray(labels) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def flag_metrics(labels: np.ndarray, flags: np.ndarray) -> dict[str, Any]:
    """Precision, recall, F1 = TP/(TP+(FP+FN)/2), FAR = FP/(FP+TN), MAR = FN/(FN+TP)."""
    y, f = np.asarray(labels) > 0.5, np.asarray(flags, dtype=bool)
    tp, fp = int((y & f).sum()), int((~y & f).sum())
    fn, tn = int((y & ~f).sum()), int((~y & ~f).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else 0.0

    return {
        "events": len(y), "positives": int(y.sum()), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
        "f1": ratio(tp, tp + (fp + fn) / 2), "far": ratio(fp, fp + tn), "mar": ratio(fn, fn + tp),
    }


def evaluate(labels: np.ndarray, flags: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """Flag metrics plus AUC-PR and ROC-AUC of the raw scores."""
    out = flag_metrics(labels, flags)
    out["auc_pr"] = average_precision(labels, scores)
    out["roc_auc"] = roc_auc(labels, scores)
    return out
