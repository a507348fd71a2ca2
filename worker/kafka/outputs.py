"""What the worker publishes: anomaly records for the output topic, dead letters for the DLQ.

Each builder returns an :class:`Outgoing` (topic, key, value, headers) and sends nothing, so the
delivery mode (:mod:`worker.kafka.delivery`) decides how a batch's records reach the broker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from worker.kafka.events import EventError, ParsedEvent

# Every record must fit its topic (Kafka's max.message.bytes: 1 MB by default, key and headers
# included), whatever the input record held: a record the broker refuses would stop the worker
# on every restart. Into a topic that takes the default, dead letters keep at most 512 KiB of
# value, 1 KiB of key and 256 KiB of the original headers, and anomaly records leave their
# readings out past RECORD_MAX_BYTES; a topic that takes less gets all of these in proportion
# (:meth:`RecordLimits.for_topic`), down to MIN_TOPIC_BYTES, below which the worker does not start.
DLQ_MAX_VALUE_BYTES = 512 * 1024
DLQ_HEAD_BYTES = 1024
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_HEADER_BYTES = 256 * 1024
RECORD_MAX_BYTES = 900 * 1024
KAFKA_DEFAULT_MESSAGE_BYTES = 1_048_588  # the broker's message.max.bytes unless configured
MIN_TOPIC_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class RecordLimits:
    """The most bytes the worker puts in one record of a topic (see the constants above)."""

    record: int = RECORD_MAX_BYTES
    dlq_value: int = DLQ_MAX_VALUE_BYTES
    dlq_key: int = DLQ_MAX_KEY_BYTES
    dlq_headers: int = DLQ_MAX_HEADER_BYTES

    @classmethod
    def for_topic(cls, max_message_bytes: int) -> RecordLimits:
        """Limits for a topic that takes records of ``max_message_bytes`` (at least MIN_TOPIC_BYTES)."""
        share = min(1.0, max_message_bytes / KAFKA_DEFAULT_MESSAGE_BYTES)
        return cls(*(int(share * v) for v in (RECORD_MAX_BYTES, DLQ_MAX_VALUE_BYTES, DLQ_MAX_KEY_BYTES,
                                              DLQ_MAX_HEADER_BYTES)))


DEFAULT_LIMITS = RecordLimits()


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def output_kind(record: dict[str, Any]) -> str:
    """``anomaly`` (a flagged event; ``alert`` true on the first of its episode), ``episode_closed``
    (the event that completed the quiet period) or ``regime_change`` (an unflagged event at which
    an episode was accepted as normal)."""
    if record["is_anomaly"]:
        return "anomaly"
    return "episode_closed" if "episode_closed" in record else "regime_change"


def anomaly_record(topic: str, msg: Any, event: ParsedEvent, record: dict[str, Any],
                   channels: tuple[str, ...], limits: RecordLimits = DEFAULT_LIMITS) -> Outgoing:
    """One record on the output topic for the decision ``record`` about input record ``msg``."""
    kind = output_kind(record)
    timestamp = event.timestamp
    payload = {
        "type": kind,
        "key": event.key,
        "timestamp": timestamp,
        **record,
        "readings": dict(zip(channels, event.values)),
        "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
    }
    del payload["is_anomaly"]
    unreadable = event.unreadable_record_time if timestamp is None else None  # (formats once, not twice)
    if unreadable is not None:  # a record time no date-time can show: kept as it came
        payload["record_timestamp_ms"] = unreadable
    headers = [("content-type", b"application/json"), ("ae-type", kind.encode()),
               ("ae-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
               ("ae-score", repr(record["score"]).encode()),
               ("ae-top-channel", record["contributions"][0]["channel"][:256].encode())]
    value = orjson.dumps(payload)
    if len(value) > limits.record:  # thousands of channels: the decision fits, the readings need not
        payload["readings"] = None
        payload["cut"] = f"readings left out: the record would be {len(value)} bytes (limit {limits.record})"
        headers.append(("ae-cut", b"readings"))
        value = orjson.dumps(payload)
    return Outgoing(topic, event.key.encode(), value, headers)


def dead_letter(topic: str, msg: Any, exc: EventError, limits: RecordLimits = DEFAULT_LIMITS) -> Outgoing:
    """The original record with the reason in headers. A record the dead-letter topic cannot take
    would jam the partition (the send fails, the batch replays, fails again): an oversized key or
    value keeps its head, with its size and SHA-256, so it can still be matched with the source;
    original headers are kept in order while they fit, and ``ae-headers-cut`` says what was not."""
    kept, cut = _headers_that_fit(msg.headers or [], limits.dlq_headers)
    headers = kept + [
        ("ae-error", exc.reason.encode()[:DLQ_HEAD_BYTES]), ("ae-error-kind", exc.kind.encode()),
        ("ae-source-topic", msg.topic.encode()), ("ae-source-partition", str(msg.partition).encode()),
        ("ae-source-offset", str(msg.offset).encode()),
    ]
    key, value = msg.key, msg.value
    if key is not None and len(key) > limits.dlq_key:
        headers += [("ae-original-key-size", str(len(key)).encode()),
                    ("ae-original-key-sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:limits.dlq_key]
    if value is not None and len(value) > limits.dlq_value:
        headers += [("ae-original-size", str(len(value)).encode()),
                    ("ae-original-sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:DLQ_HEAD_BYTES]
    if cut:
        headers.append(("ae-headers-cut", f"{len(cut)} of {len(msg.headers)} original headers left out "
                                          f"({sum(map(_header_bytes, cut))} bytes): "
                                          f"{', '.join(name[:64] for name, _ in cut[:16])}".encode()))
    return Outgoing(topic, key, value, headers)


def _header_bytes(header: tuple[str, bytes | None]) -> int:
    return len(header[0].encode()) + len(header[1] or b"")


def _headers_that_fit(headers: list[tuple[str, bytes | None]], room: int) -> tuple[list[tuple[str, bytes | None]],
                                                                                   list[tuple[str, bytes | None]]]:
    """(kept, left out): headers in their order, kept while their bytes add up to at most
    ``room``; a header that does not fit is left out and the next ones still tried."""
    kept, cut = [], []
    for header in headers:
        size = _header_bytes(header)
        if size <= room:
            kept.append(header)
            room -= size
        else:
            cut.append(header)
    return kept, cut
