"""Partition state that follows the partition: detector snapshots in a compacted changelog topic.

Each snapshot is a checkpoint (:mod:`ae_core.checkpoint`: versioned, checksummed, never unpickled)
of one input partition's detector, with the input offset it reflects (``next_offset``), keyed by
``topic/partition`` in a compacted topic (``<group_id>-state`` unless set). On assignment a worker,
on any machine, restores the latest snapshot; the loop then rebuilds what happened after it
(see :class:`worker.kafka.service.Worker`). A local ``state_dir`` stays as a cache: of the two, the one
further ahead wins. A corrupt snapshot in the changelog is refused (logged, counted) and the
partition is rebuilt from its first offset; a corrupt local file stops the worker, as before.

A snapshot must also fit the partition it claims to be: its offset within the partition's log
(start to end), never ahead of the group's committed offset in exactly-once mode, no progress
claimed where the group has committed nothing (the group's offsets or the topic are not the ones
it was saved against), the same topic id when both are known (the topic was not deleted and made
again). With ``AE_KAFKA__SNAPSHOT_KEY`` it must carry that key's signature. Any other is refused
(logged, ``ae_snapshots_refused_total{reason}``) and the partition rebuilt: a stale or forged
snapshot can never skip events.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from ae_core import AutoencoderDetector, CheckpointError, SignatureError
from ae_core.checkpoint import dumps, load_detector_with_metadata, loads_with_metadata, write_blob
from worker.kafka.kafka_io import connection_config, replication
from worker.kafka.outputs import Outgoing
from worker.observability import Metrics
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
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LogBounds:
    """What the broker says of an input partition when it is restored."""

    start: int  # log start offset (the first offset still in the topic)
    end: int  # end offset (the next offset to be written)
    committed: int | None  # the group's committed offset
    topic_id: str | None  # None where the client does not know it


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
        key = settings.kafka.snapshot_key
        self.key = key.get_secret_value().encode() if key is not None else None
        self.topic_ids: dict[str, str] = {}  # input topic -> id, as last seen at a restore

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
                admin.create_topics([NewTopic(self.topic, 1, replication(k), topic_configs=config)])
                logger.info("created the state changelog %s (compacted)", self.topic)
            except TopicAlreadyExistsError:
                pass
        finally:
            admin.close()

    # -- writing ----------------------------------------------------------------------------------
    def snapshot(self, tp: TopicPartition, state: PartitionState) -> Outgoing:
        """The snapshot record for the changelog (the caller sends it within its batch protocol);
        the local cache, if any, gets the same bytes."""
        metadata: dict[str, Any] = {"next_offset": state.next_offset, "topic": tp.topic, "partition": tp.partition}
        if tp.topic in self.topic_ids:
            metadata["topic_id"] = self.topic_ids[tp.topic]
        blob = dumps(state.detector, metadata, self.key)
        path = self._path(tp)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_blob(blob, path)  # the same bytes: serialised once
        self.metrics.snapshot_bytes.labels(tp.topic, str(tp.partition)).set(len(blob))
        state.saved_at = time.monotonic()
        return Outgoing(self.topic, snapshot_key(tp), blob, [])

    # -- reading ----------------------------------------------------------------------------------
    def latest(self, tps: list[TopicPartition], bounds: dict[TopicPartition, LogBounds],
               max_ahead: int) -> dict[TopicPartition, Snapshot]:
        """The furthest usable snapshot of each partition, from the changelog and the local cache.

        Each is checked against ``bounds`` and ``max_ahead`` (:meth:`refusal`); a refused one is logged, counted and
        passed over. Raises :class:`CheckpointError` for a corrupt local file (left in place for
        inspection); a local file with a wrong or missing signature is refused like the others."""
        for tp, b in bounds.items():
            if b.topic_id is not None:
                self.topic_ids[tp.topic] = b.topic_id
        found: dict[TopicPartition, Snapshot] = {}
        candidates = [(tp, snap) for tp, snap in self._from_changelog(tps).items()]
        for tp in tps:
            path = self._path(tp)
            if path is None or not path.exists():
                continue
            try:
                det, meta = load_detector_with_metadata(path, self.key)
            except SignatureError as exc:
                self._refuse(tp, str(path), "signature", str(exc))
                continue
            candidates.append((tp, Snapshot(det, _offset(meta), str(path), meta)))
        for tp, snap in candidates:
            refused = self.refusal(tp, snap, bounds[tp], max_ahead)
            if refused is not None:
                self._refuse(tp, snap.source, *refused)
            elif tp not in found or snap.next_offset > found[tp].next_offset:
                found[tp] = snap
        return found

    @staticmethod
    def refusal(tp: TopicPartition, snap: Snapshot, b: LogBounds, max_ahead: int) -> tuple[str, str] | None:
        """Why ``snap`` cannot be the state of ``tp`` as the broker describes it now, as (``foreign``
        or ``offset``, the reason in words), or None.

        ``max_ahead``: how far past the committed offset a true snapshot can be. At least once, by
        one batch (it is taken after its batch was published, before the commit: a crash between
        leaves it ahead); further means the group's offsets were moved back (to process again),
        and keeping it would skip what was asked for. Exactly once, 0: snapshot and commit are one
        transaction, so one ahead never committed (only the local cache can hold one) or was forged."""
        meta, offset = snap.metadata, snap.next_offset
        if (meta.get("topic"), meta.get("partition")) not in ((None, None), (tp.topic, tp.partition)):
            return "foreign", f"it was saved for {meta.get('topic')}-{meta.get('partition')}"
        saved_id = meta.get("topic_id")
        if saved_id is not None and b.topic_id is not None and saved_id != b.topic_id:
            return "foreign", (f"it was saved for topic id {saved_id}, and {tp.topic} is now {b.topic_id} "
                               "(deleted and made again)")
        if offset < 0:
            return "offset", f"its offset {offset} is negative"
        if offset > b.end:
            return "offset", (f"its offset {offset} is past the partition's end offset {b.end} (the topic was "
                              "emptied or made again since, or the snapshot is forged)")
        if offset < b.start:
            return "offset", (f"its offset {offset} is before the partition's first offset {b.start} (events "
                              "deleted since)")
        if b.committed is None and offset > b.start:
            return "offset", (f"it claims events up to offset {offset} but the group has committed nothing for the "
                              "partition (its offsets or the topic were reset since)")
        if b.committed is not None and offset > b.committed + max_ahead:
            why = ("an aborted transaction" if max_ahead == 0 else
                   f"more than a batch, {max_ahead} events: the group's offsets were moved back since")
            return "offset", f"its offset {offset} is ahead of the committed {b.committed} ({why})"
        return None

    def _refuse(self, tp: TopicPartition, source: str, reason: str, why: str) -> None:
        logger.error("refusing the snapshot of %s-%d in %s: %s; rebuilding the partition without it", tp.topic,
                     tp.partition, source, why)
        self.metrics.snapshots_refused.labels(tp.topic, reason).inc()

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
            source = f"{self.topic} ({key.decode()})"
            try:
                det, meta = loads_with_metadata(blob, self.key)
            except CheckpointError as exc:
                self._refuse(tp, source, "signature" if isinstance(exc, SignatureError) else "corrupt", str(exc))
                continue
            found[tp] = Snapshot(det, _offset(meta), source, meta)
        return found

    def _path(self, tp: TopicPartition) -> Path | None:
        folder = self.settings.service.state_dir
        return Path(folder) / f"{tp.topic}-{tp.partition}.ckpt" if folder else None


def _offset(metadata: dict[str, Any]) -> int:
    """A snapshot's next offset; a value that is no whole number reads as -1 (and is refused)."""
    value = metadata.get("next_offset", 0)
    return value if type(value) is int else -1
