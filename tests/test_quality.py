"""A quality floor on a seeded simulated stream: runs in seconds, fails if detection regresses."""

from __future__ import annotations

import numpy as np

from ae_core import AutoencoderDetector, DetectorConfig
from worker.replay.evaluation import flag_metrics, roc_auc
from worker.replay.simulate import simulate


def test_default_detector_separates_injected_anomalies() -> None:
    X, labels, injected = simulate(20_000, 8, seed=0)
    det = AutoencoderDetector(DetectorConfig(n_channels=8))
    res = det.process_many(X)
    judged = slice(det.config.warmup, None)
    assert roc_auc(labels[judged], res.score[judged]) >= 0.9
    metrics = flag_metrics(labels[judged], res.is_anomaly[judged])
    assert metrics["far"] <= 0.05, metrics
    assert metrics["recall"] >= 0.5, metrics
    caught = [i for i in injected if res.is_anomaly[i.start:i.stop + 20].any()]
    assert len(caught) >= 0.6 * len(injected)


def test_nothing_is_flagged_during_warmup() -> None:
    X, _, _ = simulate(3000, 8, seed=2)
    X[100:140, 3] += 1e3  # blatant, but inside the warm-up
    det = AutoencoderDetector(DetectorConfig(n_channels=8, warmup=500))
    res = det.process_many(X)
    assert not res.is_anomaly[:500].any()
    assert np.isnan(res.threshold[:500]).all() and np.isfinite(res.threshold[500:]).all()


def test_flagged_events_do_not_teach_the_model() -> None:
    X, _, _ = simulate(4000, 8, seed=4)
    attack = X[2000:2300].copy()
    attack[:, 0] += 50 * X[:2000, 0].std()
    X[2000:2300] = attack
    # no new normal accepted (by default a level held for accept_plateau events is one, and is learned)
    det = AutoencoderDetector(DetectorConfig(n_channels=8, adapt_after=None))
    res = det.process_many(X)
    assert res.is_anomaly[2000:2300].mean() > 0.9  # the whole attack stays flagged: never learned
