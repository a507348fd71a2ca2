"""``ae-worker run``: the consumer-group loop on a real broker.

Per mini-batch, in a fixed order: poll -> score and decide per partition -> send anomalies and
dead letters -> snapshot partitions (when due) -> commit the consumed offsets, at least once or in
one transaction (:mod:`worker.delivery`). A failed batch is aborted and its partitions rewound to
the last committed state; a broker outage is waited out (``/readyz`` answers 503 meanwhile). A
newly assigned partition restores its latest snapshot and re-processes, publishing nothing, the
events between that snapshot and the committed offset (:mod:`worker.partition_state`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch._dynamo  # noqa: F401  (torch.optim imports it on first use: seconds, not a batch's job)
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from ae_core import AutoencoderDetector
from worker.delivery import BatchFailed, PublishError, make_delivery, patiently
from worker.errors import SettingsError, WorkerError
from worker.events import EventError, EventParser, infer_channels
from worker.kafka_io import ensure_topics, make_consumer
from worker.observability import HealthServer, Metrics
from worker.outputs import anomaly_record, dead_letter
from worker.partition_state import SNAPSHOT_MAX_BYTES, PartitionState, Snapshot, StateStore
from worker.results import result_records
from worker.settings import Settings

__all__ = ["PublishError", "RunStats", "Worker"]
logger = logging.getLogger(__name__)
T = TypeVar("T")

# Without configured channels, a partition whose first events hold fewer valid ones than
# schema_sample is decided from what it has after this many times schema_sample events.
SCHEMA_PATIENCE = 8


@dataclass
class RunStats:
    events: int = 0
    anomalies: int = 0
    dead_letters: int = 0
    batches: int = 0
    failed_batches: int = 0  # aborted (or unsent) and processed again
    rebuilt: int = 0  # events re-processed after an assignment, without publishing
    first_records_at: float | None = None  # perf_counter when the first poll brought events
    last_commit_at: float | None = None  # perf_counter after the last commit


@dataclass
class Outcome:
    """What one partition's share of a batch produced; counted once the batch is committed."""

    sends: list[Any] = field(default_factory=list)
    events: int = 0  # live events (scored or dead-lettered), not rebuilt ones
    scored: int = 0
    rebuilt: int = 0
    anomalies: int = 0
    alerts: int = 0
    closed: int = 0
    regime_changes: int = 0
    dead: list[str] = field(default_factory=list)  # kinds of the dead letters
    held: bool = False  # held back until the partition's channels are known: not committed


class Worker:
    """Consumes sensor events, publishes anomalies; one detector per assigned partition."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.metrics = Metrics()
        self.states: dict[TopicPartition, PartitionState] = {}
        self.parsers: dict[TopicPartition, EventParser] = {}
        self.stats = RunStats()
        self.batch_latencies: list[float] = []
        self._consumer: Any = None
        self.delivery: Any = None
        self.health: HealthServer | None = None
        self._assigned: set[TopicPartition] = set()
        self._committed: dict[TopicPartition, int] = {}  # next offset committed, per owned partition
        # Partitions being rebuilt: events before this offset were published by an earlier owner;
        # they are processed again to rebuild the detector, and nothing is published for them.
        self._rebuild_until: dict[TopicPartition, int] = {}
        self._arrived: set[TopicPartition] = set()  # assigned (or rewound), paused until restored
        self._held: dict[TopicPartition, list[Any]] = {}  # events waiting for their channels
        self.store = StateStore(settings, self.metrics)
        self._unpublished = False  # a batch's outputs are not yet confirmed by the broker
        self._waiting_for: str | None = None  # the broker call an outage is holding up

    def assignment(self) -> set[TopicPartition]:
        """Partitions this worker owns now (empty before it joined its group)."""
        return set(self._assigned)

    @property
    def ready(self) -> bool:
        """Partitions assigned and the broker answering (``/readyz``)."""
        return bool(self._assigned) and self._waiting_for is None

    # -- life cycle -------------------------------------------------------------------------------
    def run(self) -> RunStats:
        k, svc = self.settings.kafka, self.settings.service
        ensure_topics(k, [*k.input_topics, k.output_topic, k.dlq_topic], k.create_topics)
        self.store.ensure_topic()
        try:
            self._consumer = make_consumer(k)
            self.delivery = make_delivery(k, self._consumer, self._retry, self._waiting,
                                          max_request_size=SNAPSHOT_MAX_BYTES)
            self._consumer.subscribe(list(k.input_topics), listener=_Rebalance(self))
            logger.info("consuming %s as group %r (%s); anomalies -> %s, dead letters -> %s",
                        ",".join(k.input_topics), k.group_id, "exactly once" if k.exactly_once else "at least once",
                        k.output_topic, k.dlq_topic)
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
            if self._arrived:
                self._retry("restoring partition state", self._restore_arrived)
            records = self._retry("polling", lambda n=budget: self._consumer.poll(timeout_ms=k.poll_timeout_ms,
                                                                                   max_records=n))
            if self.health:
                self.health.beat()
                self.health.ready = self.ready
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
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.delivery is not None and self.states:
            steps.append(("saving the partition states", self._save_all))
        if self._consumer is not None:
            steps.append(("closing the consumer", lambda: self._consumer.close(autocommit=False)))
        if self.delivery is not None:
            steps.append(("closing the producer", self.delivery.close))
        if self.health:
            steps.append(("stopping the health endpoint", self.health.stop))
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 (see docstring)
                logger.warning("shutdown: %s failed: %r", what, exc)
        logger.info("stopped after %d events, %d anomalies, %d dead letters in %d batches",
                    self.stats.events, self.stats.anomalies, self.stats.dead_letters, self.stats.batches)

    # -- riding out the broker's absence ------------------------------------------------------------
    def _retry(self, what: str, call: Callable[[], T]) -> T:
        result = patiently(what, call, self.stop, self._waiting)
        if self._waiting_for is not None:
            logger.info("the broker answers again (%s): carrying on", what)
            self._waiting_for = None
        return result

    def _waiting(self, what: str, exc: BaseException) -> None:
        if self._waiting_for is None:
            logger.warning("%s failed (%r): waiting for the broker, not ready meanwhile", what, exc)
        self._waiting_for = what
        self.metrics.broker_waits.labels(what).inc()
        if self.health:
            self.health.beat()  # alive, only waiting
            self.health.ready = False

    # -- one mini-batch -----------------------------------------------------------------------------
    def process(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Score a polled batch and complete it (publish, snapshot, commit), or rewind it."""
        batch = {tp: messages for tp, messages in records.items() if messages and tp not in self._arrived}
        first = {tp: (self._held[tp] if tp in self._held else messages)[0].offset for tp, messages in batch.items()}
        self._unpublished = True
        self.delivery.begin()
        try:
            outcomes = {tp: self._process_partition(tp, messages) for tp, messages in batch.items()}
            self.delivery.published([f for o in outcomes.values() for f in o.sends], "anomalies and dead letters")
            self._unpublished = False
            commits = {tp: OffsetAndMetadata(batch[tp][-1].offset + 1, "", -1) for tp, o in outcomes.items()
                       if not o.held and tp not in self._rebuild_until}  # never move a commit back mid-rebuild
            snapshots = [self.delivery.send(out) for out in (self._snapshot(tp) for tp in commits) if out]
            committed = self.delivery.commit(commits, snapshots)
        except BatchFailed as exc:
            logger.warning("batch failed (%s): processing it again from the last committed state", exc)
            self.delivery.abort()
            self._rewind(first)
            self._unpublished = False
            self.stats.failed_batches += 1
            self.metrics.failed_batches.inc()
            return
        if committed:
            self._committed.update({tp: om.offset for tp, om in commits.items()})
        else:  # published but the commit was refused: a snapshot tells the next owner what is out
            saved = [self.delivery.send(out) for out in (self._snapshot(tp, force=True) for tp in commits) if out]
            self.delivery.published(saved, "snapshots")
        for tp, outcome in outcomes.items():
            self._count(tp, outcome)
        self.stats.batches += 1
        self._update_lag()

    def _count(self, tp: TopicPartition, o: Outcome) -> None:
        s, m = self.stats, self.metrics
        s.events += o.events
        s.anomalies += o.anomalies
        s.dead_letters += len(o.dead)
        s.rebuilt += o.rebuilt
        m.events.labels(tp.topic).inc(o.scored)
        m.anomalies.labels(tp.topic).inc(o.anomalies)
        m.alerts.labels(tp.topic).inc(o.alerts)
        m.episodes_closed.labels(tp.topic).inc(o.closed)
        m.regime_changes.labels(tp.topic).inc(o.regime_changes)
        m.rebuilt_events.labels(tp.topic).inc(o.rebuilt)
        for kind in o.dead:
            m.dead_letters.labels(tp.topic, kind).inc()

    def _update_lag(self) -> None:
        """Lag of every owned partition, not only those in the last batch."""
        for tp in self._assigned:
            highwater, done = self._consumer.highwater(tp), self._committed.get(tp)
            if highwater is not None and done is not None:
                self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - done))

    def _process_partition(self, tp: TopicPartition, messages: list[Any]) -> Outcome:
        state = self.states.get(tp)
        if state is not None:  # the others were published before a restart, by the state restored here
            messages = [m for m in messages if m.offset >= state.next_offset]
        parser = self._parser(tp)
        if parser.channels is None:
            messages = self._hold_until_channels_known(tp, parser, messages)
            if parser.channels is None:
                return Outcome(held=True)
        out = Outcome()
        if not messages:
            return out
        live_from = self._rebuild_until.get(tp, -1)
        good, good_msgs = [], []
        for msg in messages:
            try:
                good.append(parser.parse(msg.value, msg.key, msg.timestamp))
                good_msgs.append(msg)
            except EventError as exc:
                if msg.offset >= live_from:  # an earlier owner dead-lettered the others
                    logger.warning("dead letter %s/%d/%d: %s", msg.topic, msg.partition, msg.offset, exc.reason)
                    out.sends.append(self.delivery.send(dead_letter(self.settings.kafka.dlq_topic, msg, exc)))
                    out.dead.append(exc.kind)
        out.rebuilt = sum(1 for m in messages if m.offset < live_from)
        if messages[-1].offset + 1 >= live_from >= 0:
            del self._rebuild_until[tp]
            logger.info("rebuilt the detector of %s-%d up to offset %d: publishing again", tp.topic, tp.partition,
                        live_from)
        out.events = len(messages) - out.rebuilt
        out.scored = sum(1 for m in good_msgs if m.offset >= live_from)
        state = self._state(tp, parser)
        state.next_offset = messages[-1].offset + 1
        if not good:
            return out
        det = state.detector
        res = det.process_many(np.array([g.values for g in good]), np.array([g.key for g in good]))
        live = np.array([m.offset >= live_from for m in good_msgs])
        flagged = np.flatnonzero(res.is_anomaly & live)
        closed = [i for i in res.closed if live[i]]
        rows = np.union1d(np.union1d(flagged, np.flatnonzero(res.regime_change & live)), closed).astype(np.int64)
        output = self.settings.kafka.output_topic
        for i, record in zip(rows.tolist(), result_records(res, det.config.names, rows)):
            out.sends.append(self.delivery.send(anomaly_record(output, good_msgs[i], good[i], record,
                                                               det.config.names)))
        out.anomalies, out.alerts, out.closed = len(flagged), int((res.alert & live).sum()), len(closed)
        out.regime_changes = int((res.regime_change & live).sum())
        labels = (tp.topic, str(tp.partition))
        self.metrics.open_episodes.labels(*labels).set(len(det.episodes.open))
        if not np.isnan(res.threshold[-1]):
            self.metrics.threshold.labels(*labels).set(float(res.threshold[-1]))
        if det.last_loss is not None:
            self.metrics.loss.labels(*labels).set(det.last_loss)
        return out

    # -- the channels of a partition ------------------------------------------------------------------
    def _parser(self, tp: TopicPartition) -> EventParser:
        parser = self.parsers.get(tp)
        if parser is None:
            e = self.settings.events
            parser = self.parsers[tp] = EventParser(e.channels, e.allow_unknown_channels, e.max_event_bytes)
        return parser

    def _hold_until_channels_known(self, tp: TopicPartition, parser: EventParser, messages: list[Any]) -> list[Any]:
        """Without configured channels, a partition's first ``schema_sample`` valid events fix them
        by majority. The events before that decision are held, uncommitted, and processed with it;
        a restart holds and decides the same ones again."""
        held = self._held.setdefault(tp, [])
        held.extend(messages)
        e = self.settings.events
        channels, valid = infer_channels([m.value for m in held], e.max_event_bytes)
        if valid < e.schema_sample and len(held) < SCHEMA_PATIENCE * e.schema_sample:
            if len(held) == len(messages):  # the first of them
                logger.info("%s-%d: holding events until %d valid ones fix the channels (or set AE_EVENTS__CHANNELS)",
                            tp.topic, tp.partition, e.schema_sample)
            return []
        del self._held[tp]
        if channels is not None:
            parser.channels = channels
            logger.info("%s-%d: channels %s, from %d of its first valid events", tp.topic, tp.partition,
                        ", ".join(channels), valid)
        return held  # without a valid event among them, every one is dead-lettered

    # -- partition state ----------------------------------------------------------------------------
    def _state(self, tp: TopicPartition, parser: EventParser) -> PartitionState:
        state = self.states.get(tp)
        if state is None:
            channels = parser.channels
            assert channels is not None, "a partition's channels are known before its first valid event"
            try:
                config = self.settings.detector.to_config(len(channels), channels)
            except SettingsError as exc:
                raise SettingsError(f"the events of {tp.topic}-{tp.partition} carry {len(channels)} channel(s) "
                                    f"({', '.join(channels)}): {exc}") from exc
            state = self.states[tp] = PartitionState(AutoencoderDetector(config))
        return state

    def _adopt(self, tp: TopicPartition, snap: Snapshot) -> None:
        det = snap.detector
        parser = self._parser(tp)
        if parser.channels is not None and parser.channels != det.config.names:
            raise WorkerError(f"{snap.source} was built for channels {', '.join(det.config.names)}, "
                              f"not {', '.join(parser.channels)}: move it away to start afresh")
        parser.channels = det.config.names
        wanted = self.settings.detector.to_config(len(det.config.names), det.config.names)
        changed = sorted(k for k, v in wanted.to_dict().items() if det.config.to_dict()[k] != v)
        if changed:
            logger.warning("%s keeps its saved detector settings; these differ from the current ones: %s",
                           snap.source, ", ".join(changed))
        self.states[tp] = PartitionState(det, snap.next_offset, time.monotonic())
        logger.info("restored detector of %s-%d from %s (%d events seen, next offset %d)", tp.topic, tp.partition,
                    snap.source, det.events_seen, snap.next_offset)

    def _plan_rebuild(self, tp: TopicPartition, committed: int | None) -> None:
        """Seek back to where the restored state (or the partition) begins when the group's committed
        offset is ahead of it: those events rebuild the detector and publish nothing."""
        if committed is None:
            return
        state = self.states.get(tp)
        start = state.next_offset if state is not None else self._consumer.beginning_offsets([tp])[tp]
        if start < committed:
            self._consumer.seek(tp, start)
            self._rebuild_until[tp] = committed
            logger.info("rebuilding the detector of %s-%d from offset %d up to the committed %d, publishing nothing",
                        tp.topic, tp.partition, start, committed)

    def _snapshot(self, tp: TopicPartition, force: bool = False) -> Any:
        """A partition's snapshot record when due (or forced), else None."""
        state = self.states.get(tp)
        if state is None or self._unpublished or tp in self._rebuild_until:
            # After a failed batch the detectors are ahead of what was published, and mid-rebuild
            # they are behind the committed offset: keep the last snapshot.
            return None
        if not force and time.monotonic() - state.saved_at < self.settings.service.snapshot_interval:
            return None
        return self.store.snapshot(tp, state)

    def _save_all(self) -> None:
        """Snapshot every partition at shutdown (in a transaction of its own in exactly-once mode)."""
        outgoing = [out for out in (self._snapshot(tp, force=True) for tp in list(self.states)) if out]
        if outgoing:
            self.delivery.begin()
            sends = [self.delivery.send(out) for out in outgoing]
            self.delivery.commit({}, sends)

    def take(self, tps: list[TopicPartition]) -> None:
        """Partitions assigned to this worker. kafka-python forbids blocking calls in its rebalance
        callbacks, so they are paused here and restored by the loop (:meth:`_restore_arrived`)."""
        arrived = [tp for tp in tps if tp not in self.states]
        self._arrived |= set(arrived)
        if arrived:
            self._consumer.pause(*arrived)
        self._assigned |= set(tps)
        self.metrics.assigned.set(len(self._assigned))

    def _restore_arrived(self) -> None:
        """Restore the latest snapshots of newly assigned (or rewound) partitions, plan their
        rebuilds, and let them be fetched. Nothing changes unless every broker call succeeds."""
        arrived = sorted(self._arrived & self._assigned, key=lambda tp: (tp.topic, tp.partition))
        committed = {tp: self._consumer.committed(tp) for tp in arrived}
        snapshots = self.store.latest(arrived, committed, self.settings.kafka.exactly_once)
        for tp in arrived:
            self.states.pop(tp, None)
            self.parsers.pop(tp, None)
            if tp in snapshots:
                self._adopt(tp, snapshots[tp])
            self._plan_rebuild(tp, committed[tp])
            self._consumer.resume(tp)
        self._arrived.clear()

    def _rewind(self, first: dict[TopicPartition, int]) -> None:
        """A batch failed: forget what it did to its partitions' detectors, fetch it again and
        restore those partitions as if just assigned (snapshot, then rebuild up to the commit)."""
        for tp, offset in first.items():
            self.states.pop(tp, None)
            self._held.pop(tp, None)
            self._rebuild_until.pop(tp, None)
            if tp in self._assigned:
                self._consumer.seek(tp, offset)
                self._consumer.pause(tp)
                self._arrived.add(tp)

    def release(self, tps: list[TopicPartition]) -> None:
        """Partitions revoked: every batch was completed before this poll, so let go. At least once,
        a snapshot is sent (not flushed: no blocking call in a rebalance callback; a next owner that
        reads an older one rebuilds from it to the same state). Exactly once, sends belong in a
        transaction: the next owner rebuilds from the last snapshot."""
        for tp in tps:
            if not self.settings.kafka.exactly_once:
                out = self._snapshot(tp, force=True)
                if out is not None:
                    self.delivery.send(out)
            for table in (self.states, self.parsers, self._committed, self._rebuild_until, self._held):
                table.pop(tp, None)
            self._arrived.discard(tp)
        self._assigned -= set(tps)
        self.metrics.assigned.set(len(self._assigned))


class _Rebalance(ConsumerRebalanceListener):
    """Batches are completed before the next poll, so a revoked partition has nothing in flight."""

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

