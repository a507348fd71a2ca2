"""What the worker publishes: anomaly records for the output topic, dead letters for the DLQ.

Each builder returns an :class:`Outgoing` (topic, key, value, headers) and sends nothing, so the
delivery mode (:mod:`worker.delivery`) decides how a batch's records reach the broker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from worker.events import EventError, ParsedEvent

# Dead letters must fit the dead-letter topic (1 MB by default, headers included).
DLQ_MAX_VALUE_BYTES = 512 * 1024
DLQ_HEAD_BYTES = 1024
DLQ_MAX_KEY_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def output_kind(record: dict[str, Any]) -> str:
    """``anomaly`` (a flagged event; ``alert`` true on the first of its episode), ``episode_closed``
    (the event that completed the quiet period) or ``regime_change`` (an unflagged event at which
    an episode was accepted as normal)."""
    if record["is_anomaly"]:
        return "anomaly"
    return "episode_closed" if "episode_closed" in record else "regime_change"


def anomaly_record(topic: str, msg: Any, event: ParsedEvent, record: dict[str, Any],
                   channels: tuple[str, ...]) -> Outgoing:
    """One record on the output topic for the decision ``record`` about input record ``msg``."""
    kind = output_kind(record)
    payload = {
        "type": kind,
        "key": event.key,
        "timestamp": event.timestamp,
        **record,
        "readings": dict(zip(channels, event.values)),
        "source": {"topic": msg.topic, "partition": msg.partition, "offset": msg.offset},
    }
    del payload["is_anomaly"]
    headers = [("content-type", b"application/json"), ("ae-type", kind.encode()),
               ("ae-source", f"{msg.topic}/{msg.partition}/{msg.offset}".encode()),
               ("ae-score", repr(record["score"]).encode()),
               ("ae-top-channel", record["contributions"][0]["channel"].encode())]
    return Outgoing(topic, event.key.encode(), orjson.dumps(payload), headers)


def dead_letter(topic: str, msg: Any, exc: EventError) -> Outgoing:
    """The original record with the reason in headers. A record the dead-letter topic cannot take
    would jam the partition (the send fails, the batch replays, fails again): an oversized key or
    value keeps its head, with its size and SHA-256, so it can still be matched with the source."""
    headers = list(msg.headers or []) + [
        ("ae-error", exc.reason.encode()), ("ae-error-kind", exc.kind.encode()),
        ("ae-source-topic", msg.topic.encode()), ("ae-source-partition", str(msg.partition).encode()),
        ("ae-source-offset", str(msg.offset).encode()),
    ]
    key, value = msg.key, msg.value
    if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
        headers += [("ae-original-key-size", str(len(key)).encode()),
                    ("ae-original-key-sha256", hashlib.sha256(key).hexdigest().encode())]
        key = key[:DLQ_MAX_KEY_BYTES]
    if value is not None and len(value) > DLQ_MAX_VALUE_BYTES:
        headers += [("ae-original-size", str(len(value)).encode()),
                    ("ae-original-sha256", hashlib.sha256(value).hexdigest().encode())]
        value = value[:DLQ_HEAD_BYTES]
    return Outgoing(topic, key, value, headers)
