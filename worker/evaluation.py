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
    ranks = rankdata(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf))
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


def episode_metrics(labels: np.ndarray, alerts: np.ndarray) -> dict[str, Any]:
    """What paging on alerts would have done: labelled anomalies (runs of label 1) with an alert
    inside them, alerts outside every labelled anomaly (false pages), and the events from each
    detected anomaly's start to its first alert (delay)."""
    y, a = np.asarray(labels) > 0.5, np.asarray(alerts, dtype=bool)
    starts = np.flatnonzero(y & ~np.r_[False, y[:-1]])
    ends = np.flatnonzero(y & ~np.r_[y[1:], False])
    delays = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        inside = np.flatnonzero(a[start:end + 1])
        if len(inside):
            delays.append(int(inside[0]))
    return {"alerts": int(a.sum()), "labelled_anomalies": len(starts), "anomalies_alerted": len(delays),
            "false_alerts": int((a & ~y).sum()),
            "median_alert_delay": float(np.median(delays)) if delays else None}


def evaluate(labels: np.ndarray, flags: np.ndarray, scores: np.ndarray, alerts: np.ndarray) -> dict[str, Any]:
    """Flag metrics, AUC-PR and ROC-AUC of the raw scores, and episode metrics of the alerts."""
    out = flag_metrics(labels, flags)
    out["auc_pr"] = average_precision(labels, scores)
    out["roc_auc"] = roc_auc(labels, scores)
    out.update(episode_metrics(labels, alerts))
    return out
