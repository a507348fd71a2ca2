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
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # (not np.diff: -inf - -inf is nan, and the un-judged rows one tie)
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
            "false_alerts": int((a & ~y).sum()), "alert_delays": delays,
            "median_alert_delay": float(np.median(delays)) if delays else None}


def longest_run(flags: np.ndarray) -> int:
    """The most consecutive flagged events."""
    best = run = 0
    for flag in flags.tolist():
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """F1 of the best single threshold on the scores: what a decision layer could reach at most."""
    y = np.asarray(labels) > 0.5
    if not y.any():
        return 0.0
    order = np.argsort(-np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf), kind="stable")
    tp = np.cumsum(y[order])
    return float(np.max(2 * tp / (np.arange(1, len(y) + 1) + max(1, int(y.sum())))))


def tail_rows(labels: np.ndarray, flags: np.ndarray, quiet: int = 20) -> int:
    """Flagged rows of the flag runs that carry on after a labelled anomaly ends: from each end to
    the first ``quiet`` unflagged rows in a row (an episode closing) or the next anomaly."""
    y, f = np.asarray(labels) > 0.5, np.asarray(flags, dtype=bool)
    count = 0
    for end in (np.flatnonzero(y[:-1] & ~y[1:]) + 1).tolist():
        gap = 0
        for i in range(end, len(y)):
            if y[i] or gap >= quiet:
                break
            gap = 0 if f[i] else gap + 1
            count += int(f[i])
    return count


# "Just out of warm-up": the first this many judged events of a recording.
EARLY = 300


def alert_report(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Alert-level numbers over recordings judged apart, each ``(labels, flags, scores, alerts)``:
    false alerts per 10,000 judged events, and how many of them came in the first ``EARLY``
    judged events of their recording (a detector just out of its warm-up); labelled anomalies
    with an alert inside them, the median delay to that alert, the share of false flagged rows
    that are tails of a real anomaly (:func:`tail_rows`), and flag F1 as a share of the best
    single threshold's F1 on the same scores (what the decision layer loses)."""
    events = false_alerts = early = anomalies = alerted = tails = false_rows = 0
    delays: list[float] = []
    for labels, flags, _, alerts in parts:
        m = episode_metrics(labels, alerts)
        events += len(labels)
        false_alerts += m["false_alerts"]
        early += episode_metrics(labels[:EARLY], alerts[:EARLY])["false_alerts"]
        anomalies += m["labelled_anomalies"]
        alerted += m["anomalies_alerted"]
        delays += m["alert_delays"]
        tails += tail_rows(labels, flags)
        false_rows += int((np.asarray(flags, dtype=bool) & (np.asarray(labels) <= 0.5)).sum())
    y, f, s = (np.concatenate([p[i] for p in parts]) for i in range(3))
    best = best_f1(y, s)
    return {"false_alerts_per_10k": 1e4 * false_alerts / max(1, events), "false_alerts": false_alerts,
            "early_false_alerts": early, "anomalies_alerted": alerted,
            "labelled_anomalies": anomalies, "median_alert_delay": float(np.median(delays)) if delays else None,
            "tail_share": tails / false_rows if false_rows else 0.0, "best_f1": best,
            "f1_of_best": flag_metrics(y, f)["f1"] / best if best else 0.0}


def evaluate(labels: np.ndarray, flags: np.ndarray, scores: np.ndarray, alerts: np.ndarray) -> dict[str, Any]:
    """Flag metrics, AUC-PR and ROC-AUC of the raw scores, and episode metrics of the alerts."""
    out = flag_metrics(labels, flags)
    out["auc_pr"] = average_precision(labels, scores)
    out["roc_auc"] = roc_auc(labels, scores)
    out.update(episode_metrics(labels, alerts))
    del out["alert_delays"]
    out["best_f1"] = best_f1(labels, scores)
    out["tail_rows"] = tail_rows(labels, flags)
    return out
