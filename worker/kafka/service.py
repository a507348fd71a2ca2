"""``ae-worker run``: the consumer-group loop on a real broker.

Per mini-batch, in a fixed order: poll -> score and decide per partition -> send anomalies and
dead letters -> snapshot partitions (when due) -> commit the consumed offsets, at least once or in
one transaction (:mod:`worker.kafka.delivery`). A failed batch is aborted and its partitions rewound to
the last committed state; a broker outage is waited out (``/readyz`` answers 503 meanwhile). A
newly assigned partition restores its latest snapshot and re-processes, publishing nothing, the
events between that snapshot and the committed offset (:mod:`worker.kafka.partition_state`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.structs import OffsetAndMetadata

from worker.errors import WorkerError
from worker.kafka.delivery import BatchFailed, PublishError, make_delivery, patiently, retriable
from worker.kafka.events import EventError, readings_matrix
from worker.kafka.kafka_io import (
    PRODUCER_BATCH_BYTES,
    check_codecs,
    ensure_topics,
    make_consumer,
    message_limits,
    rejoin_if_orphaned,
    subscribe,
    wait_for_broker,
)
from worker.kafka.outputs import (
    DEFAULT_LIMITS,
    KAFKA_DEFAULT_MESSAGE_BYTES,
    MIN_TOPIC_BYTES,
    RecordLimits,
    anomaly_record,
    dead_letter,
)
from worker.kafka.partition_state import SNAPSHOT_MAX_BYTES, PartitionState
from worker.kafka.partitions import Partitions
from worker.observability import HealthServer, Metrics
from worker.results import result_records
from worker.settings import Settings

__all__ = ["PublishError", "RunStats", "Worker"]
logger = logging.getLogger(__name__)
T = TypeVar("T")
BROKER_CHECK_S = 2.0  # while idle, how often the broker is asked whether it is there


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
    keys_evicted: int = 0
    dead: list[str] = field(default_factory=list)  # kinds of the dead letters
    held: bool = False  # held back until the partition's channels are known: not committed
    commit_at: int | None = None  # after the last event processed (short of the poll's end while some are held)


class Worker:
    """Consumes sensor events, publishes anomalies; one detector per assigned partition."""

    def __init__(self, settings: Settings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.metrics = Metrics()
        self.partitions = Partitions(settings, self.metrics)
        self.stats = RunStats()
        self.batch_latencies: list[float] = []
        self._consumer: Any = None
        self.delivery: Any = None
        self.health: HealthServer | None = None
        self._unpublished = False  # a batch's outputs are not yet confirmed by the broker
        self._in_batch = False  # a batch was begun and neither completed nor rewound
        self._waiting_for: str | None = None  # the broker call an outage is holding up
        self._idle_since = time.monotonic()  # idle_timeout counts from here
        self._checked_at = 0.0  # when _check_broker last asked
        self.output_limits = self.dlq_limits = DEFAULT_LIMITS  # (fitted to the topics at start-up)

    def assignment(self) -> set[TopicPartition]:
        """Partitions this worker owns now (empty before it joined its group)."""
        return set(self.partitions.assigned)

    @property
    def states(self) -> dict[TopicPartition, PartitionState]:
        """The detector state of each owned partition."""
        return self.partitions.states

    @property
    def ready(self) -> bool:
        """Partitions assigned and the broker answering (``/readyz``)."""
        return bool(self.partitions.assigned) and self._waiting_for is None

    # -- life cycle -------------------------------------------------------------------------------
    def run(self) -> RunStats:
        """Wait for the broker (serving /healthz meanwhile), then consume until stopped."""
        k, svc = self.settings.kafka, self.settings.service
        check_codecs()
        # series that alert rules watch with increase(): present at 0 from the start, so that their
        # first occurrence counts as an increase (a series that appears at 1 shows none)
        self.metrics.broker_waits.labels("starting")
        for topic in k.input_topics:
            for reason in ("corrupt", "signature", "foreign", "offset"):
                self.metrics.snapshots_refused.labels(topic, reason)
        if svc.metrics_port:
            self.health = HealthServer(self.metrics, svc.metrics_host, svc.metrics_port,
                                       stale_after=k.max_poll_interval_ms / 1000).start()
        try:
            if not wait_for_broker(k, self.stop, svc.start_timeout, self._starting):
                logger.info("stopped while waiting for the broker")
                return self.stats
            # (each step waits out a broker that cannot be reached: one of a cluster's brokers that
            # just died is still in the metadata, and a request sent to it fails until the
            # controller moves its leaderships)
            self._retry("checking the topics", lambda: ensure_topics(
                k, [*k.input_topics, k.output_topic, k.dlq_topic], k.create_topics))
            self._retry("checking the state changelog", self.partitions.store.ensure_topic)
            batch_bytes = self._size_records_for_topics()
            self._consumer = self.partitions.consumer = make_consumer(k)
            self.delivery = make_delivery(k, self._consumer, self._retry, self._waiting,
                                          max_request_size=SNAPSHOT_MAX_BYTES, batch_size=batch_bytes)
            self._retry("subscribing", lambda: subscribe(self._consumer, list(k.input_topics), _Rebalance(self)))
            logger.info("consuming %s as group %r (%s); anomalies -> %s, dead letters -> %s",
                        ",".join(k.input_topics), k.group_id, "exactly once" if k.exactly_once else "at least once",
                        k.output_topic, k.dlq_topic)
            self._loop()
        finally:
            self._shutdown()
        return self.stats

    def _loop(self) -> None:
        try:
            self._loop_until_stopped()
        except (UnsupportedCodecError, CorruptRecordError) as exc:
            # kafka-python could not decode a fetched batch (a codec it lacks, a CRC that fails):
            # nothing of it can be read or dead-lettered, so stop before committing past it.
            owned = ", ".join(sorted(f"{tp.topic}-{tp.partition}" for tp in self.partitions.assigned))
            raise WorkerError(f"a record batch of one of {owned} cannot be decoded: {exc}; nothing past it "
                              "was committed") from exc
        except KafkaError as exc:
            if not (self.stop.is_set() and retriable(exc)):
                raise
            logger.info("stopping while the broker is away (%r): nothing of the current batch was committed", exc)

    def _loop_until_stopped(self) -> None:
        k, svc = self.settings.kafka, self.settings.service
        self._idle_since = time.monotonic()
        while not self.stop.is_set():
            budget = k.max_poll_records
            if svc.max_events is not None:
                budget = min(budget, svc.max_events - self.stats.events)
                if budget <= 0:
                    logger.info("processed max_events=%d: stopping", svc.max_events)
                    return
            if self.partitions.arrived:
                self._retry("restoring partition state", self.partitions.restore_arrived)
            polled_at = time.perf_counter()
            records = self._retry("polling", lambda n=budget: self._consumer.poll(timeout_ms=k.poll_timeout_ms,
                                                                                   max_records=n))
            if rejoin_if_orphaned(self._consumer):
                self.metrics.orphaned_joins.inc()
            if self.health:
                self.health.beat()
                self.health.ready = self.ready
            if not any(records.values()):
                if not self.partitions.assigned:
                    self._idle_since = time.monotonic()  # waiting for partitions (a rebalance) is not idleness
                    continue
                self._check_broker()
                if svc.idle_timeout is not None and time.monotonic() - self._idle_since > svc.idle_timeout:
                    logger.info("no event for %.1f s (idle_timeout): stopping", svc.idle_timeout)
                    return
                continue
            self._idle_since = time.monotonic()
            started = time.perf_counter()
            self.metrics.stage_seconds.labels("poll").inc(started - polled_at)  # (a poll that brought events)
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
        if self.delivery is not None and self.states and not self._in_batch:
            # (after an error mid-batch the detectors may be ahead of what was committed: the
            # next owner restores the last snapshot and rebuilds instead)
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

    def _size_records_for_topics(self) -> int:
        """Fit anomaly records and dead letters to what their topics take (``max.message.bytes``),
        or refuse to start when that is too little; returns the producer's batch size, which
        must fit them too (many small records go out in one batch)."""
        k = self.settings.kafka
        limits = self._retry("reading max.message.bytes", lambda: message_limits(k, [k.output_topic, k.dlq_topic]))
        for topic, limit in limits.items():
            if limit < MIN_TOPIC_BYTES:
                raise WorkerError(f"topic {topic!r} takes records of at most {limit} bytes (max.message.bytes); "
                                  f"anomaly records and dead letters need at least {MIN_TOPIC_BYTES}: raise it")
        self.output_limits = RecordLimits.for_topic(limits.get(k.output_topic, KAFKA_DEFAULT_MESSAGE_BYTES))
        self.dlq_limits = RecordLimits.for_topic(limits.get(k.dlq_topic, KAFKA_DEFAULT_MESSAGE_BYTES))
        return min(PRODUCER_BATCH_BYTES, min(limits.values(), default=KAFKA_DEFAULT_MESSAGE_BYTES) // 2)

    # -- riding out the broker's absence ------------------------------------------------------------
    def _check_broker(self) -> None:
        """While no event comes, ask the broker for the end offsets every few seconds: an empty poll
        looks the same whether the topic is quiet or the broker is gone. Keeps the lag current too."""
        now = time.monotonic()
        if now - self._checked_at < BROKER_CHECK_S:
            return
        self._checked_at = now
        owned = sorted(self.partitions.assigned, key=lambda tp: (tp.topic, tp.partition))
        ends = self._retry("checking the broker",
                           lambda: self._consumer.end_offsets(owned, timeout_ms=int(BROKER_CHECK_S * 1000)))
        for tp, end in ends.items():
            self._set_lag(tp, end)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        result = patiently(what, call, self.stop, self._waiting)
        if self._waiting_for is not None:
            logger.info("the broker answers again (%s): carrying on", what)
            self._waiting_for = None
            # idle_timeout counts from the broker's return: the backoff before this answer was
            # waiting too, and the events fed meanwhile have yet to be fetched
            self._idle_since = time.monotonic()
        return result

    def _starting(self, what: str, exc: BaseException) -> None:
        """Waiting for the broker (at start-up wait_for_broker logs each attempt): counted, alive, not ready."""
        self.metrics.broker_waits.labels(what).inc()
        if self.health:
            self.health.beat()
            self.health.ready = False

    def _waiting(self, what: str, exc: BaseException) -> None:
        if self._waiting_for is None:
            logger.warning("%s failed (%r): waiting for the broker, not ready meanwhile", what, exc)
        self._waiting_for = what
        self._idle_since = time.monotonic()  # waiting for the broker is not idleness either
        self._starting(what, exc)

    # -- one mini-batch -----------------------------------------------------------------------------
    def process(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Score a polled batch and complete it (publish, snapshot, commit), or rewind it."""
        parts = self.partitions
        batch = {tp: messages for tp, messages in records.items() if messages and tp not in parts.arrived}
        first = {tp: parts.first_offset(tp, messages) for tp, messages in batch.items()}
        self._unpublished = self._in_batch = True
        self.delivery.begin()
        try:
            outcomes = {tp: self._process_partition(tp, messages) for tp, messages in batch.items()}
            with self._stage("publish"):
                self.delivery.published([f for o in outcomes.values() for f in o.sends], "anomalies and dead letters")
            self._unpublished = False
            commits = {tp: OffsetAndMetadata(batch[tp][-1].offset + 1 if o.commit_at is None else o.commit_at, "", -1)
                       for tp, o in outcomes.items()
                       if not o.held and tp not in parts.rebuild_until}  # never move a commit back mid-rebuild
            with self._stage("commit"):
                snapshots = [self.delivery.send(out) for out in (self._snapshot(tp) for tp in commits) if out]
                committed = self.delivery.commit(commits, snapshots)
        except BatchFailed as exc:
            logger.warning("batch failed (%s): processing it again from the last committed state", exc)
            self.delivery.abort()
            parts.rewind(first)
            self._unpublished = self._in_batch = False
            self.stats.failed_batches += 1
            self.metrics.failed_batches.inc()
            return
        if committed:
            parts.committed.update({tp: om.offset for tp, om in commits.items()})
        else:  # published but the commit was refused: a snapshot tells the next owner what is out
            saved = [self.delivery.send(out) for out in (self._snapshot(tp, force=True) for tp in commits) if out]
            self.delivery.published(saved, "snapshots")
        self._in_batch = False
        for tp, outcome in outcomes.items():
            self._count(tp, outcome)
        self.stats.batches += 1
        self._update_lag()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("batch %d: %s", self.stats.batches, "; ".join(
                f"{tp.topic}-{tp.partition} offsets {batch[tp][0].offset}-{batch[tp][-1].offset}: {o.scored} scored, "
                f"{o.rebuilt} rebuilt, {o.anomalies} anomalies, {len(o.dead)} dead letters"
                + (" (held for the schema)" if o.held else "") for tp, o in outcomes.items()))

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
        m.keys_evicted.labels(tp.topic).inc(o.keys_evicted)
        m.rebuilt_events.labels(tp.topic).inc(o.rebuilt)
        for kind in o.dead:
            m.dead_letters.labels(tp.topic, kind).inc()

    def _update_lag(self) -> None:
        """Lag of every owned partition, not only those in the last batch."""
        for tp in self.partitions.assigned:
            self._set_lag(tp, self._consumer.highwater(tp))

    def _set_lag(self, tp: TopicPartition, end: int | None) -> None:
        done = self.partitions.committed.get(tp)
        if end is not None and done is not None:
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, end - done))

    def _process_partition(self, tp: TopicPartition, messages: list[Any]) -> Outcome:
        state = self.states.get(tp)
        if state is not None:  # the others were published before a restart, by the state restored here
            messages = [m for m in messages if m.offset >= state.next_offset]
        ready = self.partitions.hold_until_channels_known(tp, messages)
        if ready is None:
            return Outcome(held=True)
        messages = ready
        out = Outcome()
        if not messages:
            return out
        out.commit_at = messages[-1].offset + 1
        parser = self.partitions.parser(tp)
        live_from = self.partitions.live_from(tp, messages)
        good, good_msgs = [], []
        with self._stage("parse"):
            parsed = parser.parse_many([m.value for m in messages], [m.key for m in messages],
                                       [m.timestamp for m in messages])
        for msg, event in zip(messages, parsed):
            if not isinstance(event, EventError):
                good.append(event)
                good_msgs.append(msg)
            elif msg.offset >= live_from:  # an earlier owner dead-lettered the others
                logger.warning("dead letter %s/%d/%d: %s", msg.topic, msg.partition, msg.offset, event.reason)
                out.sends.append(self.delivery.send(dead_letter(self.settings.kafka.dlq_topic, msg, event,
                                                                self.dlq_limits)))
                out.dead.append(event.kind)
        out.rebuilt = sum(1 for m in messages if m.offset < live_from)
        out.events = len(messages) - out.rebuilt
        out.scored = sum(1 for m in good_msgs if m.offset >= live_from)
        if parser.channels is None:  # malformed events before the channels are known: no detector yet
            return out
        state = self.partitions.state(tp)
        state.next_offset = out.commit_at
        if not good:
            return out
        det = state.detector
        evicted_before = det.keys.evicted
        with self._stage("detector"):
            res = det.process_many(readings_matrix(good), np.array([g.key for g in good]))
        live = np.array([m.offset >= live_from for m in good_msgs])
        flagged = np.flatnonzero(res.is_anomaly & live)
        closed = [i for i in res.closed if live[i]]
        rows = np.union1d(np.union1d(flagged, np.flatnonzero(res.regime_change & live)), closed).astype(np.int64)
        output = self.settings.kafka.output_topic
        with self._stage("outputs"):
            for i, record in zip(rows.tolist(), result_records(res, det.config.names, rows)):
                out.sends.append(self.delivery.send(anomaly_record(output, good_msgs[i], good[i], record,
                                                                   det.config.names, self.output_limits)))
        out.anomalies, out.alerts, out.closed = len(flagged), int((res.alert & live).sum()), len(closed)
        out.regime_changes = int((res.regime_change & live).sum())
        out.keys_evicted = det.keys.evicted - evicted_before
        labels = (tp.topic, str(tp.partition))
        self.metrics.open_episodes.labels(*labels).set(len(det.episodes.open))
        self.metrics.keys.labels(*labels).set(len(det.keys))
        if not np.isnan(res.threshold[-1]):
            self.metrics.threshold.labels(*labels).set(float(res.threshold[-1]))
        if det.last_loss is not None:
            self.metrics.loss.labels(*labels).set(det.last_loss)
        return out

    @contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        """Adds the block's time to ``ae_stage_seconds{stage=name}``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.stage_seconds.labels(name).inc(time.perf_counter() - started)

    # -- partition state ----------------------------------------------------------------------------
    def _snapshot(self, tp: TopicPartition, force: bool = False) -> Any:
        """A partition's snapshot record when due, unless the batch's outputs are not confirmed
        (the detector would be ahead of what was published)."""
        return None if self._unpublished else self.partitions.snapshot(tp, force)

    def _save_all(self) -> None:
        """Snapshot every partition at shutdown (in a transaction of its own in exactly-once mode)."""
        outgoing = [out for out in (self._snapshot(tp, force=True) for tp in list(self.states)) if out]
        if outgoing:
            self.delivery.begin()
            sends = [self.delivery.send(out) for out in outgoing]
            self.delivery.commit({}, sends)

    def take(self, tps: list[TopicPartition]) -> None:
        self.partitions.take(tps)

    def release(self, tps: list[TopicPartition]) -> None:
        """Every batch was completed before this poll. Snapshots are sent, not flushed (no blocking
        call in a rebalance callback): a next owner that reads an older one rebuilds from it."""
        for out in self.partitions.release(tps, save=not self._unpublished):
            self.delivery.send(out)


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

