"""JSON lines output: one orjson call for a batch of rows, cut into lines, equals a call per row."""

from __future__ import annotations

import types

import numpy as np
import orjson
import pytest

from worker.replay.sinks import json_lines


def one_call_per_row(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows)


ROWS = [
    {"index": 0, "time": "2026-01-01 00:00:00", "score": 0.25, "contributions": [{"channel": "a", "share": 0.5}]},
    {"index": 1, "time": '},{"index":2', "score": None, "episode_closed": {"episode": 0, "events": 3}},
    {"index": 2, "key": "pump\n7", "label": 1.0, "latent": [0.1, -0.2], "note": "é \u2028 \x00"},
    {"index": 3, "invalid": "readings.a: not a number"},
    {"index": np.int64(4), "score": np.float64(1.5)},
]


@pytest.mark.parametrize("rows", [
    ROWS,
    ROWS[:1],
    [{"index": 0, "x": [{"a": 1}, {"index": 9}]}, {"index": 1}],  # a nested object that begins with index
    [{"index": 0}, {"time": "t", "index": 1}],  # rows that begin with different keys
    [{}, {"index": 1}],
])
def test_json_lines_match_one_call_per_row(rows: list[dict]) -> None:
    assert json_lines(rows) == one_call_per_row(rows)
    assert [orjson.loads(line) for line in json_lines(rows).splitlines()] == orjson.loads(
        orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY))


def test_rows_of_one_leading_key_take_one_orjson_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def dumps(obj: object, option: int = 0) -> bytes:
        calls.append(obj)
        return orjson.dumps(obj, option=option)

    monkeypatch.setattr("worker.replay.sinks.orjson", types.SimpleNamespace(
        dumps=dumps, OPT_SERIALIZE_NUMPY=orjson.OPT_SERIALIZE_NUMPY))
    assert json_lines(ROWS) == one_call_per_row(ROWS)
    assert [c for c in calls if c is ROWS] == [ROWS] and len(calls) == 2  # the rows, and the key
