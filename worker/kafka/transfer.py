"""Recordings into and out of Kafka: ``ae-worker produce`` and ``ae-worker record``."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from worker.errors import WorkerError
from worker.kafka.delivery import wait_until
from worker.kafka.kafka_io import TopicMissingError, ensure_topics, make_consumer, make_producer, wait_for_broker
from worker.replay.sources import Recording, parse_reading
from worker.settings import KafkaSettings

logger = logging.getLogger(__name__)


class RecordingIncompleteError(WorkerError):
    """``record`` got no event for its idle timeout before reaching the topic's end."""


PRODUCE_SETTLE_S = 30.0  # at most this long for sends to resolve after the flush, and for the close


class DeliveryError(WorkerError):
    """``produce``: the broker did not take some of the events sent (the others are on the topic)."""


class _Deliveries:
    """What became of the sends handed to the producer: counts and the first failure (not a
    future per row: a recording may have millions of rows)."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.first: tuple[int, BaseException] | None = None

    def watch(self, future: Any, row: int) -> None:
        future.add_callback(self._delivered)
        future.add_errback(self._failed, row)

    def settled(self, sent: int) -> bool:
        """Every one of ``sent`` sends has succeeded or failed."""
        return self.delivered + self.failed >= sent

    def _delivered(self, _metadata: Any) -> None:
        self.delivered += 1

    def _failed(self, row: int, exc: BaseException) -> None:
        self.failed += 1
        if self.first is None:
            self.first = (row, exc)


def event_payload(fields: dict[str, Any], recording: Recording, key: str) -> dict[str, Any]:
    """A recording row as the input topic's event schema; bad values are kept so they dead-letter."""
    o = recording.options
    readings: dict[str, Any] = {}
    for name in recording.channels:
        raw = fields.get(name)
        try:
            readings[name] = parse_reading(raw)
        except ValueError:
            readings[name] = raw if raw not in ("",) else None
    event: dict[str, Any] = {"key": str(fields[o.key_column]) if o.key_column else key, "readings": readings}
    if o.time_column and fields.get(o.time_column) not in (None, ""):
        event["timestamp"] = fields[o.time_column]
    if o.label_column:
        event["label"] = fields.get(o.label_column)
    return event


def produce(recording: Recording, kafka: KafkaSettings, topic: str, key: str, speed: float,
            create: bool, start_timeout: float | None = None) -> int:
    """Send every row of ``recording`` to ``topic`` in order, keyed; returns the number sent.

    ``speed`` 0 sends as fast as possible; otherwise the gaps of the time column, divided by
    ``speed``, are kept between sends. Waits up to ``start_timeout`` for the broker first. Rows
    the broker did not take (refused, or not delivered within the producer's delivery timeout)
    raise :class:`DeliveryError` once the others are flushed: a short topic never passes for the
    whole recording.
    """
    if not wait_for_broker(kafka, threading.Event(), start_timeout):
        return 0
    ensure_topics(kafka, [topic], create)
    producer = make_producer(kafka)
    first_time: float | None = None
    started = time.monotonic()
    sent = 0
    deliveries = _Deliveries()
    try:
        for row in recording.records():
            fields = row.fields
            if fields is None:  # unparseable: sent as it is, to be dead-lettered
                deliveries.watch(producer.send(topic, key=key.encode(), value=row.raw.encode()), row.index)
                sent += 1
                continue
            event = event_payload(fields, recording, key)
            if speed > 0 and "timestamp" in event:
                at = _seconds(event["timestamp"])
                if at is not None:
                    first_time = at if first_time is None else first_time
                    delay = (at - first_time) / speed - (time.monotonic() - started)
                    if delay > 0:
                        time.sleep(delay)
            deliveries.watch(producer.send(topic, key=event["key"].encode(), value=orjson.dumps(event)), row.index)
            sent += 1
        try:
            producer.flush()
        except KafkaError as exc:
            # kafka-python 3.0: after a fatal error (a record the topic refuses as too large) the
            # idempotent producer aborts every batch left, and flush may raise before their futures
            # resolve; what became of each send is counted below instead
            logger.debug("flush: %r", exc)
        # (a batch's futures resolve in callbacks that may run just after flush returns)
        wait_until(lambda: deliveries.settled(sent), PRODUCE_SETTLE_S)
    finally:
        producer.close(timeout=PRODUCE_SETTLE_S)
    if deliveries.delivered < sent:
        row, exc = deliveries.first if deliveries.first else (None, None)
        first = f"the first: row {row} of {recording.name}, {exc!r}" if exc else "no answer from the broker"
        raise DeliveryError(f"{sent - deliveries.delivered} of the {sent} events sent to {topic} were not delivered "
                            f"({first}); the other {deliveries.delivered} are on the topic")
    return sent


def record(kafka: KafkaSettings, topic: str, output: Path, max_events: int | None, idle_timeout: float,
           start_timeout: float | None = None) -> int:
    """Write a topic's events, from the beginning to the current end, as a replayable JSONL file.
    ``idle_timeout`` seconds without an event before that end raise :class:`RecordingIncompleteError`
    (the file keeps what was read): an incomplete recording never passes for the whole topic."""
    if not wait_for_broker(kafka, threading.Event(), start_timeout):
        return 0
    consumer = make_consumer(kafka, group_id=None)
    written = 0
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise TopicMissingError(f"topic {topic!r} does not exist on {kafka.bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        output.parent.mkdir(parents=True, exist_ok=True)
        last_event = time.monotonic()
        with output.open("wb") as fh:
            while any(consumer.position(tp) < end[tp] for tp in tps):
                if max_events is not None and written >= max_events:
                    break
                batch = consumer.poll(timeout_ms=200)
                if not batch:
                    if time.monotonic() - last_event > idle_timeout:
                        # short of the end that was asked for: the file is not the whole topic
                        short = ", ".join(f"partition {tp.partition} at offset {consumer.position(tp)} of {end[tp]}"
                                          for tp in tps if consumer.position(tp) < end[tp])
                        raise RecordingIncompleteError(
                            f"no event from {topic} for {idle_timeout:g} s before its end ({short}): {output} "
                            f"holds only the {written} events read so far; is the broker reachable? "
                            "(--idle-timeout waits longer)")
                    continue
                last_event = time.monotonic()
                for tp in tps:
                    for msg in batch.get(tp, []):
                        fh.write(_flatten(msg.value, msg.key) + b"\n")
                        written += 1
    finally:
        consumer.close(autocommit=False)
    return written


def _flatten(value: bytes | None, key: bytes | None) -> bytes:
    try:
        event = orjson.loads(value or b"")
        readings = event.pop("readings")
        if isinstance(readings, dict):
            return orjson.dumps({"key": event.pop("key", None) or (key or b"").decode(),
                                 "timestamp": event.pop("timestamp", None), **readings, **event})
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
        pass
    return orjson.dumps({"raw": (value or b"").decode("utf-8", "replace")})


def _seconds(stamp: Any) -> float | None:
    if isinstance(stamp, (int, float)):
        return float(stamp)
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return None
