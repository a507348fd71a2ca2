"""Contract every detector configuration must keep (river's check_estimator idea)."""

from __future__ import annotations

import copy
import gc
import tracemalloc

import numpy as np
import pytest

from ae_core import AutoencoderDetector
from ae_core.checkpoint import dumps, loads
from tests.helpers import CONFIGS, config, correlated

pytestmark = pytest.mark.parametrize("name", sorted(CONFIGS))


def trained(name: str, n: int = 300) -> tuple[AutoencoderDetector, np.ndarray]:
    det = AutoencoderDetector(config(name))
    data = correlated(n + 100, det.config.n_channels)
    det.process_many(data[:n])
    return det, data[n:]


def test_scoring_is_pure(name: str) -> None:
    det, rest = trained(name)
    X = det.windows.transform(rest[:20], None)
    before = dumps(det)
    first = det.score_many(X)
    second = det.score_many(X)
    np.testing.assert_array_equal(first, second)
    assert dumps(det) == before


def test_scoring_before_any_learning(name: str) -> None:
    det = AutoencoderDetector(config(name))
    X = correlated(10, det.config.n_features)
    scores = det.score_many(X)
    assert scores.shape == (10,) and np.isfinite(scores).all() and (scores >= 0).all()
    res = det.process_many(correlated(10, det.config.n_channels))
    assert np.isfinite(res.error).all() and not res.is_anomaly.any()
    assert np.isnan(res.score).all() and np.isnan(res.threshold).all()  # warm-up: not judged yet


def test_one_and_many_agree(name: str) -> None:
    det, rest = trained(name)
    X = det.windows.transform(rest[:5], None)
    many = det.score_many(X)
    ones = [det.score_one(dict(zip(det.feature_names, row))) for row in X]
    np.testing.assert_allclose(many, ones, rtol=1e-5)  # float32 network: batched vs single matmul
    learner = copy.deepcopy(det)
    for i in range(det.config.batch_size - 1):  # learn_one buffers: one step per batch_size events
        learner.learn_one(dict(zip(det.feature_names, X[i % len(X)])))
    assert learner.batches_learned == det.batches_learned
    np.testing.assert_array_equal(learner.score_many(X), many)
    learner.learn_one(dict(zip(det.feature_names, X[0])))
    assert learner.batches_learned == det.batches_learned + 1
    assert not np.array_equal(learner.score_many(X), many)


def test_result_shapes(name: str) -> None:
    det, rest = trained(name)
    res = det.process_many(rest[:37], latent=True)
    k = min(det.config.top_k, det.config.n_channels)
    assert len(res) == 37
    assert res.top_channels.shape == (37, k) and res.top_shares.shape == (37, k)
    assert res.latent is not None and res.latent.shape == (37, det.config.resolved_bottleneck)
    assert ((res.top_shares >= 0) & (res.top_shares <= 1)).all()
    assert (np.diff(res.top_shares, axis=1) <= 1e-12).all()


def test_checkpoint_round_trip_scores_identically(name: str) -> None:
    det, rest = trained(name, n=250)  # mid-batch: pending events must survive the round trip
    twin = loads(dumps(det))
    a, b = det.process_many(rest), twin.process_many(rest)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.is_anomaly, b.is_anomaly)
    np.testing.assert_array_equal(a.threshold, b.threshold)
    np.testing.assert_array_equal(a.episode, b.episode)
    np.testing.assert_array_equal(a.regime_change, b.regime_change)


def test_same_seed_same_output(name: str) -> None:
    data = correlated(400, config(name).n_channels, seed=3)
    a = AutoencoderDetector(config(name)).process_many(data)
    b = AutoencoderDetector(config(name)).process_many(data)
    np.testing.assert_array_equal(a.score, b.score)
    c = AutoencoderDetector(config(name, seed=8)).process_many(data)
    assert not np.array_equal(a.score, c.score)


def test_result_does_not_depend_on_how_the_stream_is_cut(name: str) -> None:
    data = correlated(500, config(name).n_channels, seed=5)
    whole = AutoencoderDetector(config(name)).process_many(data)
    det = AutoencoderDetector(config(name))
    cuts = np.cumsum(np.random.default_rng(1).integers(1, 40, size=60))
    pieces = [det.process_many(part) for part in np.split(data, cuts[cuts < len(data)]) if len(part)]
    np.testing.assert_array_equal(whole.score, np.concatenate([p.score for p in pieces]))
    for field in ("is_anomaly", "alert", "episode", "closed_episode", "regime_change"):
        np.testing.assert_array_equal(getattr(whole, field), np.concatenate([getattr(p, field) for p in pieces]))


def test_memory_stays_bounded(name: str) -> None:
    det = AutoencoderDetector(config(name))
    chunk = correlated(512, det.config.n_channels)
    keys = np.array([f"dev{i % 4}" for i in range(512)])
    for _ in range(5):
        det.process_many(chunk, keys)
    gc.collect()  # what is held, not what the collector has not reached yet (river's stats make cycles)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(20):
        det.process_many(chunk, keys)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 200_000, f"memory grew by {grown} bytes over 10k events"
    assert len(det.pending_score) < det.config.batch_size
    assert len(det.scorer.state) <= 4 and len(det.windows.history) <= 4


def test_bad_readings_are_refused(name: str) -> None:
    det = AutoencoderDetector(config(name))
    bad = correlated(3, det.config.n_channels)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        det.process_many(bad)
    with pytest.raises(ValueError, match="shape"):
        det.process_many(np.zeros((3, det.config.n_channels + 1)))
    assert det.events_seen == 0


def test_works_as_a_river_anomaly_detector_in_a_pipeline(name: str) -> None:
    from river import compose, preprocessing
    from river.base import AnomalyDetector

    det = AutoencoderDetector(config(name))
    assert isinstance(det, AnomalyDetector)
    model = compose.Pipeline(preprocessing.StandardScaler(), det)
    rows = det.windows.transform(correlated(150, det.config.n_channels), None)
    scores = []
    for row in rows:
        x = dict(zip(det.feature_names, row))
        scores.append(model.score_one(x))
        model.learn_one(x)
    assert det.batches_learned == 150 // det.config.batch_size and all(np.isfinite(scores))  # learn_one buffers
    odd = dict(zip(det.feature_names, rows[-1] + 50.0))
    assert model.score_one(odd) > np.median(scores[-50:])
    assert det.clone().config == det.config and det.clone().batches_learned == 0


def test_an_empty_batch_changes_nothing(name: str) -> None:
    det, _ = trained(name)
    before = dumps(det)
    res = det.process_many(np.zeros((0, det.config.n_channels)), latent=True)
    assert len(res) == 0 and res.top_channels.shape[0] == 0 and res.latent is not None
    assert dumps(det) == before
