"""What the worker publishes always fits its topic, whatever the input record held."""

from __future__ import annotations

from types import SimpleNamespace

import orjson

from worker.kafka.events import EventError, ParsedEvent
from worker.kafka.outputs import (
    DLQ_MAX_HEADER_BYTES,
    MIN_TOPIC_BYTES,
    RECORD_MAX_BYTES,
    RecordLimits,
    anomaly_record,
    dead_letter,
)

KAFKA_LIMIT = 1_048_588  # the broker's default max.message.bytes


def size(out: object) -> int:
    return (len(out.key or b"") + len(out.value or b"")
            + sum(len(name.encode()) + len(value or b"") for name, value in out.headers))


def message(**fields: object) -> SimpleNamespace:
    base = {"topic": "in", "partition": 2, "offset": 41, "key": b"d", "value": b"x", "headers": []}
    return SimpleNamespace(**{**base, **fields})


def test_a_dead_letter_keeps_what_fits_of_any_record() -> None:
    headers = [("a", b"1"), ("huge", b"h" * 700_000), ("b", b"2"), ("big", b"g" * 200_000), ("c", b"3"),
               ("also-big", b"q" * 100_000)]
    msg = message(key=b"k" * 900_000, value=b"v" * 3_000_000, headers=headers)
    out = dead_letter("dlq", msg, EventError("oversize", "too large"))
    kept = dict(out.headers)
    assert [name for name, _ in out.headers][:4] == ["a", "b", "big", "c"]  # in order, while they fit
    assert "huge" not in kept and "also-big" not in kept
    assert kept["ae-headers-cut"] == b"2 of 6 original headers left out (800012 bytes): huge, also-big"
    assert sum(len(n) + len(v) for n, v in headers if n in ("a", "b", "big", "c")) <= DLQ_MAX_HEADER_BYTES
    assert size(out) < KAFKA_LIMIT - 10_000
    assert kept["ae-original-size"] == b"3000000" and kept["ae-original-key-size"] == b"900000"


def test_a_dead_letter_that_fits_is_the_original_record() -> None:
    msg = message(value=b"not json", headers=[("trace", b"abc")])
    out = dead_letter("dlq", msg, EventError("not_json", "event: Invalid JSON"))
    assert out.value == b"not json" and out.key == b"d" and out.headers[0] == ("trace", b"abc")
    assert not any(name.startswith("ae-headers-cut") or name.startswith("ae-original") for name, _ in out.headers)


def test_an_anomaly_record_of_a_very_wide_event_leaves_its_readings_out() -> None:
    channels = tuple(f"channel-{i:06d}" for i in range(60_000))
    event = ParsedEvent("pump-1", [0.123456789012345] * len(channels), None, 253_402_300_800_000)
    record = {"score": 9.5, "threshold": 3.0, "is_anomaly": True, "alert": True, "episode": 0,
              "contributions": [{"channel": channels[0], "share": 0.5}]}
    out = anomaly_record("anomalies", message(), event, record, channels)
    payload = orjson.loads(out.value)
    assert payload["readings"] is None and "readings left out" in payload["cut"] and size(out) < RECORD_MAX_BYTES
    assert ("ae-cut", b"readings") in out.headers
    assert payload["timestamp"] is None and payload["record_timestamp_ms"] == 253_402_300_800_000
    narrow = anomaly_record("anomalies", message(), ParsedEvent("p", [1.0], None, 0), record, ("a",))
    assert orjson.loads(narrow.value)["readings"] == {"a": 1.0} and "cut" not in orjson.loads(narrow.value)


def test_records_fit_a_topic_that_takes_less_than_kafkas_default() -> None:
    """A topic of MIN_TOPIC_BYTES (the least the worker starts with): the worst dead letter and the
    widest anomaly record still fit it; at Kafka's default the limits are the constants."""
    assert RecordLimits.for_topic(KAFKA_LIMIT) == RecordLimits() and RecordLimits.for_topic(8 << 20) == RecordLimits()
    limits = RecordLimits.for_topic(MIN_TOPIC_BYTES)
    headers = [("a", b"1"), ("big", b"g" * 20_000), ("huge", b"h" * 60_000)]
    msg = message(key=b"k" * 900_000, value=b"v" * 3_000_000, headers=headers)
    out = dead_letter("dlq", msg, EventError("oversize", "too large " * 200), limits)
    assert [name for name, _ in out.headers][:1] == ["a"] and ("big", b"g" * 20_000) not in out.headers
    assert len(out.key) == limits.dlq_key and size(out) < MIN_TOPIC_BYTES - 1_000
    channels = tuple(f"channel-{i:06d}" for i in range(5_000))
    record = {"score": 9.5, "threshold": 3.0, "is_anomaly": True, "alert": True, "episode": 0,
              "contributions": [{"channel": channels[0], "share": 0.5}]}
    wide = anomaly_record("anomalies", message(), ParsedEvent("p", [0.5] * len(channels), None, 0), record, channels,
                          limits)
    assert orjson.loads(wide.value)["readings"] is None and size(wide) < MIN_TOPIC_BYTES - 1_000
    assert orjson.loads(anomaly_record("anomalies", message(), ParsedEvent("p", [0.5] * len(channels), None, 0),
                                       record, channels).value)["readings"] is not None  # (fits the default)
