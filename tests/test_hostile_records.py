"""Records and snapshots a real producer (or an attacker with write access) can put on the
topics: none may crash the worker, jam a partition or skip events, against a real broker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from ae_core import AutoencoderDetector
from ae_core.checkpoint import dumps
from tests.test_kafka_worker import committed, read_topic, settings
from worker.kafka.partition_state import LogBounds, Snapshot, StateStore
from worker.kafka.service import Worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka
LONG_MAX = str(2**63 - 1)


def create_topic(bootstrap: str, name: str, **configs: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, 1, 1, topic_configs=configs)])
    finally:
        admin.close()


def events(n: int, seed: int, start: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        a = float(rng.normal())
        out.append(json.dumps({"key": "d", "readings": {"a": a, "b": 2 * a + 0.01 * float(rng.normal())},
                               "i": i}).encode())
    return out


def with_channels(s: Settings, **service: object) -> Settings:
    return s.model_copy(update={"events": s.events.model_copy(update={"channels": ("a", "b")}),
                                "service": s.service.model_copy(update=service)})


def scored(worker: Worker, topic: str) -> float:
    return worker.metrics.registry.get_sample_value("ae_events_total", {"topic": topic}) or 0.0


def refused(worker: Worker, topic: str, reason: str) -> float:
    value = worker.metrics.registry.get_sample_value("ae_snapshots_refused_total", {"topic": topic, "reason": reason})
    return value or 0.0


def test_events_compressed_with_every_kafka_codec_are_scored(kafka: str, topic_prefix: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="worker")
    s = with_channels(settings(kafka, topic_prefix, detector={"warmup": 64, "batch_size": 32}))
    create_topic(kafka, f"{topic_prefix}-in")
    codecs = ("gzip", "snappy", "lz4", "zstd")
    values = events(100 * len(codecs), seed=1)
    for i, codec in enumerate(codecs):
        producer = KafkaProducer(bootstrap_servers=kafka, compression_type=codec, linger_ms=500)  # one batch each
        for value in values[100 * i: 100 * (i + 1)]:
            producer.send(f"{topic_prefix}-in", key=b"d", value=value)
        producer.flush()
        producer.close()
    worker = Worker(s)
    stats = worker.run()
    assert stats.events == 400 and stats.dead_letters == 0
    assert scored(worker, f"{topic_prefix}-in") == 400
    assert committed(kafka, f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-in", 0)) == 400
    # at DEBUG: the restore plan and a summary of each batch
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(line.startswith(f"restoring {topic_prefix}-in-0: 0: log 0..400, committed None") for line in debug)
    assert any(line.startswith(f"batch 1: {topic_prefix}-in-0 offsets 0-") for line in debug)


def test_any_record_timestamp_is_published_without_crashing(kafka: str, topic_prefix: str) -> None:
    """Events without a timestamp field take the record's: past year 9999, before year 1, negative
    or zero, each flagged event gets an anomaly record (null time, the milliseconds kept)."""
    s = with_channels(settings(kafka, topic_prefix, detector={"warmup": 64, "batch_size": 32}))
    create_topic(kafka, f"{topic_prefix}-in", **{"message.timestamp.after.max.ms": LONG_MAX,
                                                   "message.timestamp.before.max.ms": LONG_MAX})
    odd = {300: 253_402_300_800_000 + 5, 301: 2**62, 302: -62_135_596_800_001, 303: -5, 304: 0}
    producer = KafkaProducer(bootstrap_servers=kafka)
    for i, value in enumerate(events(320, seed=2)):
        if i in odd:  # far off the normal line b = 2a: flagged
            value = json.dumps({"key": "d", "readings": {"a": 50.0, "b": -80.0}}).encode()
        producer.send(f"{topic_prefix}-in", key=b"d", value=value, timestamp_ms=odd.get(i, 1_700_000_000_000 + i))
    producer.flush()
    producer.close()
    stats = Worker(s).run()
    assert stats.events == 320
    published = [json.loads(m.value) for m in read_topic(kafka, f"{topic_prefix}-out")]
    records = {r["source"]["offset"]: r for r in published}
    assert set(odd) <= set(records)
    for offset in (300, 301, 302):
        assert records[offset]["timestamp"] is None and records[offset]["record_timestamp_ms"] == odd[offset]
    assert records[303]["timestamp"] == "1969-12-31T23:59:59.995000+00:00" and "record_timestamp_ms" not in records[303]
    assert records[304]["timestamp"] == "1970-01-01T00:00:00+00:00"


def test_a_dead_letter_with_huge_headers_fits_its_topic_and_the_partition_moves_on(kafka: str,
                                                                                    topic_prefix: str) -> None:
    s = with_channels(settings(kafka, topic_prefix))
    create_topic(kafka, f"{topic_prefix}-in", **{"max.message.bytes": str(4 << 20)})
    producer = KafkaProducer(bootstrap_servers=kafka, max_request_size=4 << 20)
    small = [("trace-id", b"abc"), ("tenant", b"t1")]
    big = b"\x00not json" * 50_000  # 500 KB: kept whole (under 512 KiB), with 600 KB of headers
    producer.send(f"{topic_prefix}-in", key=b"d", value=big,
                  headers=[small[0], ("blob", b"h" * 600_000), small[1]])
    for value in events(20, seed=3):
        producer.send(f"{topic_prefix}-in", key=b"d", value=value)
    producer.flush()
    producer.close()
    stats = Worker(s).run()
    assert stats.events == 21 and stats.dead_letters == 1
    assert committed(kafka, f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-in", 0)) == 21
    (dead,) = read_topic(kafka, f"{topic_prefix}-dlq")
    headers = dict(dead.headers)
    assert headers["trace-id"] == b"abc" and headers["tenant"] == b"t1" and "blob" not in headers  # kept in order
    assert headers["ae-headers-cut"].startswith(b"1 of 3 original headers left out (600004 bytes): blob")
    assert headers["ae-error-kind"] == b"oversize" and dead.value == big


def forged(s: Settings, topic: str, next_offset: int, key: bytes | None = None) -> bytes:
    """A snapshot with a valid digest (or signature) claiming ``next_offset``: what anyone who can
    write the changelog can make."""
    det = AutoencoderDetector(s.detector.to_config(2, ("a", "b")))
    return dumps(det, {"next_offset": next_offset, "topic": topic, "partition": 0}, key)


def put_snapshot(bootstrap: str, s: Settings, blob: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=64 << 20)
    producer.send(f"{s.kafka.group_id}-state", key=f"{s.kafka.input_topics[0]}/0".encode(), value=blob)
    producer.flush()
    producer.close()


def produce_events(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for value in values:
        producer.send(topic, key=b"d", value=value)
    producer.flush()
    producer.close()


@pytest.mark.parametrize("case", ["ahead", "negative", "unsigned", "wrong_key"])
def test_forged_snapshots_are_refused_and_every_event_scored(kafka: str, topic_prefix: str, case: str) -> None:
    signing = case in ("unsigned", "wrong_key")
    s = with_channels(settings(kafka, topic_prefix, detector={"warmup": 64, "batch_size": 32},
                               **({"snapshot_key": "the-group-secret-0123"} if signing else {})),
                      idle_timeout=3)
    topic = f"{topic_prefix}-in"
    create_topic(kafka, topic)
    produce_events(kafka, topic, events(300, seed=4))
    first = Worker(s)
    assert first.run().events == 300  # its last snapshot is in the changelog (signed when a key is set)
    blob = {"ahead": lambda: forged(s, topic, 10**12), "negative": lambda: forged(s, topic, -5),
            "unsigned": lambda: forged(s, topic, 300), "wrong_key": lambda: forged(s, topic, 300, b"x" * 32)}[case]()
    put_snapshot(kafka, s, blob)
    produce_events(kafka, topic, events(200, seed=5, start=300))
    second = Worker(s)
    stats = second.run()
    # refused, counted, and the partition rebuilt from its first offset: the 200 new events scored
    assert refused(second, topic, "signature" if signing else "offset") == 1
    assert stats.events == 200 and stats.rebuilt == 300 and scored(second, topic) == 200
    assert committed(kafka, s.kafka.group_id, TopicPartition(topic, 0)) == 500


def test_a_state_dir_kept_while_the_group_lost_its_offsets_is_refused(kafka: str, topic_prefix: str,
                                                                       tmp_path: Path) -> None:
    """The compose case: the worker's state volume survives, the broker's data does not. Here the
    group's offsets are gone (a new group, its own empty changelog) and the topic holds events the
    old snapshot claims to have seen: refused, every event scored."""
    state = tmp_path / "state"
    base = with_channels(settings(kafka, topic_prefix, detector={"warmup": 64, "batch_size": 32}),
                         idle_timeout=3, state_dir=str(state))
    topic = f"{topic_prefix}-in"
    create_topic(kafka, topic)
    produce_events(kafka, topic, events(400, seed=6))
    assert Worker(base).run().events == 400
    assert (state / f"{topic}-0.ckpt").exists()
    lost = base.model_copy(update={"kafka": base.kafka.model_copy(update={"group_id": f"{topic_prefix}-fresh"})})
    again = Worker(lost)
    stats = again.run()
    assert refused(again, topic, "offset") == 1
    assert stats.events == 400 and scored(again, topic) == 400


def test_refusal_reasons_cover_every_way_a_snapshot_can_lie() -> None:
    tp = TopicPartition("in", 3)
    det = AutoencoderDetector(settings("x:1", "p").detector.to_config(2, ("a", "b")))

    def why(offset: int, start: int = 100, end: int = 500, committed: int | None = 400, max_ahead: int = 60,
            **meta: object) -> str | None:
        snap = Snapshot(det, offset, "test", {"topic": "in", "partition": 3, **meta})
        refused = StateStore.refusal(tp, snap, LogBounds(start, end, committed, "id-1"), max_ahead)
        return None if refused is None else ": ".join(refused)

    assert why(400) is None and why(450) is None and why(100, committed=None) is None
    assert why(-5).startswith("offset: its offset -5 is negative")
    assert why(501).startswith("offset: its offset 501 is past the partition's end offset 500")
    assert why(99).startswith("offset: its offset 99 is before the partition's first offset 100")
    assert why(300, committed=None).startswith("offset: it claims events up to offset 300 but the group has "
                                               "committed nothing")
    assert why(450, max_ahead=0).startswith("offset: its offset 450 is ahead of the committed 400 (an aborted")
    assert why(400, max_ahead=0) is None
    assert why(460) is None  # at least once: a crash between publishing a batch and committing it
    assert why(461).startswith("offset: its offset 461 is ahead of the committed 400 (more than a batch, 60 "
                               "events: the group's offsets were moved back since)")
    assert why(400, partition=4) == "foreign: it was saved for in-4"
    assert why(400, topic_id="id-0").startswith("foreign: it was saved for topic id id-0, and in is now id-1")
    assert why(400, topic_id="id-1") is None


def test_a_batch_the_client_cannot_decode_stops_the_worker_with_one_clear_error(
        kafka: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Were a codec library missing, start-up says so; were a batch undecodable all the same, the
    worker stops naming the codec, before committing anything past it."""
    from kafka import codec

    from worker.errors import WorkerError
    from worker.kafka.kafka_io import check_codecs

    s = with_channels(settings(kafka, topic_prefix))
    create_topic(kafka, f"{topic_prefix}-in")
    producer = KafkaProducer(bootstrap_servers=kafka, compression_type="snappy", linger_ms=500)  # one batch:
    # (kafka-python leaves a batch uncompressed when compression would not make it smaller)
    for value in events(50, seed=7):
        producer.send(f"{topic_prefix}-in", key=b"d", value=value)
    producer.flush()
    producer.close()
    monkeypatch.setattr(codec, "has_snappy", lambda: False)
    with pytest.raises(WorkerError, match="cannot decode snappy compressed records"):
        check_codecs()
    monkeypatch.setattr("worker.kafka.service.check_codecs", lambda: None)
    with pytest.raises(WorkerError, match=r"cannot be decoded: .*snappy.*nothing past it was committed"):
        Worker(s).run()
    assert committed(kafka, f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-in", 0)) is None


def test_offsets_moved_back_to_process_again_are_not_skipped_by_a_snapshot(kafka: str, topic_prefix: str) -> None:
    """An operator resets the group's offsets to the beginning (kafka-consumer-groups
    --reset-offsets) to process a topic again: the snapshot, far ahead of the new commit, is
    refused and every event is scored and published again."""
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata

    s = with_channels(settings(kafka, topic_prefix, max_poll_records=50,
                               detector={"warmup": 64, "batch_size": 32}), idle_timeout=3)
    topic = f"{topic_prefix}-in"
    create_topic(kafka, topic)
    produce_events(kafka, topic, events(600, seed=8))
    first = Worker(s).run()
    assert first.events == 600
    tp = TopicPartition(topic, 0)
    operator = KafkaConsumer(bootstrap_servers=kafka, group_id=s.kafka.group_id, enable_auto_commit=False)
    operator.assign([tp])
    operator.commit({tp: OffsetAndMetadata(0, "", -1)})
    operator.close()
    again = Worker(s)
    stats = again.run()
    assert refused(again, topic, "offset") == 1  # 600 is more than a batch (50 + 8 x 16) past 0
    assert stats.events == 600 and scored(again, topic) == 600 and stats.anomalies == first.anomalies


def test_a_long_run_of_malformed_events_first_neither_stops_the_worker_nor_takes_the_events_after_it(
        kafka: str, topic_prefix: str) -> None:
    """200 malformed events open the partition (more than the 128 among which the channels are
    sought). Seen in a test: the worker stopped on an assertion, at every restart. Now a whole
    window without a valid event is dead-lettered and committed on its own; the rest waits for
    valid events, which fix the channels and are scored."""
    create_topic(kafka, f"{topic_prefix}-in")
    s = settings(kafka, topic_prefix, service={"idle_timeout": 3})
    producer = KafkaProducer(bootstrap_servers=kafka)
    for i in range(200):
        producer.send(f"{topic_prefix}-in", key=b"d", value=json.dumps({"readings": f"broken {i}"}).encode())
    producer.flush()
    first = Worker(s).run()
    tp = TopicPartition(f"{topic_prefix}-in", 0)
    assert first.dead_letters == 128 and committed(kafka, f"{topic_prefix}-group", tp) == 128  # the rest: held
    for value in events(300, seed=1):
        producer.send(f"{topic_prefix}-in", key=b"d", value=value)
    producer.flush()
    producer.close()
    worker = Worker(s)
    second = worker.run()
    assert second.dead_letters == 72 and second.events == 372 and scored(worker, f"{topic_prefix}-in") == 300
    assert committed(kafka, f"{topic_prefix}-group", tp) == 500
    dead = read_topic(kafka, f"{topic_prefix}-dlq")
    assert sorted(int(dict(m.headers)["ae-source-offset"]) for m in dead) == list(range(200))
    flagged = [json.loads(m.value)["source"]["offset"] for m in read_topic(kafka, f"{topic_prefix}-out")]
    assert all(200 <= offset < 500 for offset in flagged)
