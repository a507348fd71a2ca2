"""Per-key state is bounded by the keys in use: idle keys and keys beyond max_keys are forgotten."""

from __future__ import annotations

import numpy as np
import pytest

from ae_core import AutoencoderDetector, DetectorConfig
from ae_core.checkpoint import dumps, loads
from ae_core.keys import KeyTracker
from tests.helpers import correlated
from worker.errors import SettingsError
from worker.settings import load_settings


def keyed_stream(n: int, n_keys: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return correlated(n, 3, seed=seed), np.array([f"dev-{k}" for k in rng.integers(0, n_keys, size=n)])


def config(**overrides: object) -> DetectorConfig:
    values = {"n_channels": 3, "window": 3, "warmup": 64, "fit_steps": 8, "batch_size": 32, "seed": 1, **overrides}
    return DetectorConfig(**values)  # type: ignore[arg-type]


def per_key_state(det: AutoencoderDetector) -> set[str]:
    return {*det.windows.history, *det.scorer.state, *det.episodes.open}


def test_a_key_idle_for_key_ttl_events_is_forgotten_and_starts_afresh() -> None:
    X, _ = keyed_stream(600, 1)
    keys = np.array(["a", "b"] * 100 + ["a"] * 400)
    det = AutoencoderDetector(config(key_ttl=100))
    det.process_many(X[:200], keys[:200])
    assert {"a", "b"} <= per_key_state(det)
    det.process_many(X[200:], keys[200:])
    assert "b" not in per_key_state(det) and "a" in det.windows.history
    assert det.keys.evicted == 1 and list(det.keys.last_seen) == ["a"]
    # b's next event is a new key's first: its window is its own reading repeated
    fresh = det.windows.transform(X[:1], np.array(["b"]))
    np.testing.assert_array_equal(fresh, np.tile(X[:1], (1, 3)))


def test_state_never_holds_more_than_max_keys_after_a_batch() -> None:
    X, keys = keyed_stream(960, 200)
    det = AutoencoderDetector(config(max_keys=20))
    for start in range(0, len(X), 32):  # batch ends: 32, 64, ...
        det.process_many(X[start:start + 32], keys[start:start + 32])
        assert len(det.keys) <= 20 and len(per_key_state(det)) <= 20
    assert det.keys.evicted >= 180
    # the keys kept are the 20 most recently seen
    last = {k: i for i, k in enumerate(keys.tolist())}
    assert set(det.keys.last_seen) == set(sorted(last, key=last.__getitem__)[-20:])


def test_eviction_gives_the_same_output_whatever_the_cuts_and_across_a_checkpoint() -> None:
    X, keys = keyed_stream(1500, 60, seed=3)
    cfg = config(key_ttl=40, max_keys=25, threshold_k=1.0)  # a low bar: episodes open and get evicted
    whole = AutoencoderDetector(cfg).process_many(X, keys)
    det = AutoencoderDetector(cfg)
    parts = []
    for start, stop in ((0, 7), (7, 300), (300, 811)):
        parts.append(det.process_many(X[start:stop], keys[start:stop]))
    restored = loads(dumps(det))
    assert restored.keys.last_seen == det.keys.last_seen and restored.keys.evicted == det.keys.evicted
    parts.append(restored.process_many(X[811:], keys[811:]))
    for name in ("score", "is_anomaly", "episode", "alert", "closed_episode"):
        np.testing.assert_array_equal(getattr(whole, name), np.concatenate([getattr(p, name) for p in parts]))
    assert restored.keys.evicted > 0 and whole.alert.any()


def test_without_keys_nothing_is_tracked_or_forgotten() -> None:
    det = AutoencoderDetector(config(key_ttl=1, max_keys=1))
    det.process_many(correlated(300, 3))
    assert len(det.keys) == 0 and det.keys.evicted == 0 and "" in det.scorer.state


def test_tracker_orders_by_last_event_and_counts_in_events() -> None:
    t = KeyTracker(ttl=5, max_keys=None)
    t.seen(["a", "b", "a"], first=0)  # a at 2, b at 1
    assert list(t.last_seen.items()) == [("b", 1), ("a", 2)]
    assert t.expired(6) == [] and t.expired(7) == ["b"] and t.expired(8) == ["a"]
    assert t.evicted == 2


@pytest.mark.parametrize(("name", "value"), [("key_ttl", "0"), ("max_keys", "-3")])
def test_bad_eviction_settings_fail_naming_the_setting(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"AE_DETECTOR__{name.upper()}", value)
    with pytest.raises(SettingsError, match=f"AE_DETECTOR__{name.upper()}"):
        load_settings()


def test_fleet_smoothing_equals_the_per_key_filter_to_the_bit() -> None:
    """Many keys run one vectorised step per occurrence, few keys a filter per key: the choice
    depends on how a batch is cut, so both must give the same bits."""
    from ae_core.keys import by_occurrence, per_key
    from ae_core.scoring import ResidualScorer

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, n_keys = int(rng.integers(1, 300)), int(rng.integers(1, 400))
        keys = np.array([f"k{i}" for i in rng.integers(0, n_keys, size=n)])
        z = rng.normal(size=(n, 4)) * rng.uniform(0.1, 50)
        fleet, one_by_one = ResidualScorer(4, 0.3, 20.0), ResidualScorer(4, 0.3, 20.0)
        fleet.normal.mean = one_by_one.normal.mean = rng.normal(size=4)  # where a new key's averages start
        for key in set(keys[: n // 2].tolist()):  # some keys continue from an earlier state
            fleet.state[key] = rng.normal(size=4)
            one_by_one.state[key] = fleet.state[key].copy()
        distinct, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        a = fleet._smooth_fleet(z, distinct, inverse, by_occurrence(inverse, counts))
        b = per_key(z, keys, one_by_one._smooth_key, 4)
        np.testing.assert_array_equal(a, b)
        assert fleet.state.keys() == one_by_one.state.keys()
        for key, value in fleet.state.items():
            np.testing.assert_array_equal(value, one_by_one.state[key])
