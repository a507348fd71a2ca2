"""Replay's output lines: each is exactly orjson's serialisation of the event's record."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from ae_core import AutoencoderDetector, BatchResult, DetectorConfig
from ae_core.episodes import ClosedEpisode
from worker.replay.sinks import JsonLinesSink, NullSink
from worker.results import result_lines, result_records

CHANNELS = ("a", 'quote"d, with a comma', "é \u2028")


def made_up_result(n: int, seed: int, latent: bool = False) -> BatchResult:
    """Every kind of value a record holds: warm-up NaNs, no episode (-1), closed episodes, a new
    normal accepted, shares that round to 0 and 1, and bottleneck codes."""
    rng = np.random.default_rng(seed)
    score = rng.normal(size=n) * 10.0 ** rng.integers(-8, 9, size=n)  # (exponents in JSON: 1e-08 -> 1e-8)
    score[: n // 4] = np.nan
    episode = np.where(rng.random(n) < 0.5, -1, rng.integers(0, 10_000, size=n))
    regime_change = rng.random(n) < 0.05
    closed = {int(i): ClosedEpisode(int(i), "pump,1", int(rng.integers(1, 500)), int(rng.integers(1, 100)),
                                    float(rng.random() * 50), bool(rng.random() < 0.5))
              for i in np.flatnonzero(rng.random(n) < 0.05)}
    shares = rng.random((n, 2))
    shares[0] = [1.0, 0.00001]
    return BatchResult(
        score=score, error=rng.random(n) * 1e3, threshold=np.where(np.isnan(score), np.nan, rng.random(n)),
        is_anomaly=rng.random(n) < 0.3, top_channels=rng.integers(0, len(CHANNELS), size=(n, 2)),
        top_shares=shares, episode=episode, alert=rng.random(n) < 0.1,
        closed_episode=np.full(n, -1), regime_change=regime_change,
        latent=rng.normal(size=(n, 3)) if latent else None, closed=closed)


@pytest.mark.parametrize("latent", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_line_is_the_records_own_serialisation(seed: int, latent: bool) -> None:
    res = made_up_result(300, seed, latent)
    assert res.closed and res.regime_change.any()
    leading = {
        "index": list(range(1000, 1300)),
        "time": [f"2026-01-01 00:00:{i % 60:02d}" if i % 7 else "t, with a comma" for i in range(300)],
        "key": [f'pump "{i % 3}"\n' for i in range(300)],
        "label": [float(i % 2) for i in range(300)],
    }
    lines = result_lines(res, CHANNELS, leading)
    records = result_records(res, CHANNELS, leading=leading)
    assert lines == [orjson.dumps(record) for record in records]
    assert sum(b"episode_closed" in line for line in lines) == len(res.closed)
    assert [orjson.loads(line)["score"] for line in lines[:75]] == [None] * 75  # warm-up


def test_the_lines_of_a_detectors_batches_and_of_nothing() -> None:
    X = np.random.default_rng(0).normal(size=(700, 3))
    det = AutoencoderDetector(DetectorConfig(n_channels=3, warmup=200))
    names = ("x", "y", "z")
    for res in (det.process_many(X[:500]), det.process_many(X[500:], np.array(["k1", "k,2"] * 100))):
        assert result_lines(res, names, {"index": list(range(len(res)))}) == [
            orjson.dumps(r) for r in result_records(res, names, leading={"index": list(range(len(res)))})]
    assert result_lines(det.process_many(X[:0]), names, {"index": []}) == []


def test_sinks_write_lines_and_rows(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "out.jsonl"
    with JsonLinesSink(path) as sink:
        sink.write_lines([b'{"index":0}', b'{"index":1}'])
        sink.write_lines([])
        sink.write_many([{"index": 2, "invalid": "x"}])
    assert path.read_bytes() == b'{"index":0}\n{"index":1}\n{"index":2,"invalid":"x"}\n'
    with NullSink() as nothing:
        assert not nothing.writes
        nothing.write_lines([b"{}"])
        nothing.write_many([{}])
