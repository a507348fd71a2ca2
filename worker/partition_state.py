"""Partition state that follows the partition: detector snapshots in a compacted changelog topic.

Each snapshot is a checkpoint (:mod:`ae_core.checkpoint`: versioned, checksummed, never unpickled)
of one input partition's detector, with the input offset it reflects (``next_offset``), keyed by
``topic/partition`` in a compacted topic (``<group_id>-state`` unless set). On assignment a worker,
on any machine, restores the latest snapshot; the loop then rebuilds what happened after it
(see :class:`worker.service.Worker`). A local ``state_dir`` stays as a cache: of the two, the one
further ahead wins. A corrupt snapshot in the changelog is refused (logged, counted) and the
partition is rebuilt from its first offset; a corrupt local file stops the worker, as before.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from ae_core import AutoencoderDetector, CheckpointError
from ae_core.checkpoint import dumps, load_detector_with_metadata, loads_with_metadata, write_blob
from worker.kafka_io import connection_config
from worker.observability import Metrics
from worker.outputs import Outgoing
from worker.settings import Settings

logger = logging.getLogger(__name__)

# Snapshots of wide windowed models exceed the broker's 1 MB default: the changelog (and the
# producer) accept records this large.
SNAPSHOT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class PartitionState:
    detector: AutoencoderDetector
    next_offset: int = 0
    saved_at: float = 0.0


@dataclass
class Snapshot:
    detector: AutoencoderDetector
    next_offset: int
    source: str


def changelog_topic(settings: Settings) -> str:
    return settings.kafka.changelog_topic or f"{settings.kafka.group_id}-state"


def snapshot_key(tp: TopicPartition) -> bytes:
    return f"{tp.topic}/{tp.partition}".encode()


class StateStore:
    """Writes and reads partition snapshots: the changelog topic, and the local cache folder if set."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topic = changelog_topic(settings)

    def ensure_topic(self) -> None:
        """Create the compacted changelog if it is missing (it is the worker's own, like an internal topic)."""
        k = self.settings.kafka
        admin = KafkaAdminClient(**connection_config(k))
        try:
            if self.topic in set(admin.list_topics()):
                return
            config = {"cleanup.policy": "compact", "max.message.bytes": str(SNAPSHOT_MAX_BYTES),
                      "min.compaction.lag.ms": "0", "segment.ms": "600000"}
            try:
                admin.create_topics([NewTopic(self.topic, 1, k.topic_replication, topic_configs=config)])
                logger.info("created the state changelog %s (compacted)", self.topic)
            except TopicAlreadyExistsError:
                pass
        finally:
            admin.close()

    # -- writing ----------------------------------------------------------------------------------
    def snapshot(self, tp: TopicPartition, state: PartitionState) -> Outgoing:
        """The snapshot record for the changelog (the caller sends it within its batch protocol);
        the local cache, if any, gets the same bytes."""
        metadata = {"next_offset": state.next_offset, "topic": tp.topic, "partition": tp.partition}
        blob = dumps(state.detector, metadata)
        path = self._path(tp)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_blob(blob, path)  # the same bytes: serialised once
        self.metrics.snapshot_bytes.labels(tp.topic, str(tp.partition)).set(len(blob))
        state.saved_at = time.monotonic()
        return Outgoing(self.topic, snapshot_key(tp), blob, [])

    # -- reading ----------------------------------------------------------------------------------
    def latest(self, tps: list[TopicPartition], committed: dict[TopicPartition, int | None],
               exactly_once: bool) -> dict[TopicPartition, Snapshot]:
        """The furthest usable snapshot of each partition, from the changelog and the local cache.

        In exactly-once mode a snapshot ahead of the committed offset belongs to a transaction that
        never committed (only the local cache can hold one): it is passed over. At least once, a
        snapshot is taken after its batch was published, so one ahead of the commit is right.
        Raises :class:`CheckpointError` for a corrupt local file (left in place for inspection)."""
        found = self._from_changelog(tps)
        for tp in tps:
            path = self._path(tp)
            if path is None or not path.exists():
                continue
            det, meta = load_detector_with_metadata(path)
            local = Snapshot(det, int(meta.get("next_offset", 0)), str(path))
            done = committed.get(tp)
            if exactly_once and local.next_offset > (done or 0):
                logger.warning("passing over %s: its offset %d is ahead of the committed %s (an aborted "
                               "transaction)", path, local.next_offset, done)
                continue
            if tp not in found or local.next_offset > found[tp].next_offset:
                found[tp] = local
        return found

    def _from_changelog(self, tps: list[TopicPartition]) -> dict[TopicPartition, Snapshot]:
        wanted = {snapshot_key(tp): tp for tp in tps}
        blobs: dict[bytes, bytes | None] = {}
        consumer = KafkaConsumer(**connection_config(self.settings.kafka), enable_auto_commit=False,
                                 isolation_level="read_committed",  # snapshots of aborted batches never count
                                 max_partition_fetch_bytes=SNAPSHOT_MAX_BYTES, fetch_max_bytes=SNAPSHOT_MAX_BYTES)
        try:
            parts = [TopicPartition(self.topic, p) for p in sorted(consumer.partitions_for_topic(self.topic) or [])]
            if not parts:
                return {}
            consumer.assign(parts)
            consumer.seek_to_beginning(*parts)
            end = consumer.end_offsets(parts)
            deadline = time.monotonic() + 60
            while any(consumer.position(p) < end[p] for p in parts):
                if time.monotonic() > deadline:
                    raise CheckpointError(f"reading the state changelog {self.topic} took over 60 s")
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        if record.key in wanted:
                            blobs[record.key] = record.value
        finally:
            consumer.close()
        found: dict[TopicPartition, Snapshot] = {}
        for key, blob in blobs.items():
            tp = wanted[key]
            if blob is None:
                continue
            try:
                det, meta = loads_with_metadata(blob)
            except CheckpointError as exc:
                logger.error("refusing the snapshot of %s-%d in %s (%s): rebuilding the partition from its "
                             "first offset", tp.topic, tp.partition, self.topic, exc)
                self.metrics.snapshots_refused.labels(tp.topic).inc()
                continue
            found[tp] = Snapshot(det, int(meta.get("next_offset", 0)), f"{self.topic} ({key.decode()})")
        return found

    def _path(self, tp: TopicPartition) -> Path | None:
        folder = self.settings.service.state_dir
        return Path(folder) / f"{tp.topic}-{tp.partition}.ckpt" if folder else None
