"""``ae-worker run``: the consumer-group loop on a real broker.

Per mini-batch, in a fixed order (at-least-once): poll -> score and decide per partition ->
send anomalies and dead letters -> flush the producer and check every send -> send partition
snapshots to the changelog (when due) and flush -> commit the consumed offsets. A crash anywhere
before the commit replays the batch; nothing is committed that was not published first. A newly
assigned partition restores its latest snapshot and re-processes, publishing nothing, the events
between that snapshot and the committed offset (:mod:`worker.partition_state`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: seconds, not a batch's job)
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ae_core import AutoencoderDetector
from worker.errors import WorkerError
from worker.events import EventError, EventParser, ParsedEvent
from worker.kafka_io import ensure_topics, make_consumer, make_producer
from worker.observability import HealthServer, Metrics
from worker.partition_state import SNAPSHOT_MAX_BYTES, PartitionState, Snapshot, StateStore
from worker.results import result_records
from worker.settings import Settings

logger = logging.getLogger(__name__)

# Dead letters must fit the dead-letter topic (1 MB by default, headers included).
DLQ_MAX_VALUE_BYTES = 512 * 1024
DLQ_HEAD_BYTES = 1024
DLQ_MAX_KEY_BYTES = 1024


class PublishError(WorkerError):
    """A send to the output or dead-letter topic failed; offsets were not committed."""


@dataclass
class RunStats:
    events: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    batches: int = 0
    rebuilt: int = 0  # events re-processed after an assignment, without publishing
    first_records_at: float | None = None  # perf_counter when the first poll brought events
    last_commit_at: float | None = None  # perf_counter after the last commit


class Worker:
    """Consumes sensor events, publishes anomalies; one detector per assigned partition."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.metrics = Metrics()
        e = settings.events
        self.parser = EventParser(e.channels, e.allow_unknown_channels, e.max_event_bytes)
        self.states: dict[TopicPartition, PartitionState] = {}
        self.stats = RunStats()
        self.batch_latencies: list[float] = []
        self._consumer: Any = None
        self._producer: Any = None
        self.health: HealthServer | None = None
        self._assigned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}  # next offset committed, per owned partition
        # Partitions being rebuilt: events before this offset were published by an earlier owner;
        # they are processed again to rebuild the detector, and nothing is published for them.
        self._rebuild_until: dict[TopicPartition, int] = {}
        self._arrived: set[TopicPartition] = set()  # assigned, not yet restored
        self.store = StateStore(settings, self.metrics)
        self._unpublished = False  # a batch's outputs are not yet confirmed by the broker

    def assignment(self) -> set[TopicPartition]:
        """Partitions this worker owns now (empty before it joined its group)."""
        return set(self._assigned)

    # -- life cycle -------------------------------------------------------------------------------
    def run(self) -> RunStats:
        k, svc = self.settings.kafka, self.settings.service
        ensure_topics(k, [*k.input_topics, k.output_topic, k.dlq_topic], k.create_topics)
        self.store.ensure_topic()
        try:
            self._consumer = make_consumer(k)
            self._producer = make_producer(k, max_request_size=SNAPSHOT_MAX_BYTES)
            self._consumer.subscribe(list(k.input_topics), listener=_Rebalance(self))
            logger.info("consuming %s as group %r; anomalies -> %s, dead letters -> %s",
                        ",".join(k.input_topics), k.group_id, k.output_topic, k.dlq_topic)
            if svc.metrics_port:
                self.health = HealthServer(self.metrics, svc.metrics_host, svc.metrics_port,
                                           stale_after=k.max_poll_interval_ms / 1000).start()
            self._loop()
        finally:
            self._shutdown()
        return self.stats

    def _loop(self) -> None:
        k, svc = self.settings.kafka, self.settings.service
        idle_since = time.monotonic()
        while not self.stop.is_set():
            budget = k.max_poll_records
            if svc.max_events is not None:
                budget = min(budget, svc.max_events - self.stats.events)
                if budget <= 0:
                    logger.info("processed max_events=%d: stopping", svc.max_events)
                    return
            records = self._consumer.poll(timeout_ms=k.poll_timeout_ms, max_records=budget)
            if self._arrived:
                records = self._restore_arrived(records)
            if self.health:
                self.health.beat()
                self.health.ready = bool(self._consumer.assignment())
            if not any(records.values()):
                if not self._assigned:
                    idle_since = time.monotonic()  # waiting for partitions (a rebalance) is not idleness
                elif svc.idle_timeout is not None and time.monotonic() - idle_since > svc.idle_timeout:
                    logger.info("no event for %.1f s (idle_timeout): stopping", svc.idle_timeout)
                    return
                continue
            idle_since = time.monotonic()
            started = time.perf_counter()
            if self.stats.first_records_at is None:
                self.stats.first_records_at = started
            self.process(records)
            self.stats.last_commit_at = time.perf_counter()
            elapsed = self.stats.last_commit_at - started
            self.metrics.batch_seconds.observe(elapsed)
            self.batch_latencies.append(elapsed)
            del self.batch_latencies[:-10_000]

    def _shutdown(self) -> None:
        """Save states, close the clients and the endpoint. Each step runs even if one before it
        fails, and a failure here is logged rather than raised, so it never hides the error that
        stopped the loop."""
        steps = [(f"saving {tp.topic}-{tp.partition}", lambda tp=tp: self._save_state(tp, force=True))
                 for tp in list(self.states)]
        if self._consumer is not None:
            steps.append(("closing the consumer", lambda: self._consumer.close(autocommit=False)))
        if self._producer is not None:
            steps.append(("flushing the producer", self._producer.flush))
            steps.append(("closing the producer", lambda: self._producer.close(timeout=5)))
        if self.health:
            steps.append(("stopping the health endpoint", self.health.stop))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (see docstring)
                logger.warning("shutdown: %s failed: %r", what, exc)
        logger.info("stopped after %d events, %d anomalies, %d dead letters in %d batches",
                    self.stats.events, self.stats.anomalies, self.stats.dead_letters, self.stats.batches)

    # -- one mini-batch -----------------------------------------------------------------------------
    def process(self, records: dict[TopicPartition, list[Any]]) -> None:
        self._unpublished = True
        sends: list[Any] = []
        commits: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp, messages in records.items():
            if not messages:
                continue
            state = self.states.get(tp)
            fresh = messages if state is None else [m for m in messages if m.offset >= state.next_offset]
            if fresh:  # the others were published before a restart, by the state restored here
                sends += self._process_partition(tp, fresh)
            if tp not in self._rebuild_until:  # never move a committed offset back while rebuilding
                commits[tp] = OffsetAndMetadata(messages[-1].offset + 1, "", -1)
        self._flush(sends, "sends")
        self._unpublished = False
        snapshots = [f for f in (self._save_state(tp) for tp in commits) if f is not None]
        if snapshots:
            self._flush(snapshots, "snapshots")
        if commits:
            self._consumer.commit(commits)
            self._committed.update({tp: om.offset for tp, om in commits.items()})
        self.stats.batches += 1
        self._update_lag()

    def _flush(self, sends: list[Any], what: str) -> None:
        try:
            self._producer.flush()
        except KafkaError as exc:
            raise PublishError(f"flushing the producer failed, offsets not committed: {exc!r}") from exc
        failed = [f.exception for f in sends if f.failed()]
        if failed:
            raise PublishError(f"{len(failed)} {what} failed, offsets not committed: {failed[0]}")

    def _update_lag(self) -> None:
        """Lag of every owned partition, not only those in the last batch."""
        for tp in self._assigned:
            highwater, done = self._consumer.highwater(tp), self._committed.get(tp)
            if highwater is not None and done is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - done))

    def _process_partition(self, tp: TopicPartition, messages: list[Any]) -> list[Any]:
        sends, good, good_msgs = [], [], []
        live_from = self._rebuild_until.get(tp, -1)
        for msg in messages:
            try:
                good.append(self.parser.parse(msg.value, msg.key, msg.timestamp))
                good_msgs.append(msg)
            except EventError as exc:
                if msg.offset >= live_from:  # an earlier owner dead-lettered the others
                    sends.append(self._dead_letter(msg, exc))
        rebuilt = sum(1 for m in messages if m.offset < live_from)
        if rebuilt:
            self.stats.rebuilt += rebuilt
            self.metrics.rebuilt_events.labels(tp.topic).inc(rebuilt)
        if messages[-1].offset + 1 >= live_from >= 0:
            del self._rebuild_until[tp]
            logger.info("rebuilt the detector of %s-%d up to offset %d: publishing again", tp.topic, tp.partition,
                        live_from)
        self.stats.events += len(messages) - rebuilt
        self.metrics.events.labels(tp.topic).inc(sum(1 for m in good_msgs if m.offset >= live_from))
        if not good and tp not in self.states:
            return sends  # nothing valid yet: the channels may still be unknown
        state = self._state(tp)
        state.next_offset = messages[-1].offset + 1
        if not good:
            return sends
        det = state.detector
        res = det.process_many(np.array([g.values for g in good]), np.array([g.key for g in good]))
        live = np.array([m.offset >= live_from for m in good_msgs])
        flagged = np.flatnonzero(res.is_anomaly & live)
        rows = np.union1d(np.union1d(flagged, np.flatnonzero(res.regime_change & live)),
                          [i for i in res.closed if live[i]]).astype(np.int64)
        if len(rows):
            for i, record in zip(rows.tolist(), result_records(res, det.config.names, rows)):
                sends.append(self._publish(tp, good_msgs[i], good[i], record, det.config.names))
            self.stats.anomalies += len(flagged)
            self.metrics.anomalies.labels(tp.topic).inc(len(flagged))
            self.metrics.alerts.labels(tp.topic).inc(int((res.alert & live).sum()))
            self.metrics.episodes_closed.labels(tp.topic).inc(sum(1 for i in res.closed if live[i]))
            self.metrics.regime_changes.labels(tp.topic).inc(int((res.regime_change & live).sum()))
        labels = (tp.topic, str(tp.partition))
        self.metrics.open_episodes.labels(*labels).set(len(det.episodes.open))
        if not np.isnan(res.threshold[-1]):
            self.metrics.threshold.labels(*labels).set(float(res.threshold[-1]))
        if det.last_loss is not None:
            self.metrics.loss.labels(*labels).set(det.last_loss)
        return sends

    def _publish(self, tp: TopicPartition, msg: Any, event: ParsedEvent, record: dict[str, Any],
                 channels: tuple[str, ...]) -> Any:
        """One record on the output topic: an ``anomaly`` (a flagged event; ``alert`` true on the
        first of its episode), an ``episode_closed`` (the event that completed the quiet period),
        or a ``regime_change`` (an unflagged event at which an episode was accepted as normal)."""
        kind = "anomaly" if record["is_anomaly"] else "episode_closed" if "episode_closed" in record \
            else "regime_change"
        payload = {
            "type": kind,
            "key": event.key,
            "timestamp": event.timestamp,
            **record,
            "readings": dict(zip(channels, event.values)),
            "source": {"topic": tp.topic, "partition": tp.partition, "offset": msg.offset},
        }
        del payload["is_anomaly"]
        headers = [("content-type", b"application/json"), ("ae-type", kind.encode()),
                   ("ae-source", f"{tp.topic}/{tp.partition}/{msg.offset}".encode()),
                   ("ae-score", repr(record["score"]).encode()),
                   ("ae-top-channel", record["contributions"][0]["channel"].encode())]
        return self._producer.send(self.settings.kafka.output_topic, key=event.key.encode(),
                                   value=orjson.dumps(payload), headers=headers)

    def _dead_letter(self, msg: Any, exc: EventError) -> Any:
        self.stats.dead_letters += 1
        self.metrics.dead_letters.labels(msg.topic, exc.kind).inc()
        logger.warning("dead letter %s/%d/%d: %s", msg.topic, msg.partition, msg.offset, exc.reason)
        headers = list(msg.headers or []) + [
            ("ae-error", exc.reason.encode()), ("ae-error-kind", exc.kind.encode()),
            ("ae-source-topic", msg.topic.encode()), ("ae-source-partition", str(msg.partition).encode()),
            ("ae-source-offset", str(msg.offset).encode()),
        ]
        key, value = msg.key, msg.value
        # A record the dead-letter topic cannot take would jam the partition (the send fails, the
        # batch replays, fails again): keep the head of an oversized key or value, with its size
        # and digest, so it can still be found and matched with the source.
        if key is not None and len(key) > DLQ_MAX_KEY_BYTES:
            headers += [("ae-original-key-size", str(len(key)).encode()),
                        ("ae-original-key-sha256", hashlib.sha256(key).hexdigest().encode())]
            key = key[:DLQ_MAX_KEY_BYTES]
        if value is not None and len(value) > DLQ_MAX_VALUE_BYTES:
            headers += [("ae-original-size", str(len(value)).encode()),
                        ("ae-original-sha256", hashlib.sha256(value).hexdigest().encode())]
            value = value[:DLQ_HEAD_BYTES]
        return self._producer.send(self.settings.kafka.dlq_topic, key=key, value=value, headers=headers)

    # -- partition state ----------------------------------------------------------------------------
    def _state(self, tp: TopicPartition) -> PartitionState:
        state = self.states.get(tp)
        if state is None:
            channels = self.parser.channels
            assert channels is not None, "a valid event fixes the channels before any state is needed"
            config = self.settings.detector.to_config(len(channels), channels)
            state = self.states[tp] = PartitionState(AutoencoderDetector(config))
        return state

    def _adopt(self, tp: TopicPartition, snap: Snapshot) -> None:
        det = snap.detector
        if self.parser.channels is None:
            self.parser.channels = det.config.names
        elif self.parser.channels != det.config.names:
            raise WorkerError(f"{snap.source} was built for channels {', '.join(det.config.names)}, "
                              f"not {', '.join(self.parser.channels)}: move it away to start afresh")
        wanted = self.settings.detector.to_config(len(det.config.names), det.config.names)
        changed = sorted(k for k, v in wanted.to_dict().items() if det.config.to_dict()[k] != v)
        if changed:
            logger.warning("%s keeps its saved detector settings; these differ from the current ones: %s",
                           snap.source, ", ".join(changed))
        self.states[tp] = PartitionState(det, snap.next_offset, time.monotonic())
        logger.info("restored detector of %s-%d from %s (%d events seen, next offset %d)", tp.topic, tp.partition,
                    snap.source, det.events_seen, snap.next_offset)

    def _plan_rebuild(self, tp: TopicPartition) -> bool:
        """Seek back to where the restored state (or the partition) begins when the group's committed
        offset is ahead of it: those events rebuild the detector and publish nothing."""
        committed = self._consumer.committed(tp)
        if committed is None:
            return False
        state = self.states.get(tp)
        start = state.next_offset if state is not None else self._consumer.beginning_offsets([tp])[tp]
        if start < committed:
            self._consumer.seek(tp, start)
            self._rebuild_until[tp] = committed
            logger.info("rebuilding the detector of %s-%d from offset %d up to the committed %d, publishing nothing",
                        tp.topic, tp.partition, start, committed)
            return True
        return False

    def _save_state(self, tp: TopicPartition, force: bool = False) -> Any:
        """Snapshot a partition's detector when due; returns the changelog send, or None."""
        state = self.states.get(tp)
        if state is None or self._unpublished or tp in self._rebuild_until:
            # After a failed batch the detectors are ahead of what was published, and mid-rebuild
            # they are behind the committed offset: keep the last snapshot.
            return None
        if not force and time.monotonic() - state.saved_at < self.settings.service.snapshot_interval:
            return None
        return self.store.save(self._producer, tp, state)

    def take(self, tps: list[TopicPartition]) -> None:
        """Partitions assigned to this worker. kafka-python forbids blocking calls in its rebalance
        callbacks, so restoring them waits for the loop (:meth:`_restore_arrived`)."""
        self._arrived |= {tp for tp in tps if tp not in self.states}
        self._assigned |= set(tps)
        self.metrics.assigned.set(len(self._assigned))

    def _restore_arrived(self, records: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """Restore the latest snapshots of newly assigned partitions and plan their rebuilds; records
        already fetched for a partition that seeks back are dropped (they come again)."""
        arrived = sorted(self._arrived & self._assigned, key=lambda tp: (tp.topic, tp.partition))
        self._arrived.clear()
        snapshots = self.store.latest(arrived)  # a corrupt local file raises: the worker stops loudly
        for tp in arrived:
            if tp in snapshots:
                self._adopt(tp, snapshots[tp])
            if self._plan_rebuild(tp):
                records.pop(tp, None)
        return records

    def release(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked: every batch was committed before this poll, so snapshot and let go."""
        for tp in tps:
            # Sent, not flushed (no blocking call in a rebalance callback): a next owner that reads
            # an older snapshot rebuilds from it to the same state.
            self._save_state(tp, force=True)
            self._arrived.discard(tp)
            self.states.pop(tp, None)
            self._committed.pop(tp, None)
            self._rebuild_until.pop(tp, None)
        self._assigned -= set(tps)
        self.metrics.assigned.set(len(self._assigned))


class _Rebalance(ConsumerRebalanceListener):
    """Offsets are committed at the end of every batch, before the next poll, so a revoked
    partition has nothing in flight; its detector state is saved and let go."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        logger.info("partitions revoked: %s", sorted(f"{tp.topic}-{tp.partition}" for tp in revoked))
        self.worker.release(list(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if not assigned:
            return
        logger.info("partitions assigned: %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))
        self.worker.take(list(assigned))
