"""How a mini-batch's outputs and consumed offsets reach the broker, and riding out its absence.

Two modes (``AE_KAFKA__EXACTLY_ONCE``):

* :class:`AtLeastOnce` (default): anomalies and dead letters are sent and flushed, then the
  partition snapshots, then the offsets are committed. A crash between the flush and the commit
  may publish a batch's records again (restored snapshots keep most of those from repeating).
* :class:`ExactlyOnce`: one Kafka transaction per batch holds the anomalies, dead letters,
  snapshots and the consumed offsets (``send_offsets_to_transaction`` with the consumer's group
  metadata, so a worker that lost its partitions is fenced). Readers with
  ``isolation.level=read_committed`` see every batch once or not at all.

A failed batch raises :class:`BatchFailed`: the worker aborts it and rewinds its partitions to
the last committed state. :func:`patiently` retries what a broker outage interrupts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.errors import WorkerError
from worker.kafka.kafka_io import make_producer
from worker.kafka.outputs import Outgoing
from worker.settings import KafkaSettings

logger = logging.getLogger(__name__)
T = TypeVar("T")
Retry = Callable[[str, Callable[[], Any]], Any]  # (what, call): call until it gets through
Waiting = Callable[[str, BaseException], None]  # (what, error): told while an outage holds things up

RETRY_FIRST_S = 0.5
RETRY_MAX_S = 8.0
SETTLE_S = 10.0  # after a failed flush, how long the sends get to resolve (for the error they carry)
FLUSH_CHECK_S = 1.0  # a broker call still waiting after this long is reported as an outage, then waited on
# A transactional call with no answer for this long is given up with its producer (see ExactlyOnce._waited).
TRANSACTION_STUCK_S = 60.0


class PublishError(WorkerError):
    """The broker refused a batch's records for good (not an outage); offsets were not committed."""


class BatchFailed(Exception):
    """A batch could not be completed (its transaction aborted, or its sends timed out): the worker
    rewinds its partitions to the last committed state and processes them again."""


def retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


def wait_until(done: Callable[[], bool], seconds: float) -> None:
    """Until ``done()`` or ``seconds`` have passed: for producer callbacks that run on the client's
    own thread (kafka-python 3.0 may fail a flush before they do)."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


def patiently(what: str, call: Callable[[], T], stop: threading.Event, waiting: Waiting) -> T:
    """``call()`` until it succeeds, waiting out retriable broker errors with exponential backoff
    (``waiting`` is told each time: readiness, metrics, a log line). Other errors, and any error
    once ``stop`` is set, are raised."""
    delay = RETRY_FIRST_S
    while True:
        try:
            return call()
        except KafkaError as exc:
            if not retriable(exc) or stop.is_set():
                raise
            waiting(what, exc)
            stop.wait(delay)
            delay = min(2 * delay, RETRY_MAX_S)


class _Delivery:
    """What both modes share: the producer, sends, and a flush that reports an outage it waits on."""

    exactly_once = False

    def __init__(self, k: KafkaSettings, consumer: Any, retry: Retry, waiting: Waiting, **producer: Any) -> None:
        self.consumer = consumer
        self.retry = retry
        self.waiting = waiting
        self.settings, self.producer_config = k, producer
        self.producer = make_producer(k, **producer)

    def send(self, out: Outgoing) -> Any:
        return self.producer.send(out.topic, key=out.key, value=out.value, headers=out.headers)

    def flush(self, what: str) -> None:
        """Block until every send is done; while the producer is still retrying (an outage) the
        worker is told each second, so it reports not ready. A flush error is raised."""
        while True:
            try:
                self.producer.flush(timeout=FLUSH_CHECK_S)
                return
            except KafkaTimeoutError as exc:
                self.waiting(f"publishing {what}", exc)


class AtLeastOnce(_Delivery):
    """Flush the outputs, then the snapshots, then commit the offsets."""

    def begin(self) -> None:
        """Nothing to open: each send stands alone."""

    def published(self, sends: list[Any], what: str) -> None:
        """Block until every send is acknowledged. The producer retries through an outage for
        ``delivery_timeout_ms``; a batch still unsent after that is failed and processed again."""
        try:
            self.flush(what)
        except KafkaError as exc:
            # kafka-python 3.0: after a fatal error (a record the topic refuses as too large) flush
            # may raise before the sends resolve; the first send's own error says what happened
            wait_until(lambda: all(f.is_done for f in sends), SETTLE_S)
            cause = next((f.exception for f in sends if f.failed()), exc)
            raise PublishError(f"flushing {what} failed, offsets not committed: {cause!r}") from exc
        failed = [f.exception for f in sends if f.failed()]
        if any(not retriable(e) for e in failed):
            first = next(e for e in failed if not retriable(e))
            raise PublishError(f"{len(failed)} {what} failed, offsets not committed: {first}") from first
        if failed:
            raise BatchFailed(f"{len(failed)} {what} failed: {failed[0]!r}")

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], snapshots: list[Any]) -> bool:
        """Flush the snapshots, commit the offsets (waiting out an outage). False when the group
        rebalanced meanwhile: the records are out, the next owner may repeat them."""
        if snapshots:
            self.published(snapshots, "snapshots")
        if not offsets:
            return True
        try:
            self.retry("committing offsets", lambda: self.consumer.commit(offsets))
        except CommitFailedError as exc:
            logger.warning("commit refused after a rebalance (%s): the batch's records are published; the "
                           "partitions' next owner restarts from the last commit", exc)
            return False
        return True

    def abort(self) -> None:
        """Sent records cannot be taken back: the batch is processed again (at least once)."""

    def close(self) -> None:
        self.producer.flush()
        self.producer.close(timeout=5)


class ExactlyOnce(_Delivery):
    """One transaction per batch: outputs, snapshots and consumed offsets commit together."""

    exactly_once = True

    def __init__(self, k: KafkaSettings, consumer: Any, retry: Retry, waiting: Waiting, **producer: Any) -> None:
        # A stable id (the instance id) lets a restarted worker abort its predecessor's open
        # transaction at once; without one, readers wait for transaction_timeout_ms after a crash.
        self.transactional_id = f"{k.group_id}-{k.instance_id or uuid.uuid4().hex}"
        super().__init__(k, consumer, retry, waiting, transactional_id=self.transactional_id,
                         transaction_timeout_ms=k.transaction_timeout_ms, **producer)
        self.retry("initialising transactions", self._init_transactions)
        self.open = False
        self.sends: list[Any] = []

    def _init_transactions(self) -> None:
        """kafka-python's ``init_transactions`` after a timeout keeps waiting on its first attempt,
        and an attempt begun while the transaction coordinator's broker had just died can wait
        for good (seen on a three-node cluster: a worker restarted right after a node's kill -9
        timed out, then waited minutes after the coordinator had moved). A timed-out attempt is
        dropped with its producer; the next one starts afresh (and finds the new coordinator)."""
        try:
            self.producer.init_transactions()
        except KafkaTimeoutError:
            self._new_producer()
            raise

    def _new_producer(self) -> None:
        """Drop the producer (closed on a daemon thread: a stuck one may not close at once) for a
        fresh one with the same transactional id."""
        stuck, self.producer = self.producer, make_producer(self.settings, **self.producer_config)
        threading.Thread(target=stuck.close, kwargs={"timeout": 0}, daemon=True).start()

    def begin(self) -> None:
        if not self.open:
            self._fatal_guard(self.producer.begin_transaction)
            self.open = True

    def published(self, sends: list[Any], what: str) -> None:
        """Nothing to wait for: the transaction's commit confirms every send (kept to tell, if it
        fails, a record the broker refuses for good from an outage)."""
        self.sends = sends

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], snapshots: list[Any]) -> bool:
        try:
            self.flush("the transaction's records")  # an outage is reported (not ready) while it waits
            if offsets:
                metadata = self.consumer.group_metadata()
                self._waited("committing offsets", lambda: self.producer.send_offsets_to_transaction(offsets, metadata))
            self._waited("committing the transaction", self.producer.commit_transaction)
        except WorkerError:
            raise
        except KafkaError as exc:  # the transaction stays open: the worker aborts it and rewinds
            refused = [f.exception for f in [*self.sends, *snapshots]
                       if f.is_done and f.failed() and not retriable(f.exception)]
            if refused:
                self.abort()
                raise PublishError(f"the broker refused a record, transaction aborted: {refused[0]!r}") from exc
            raise BatchFailed(f"committing the transaction: {exc!r}") from exc
        self.open = False
        self.sends = []
        return True

    def abort(self) -> None:
        """Abort the open transaction (waiting out an outage). If even that fails the worker stops:
        nothing of the batch was committed, so a restart loses and repeats nothing."""
        if not self.open:
            return
        try:
            # (a producer replaced meanwhile took the open transaction with it: nothing left to abort)
            self.retry("aborting the transaction",
                       lambda: self._waited("aborting the transaction", self.producer.abort_transaction)
                       if self.open else None)
        except KafkaError as exc:
            raise WorkerError(f"aborting the transaction failed ({exc!r}): restart the worker; the batch was "
                              "not committed") from exc
        self.open = False

    def close(self) -> None:
        if self.open:
            self.abort()
        self.producer.close(timeout=5)

    def _waited(self, what: str, call: Callable[[], T]) -> T:
        """``call`` on the transaction thread, reporting an outage each second while it waits.

        kafka-python's transactional calls wait without a timeout, and one whose transaction
        coordinator's broker was killed can wait for good: it keeps the coordinator it had found
        (seen on a three-node cluster, about one kill -9 in three of the node leading the
        anomalies topic: the worker stuck, SIGTERM unanswered). After ``TRANSACTION_STUCK_S`` the
        producer is replaced: the new one's initialisation (same transactional id) fences the old
        one and aborts its open transaction, and the batch is processed again (BatchFailed)."""
        # kafka-python's transactional calls wait without a timeout: each runs on a daemon thread
        # while this one reports each second that an outage is holding the batch up (a daemon, so
        # that a call stuck for good cannot keep the process from exiting)
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(self._fatal_guard(call))
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting thread)
                future.set_exception(exc)

        threading.Thread(target=run, name="ae-transaction", daemon=True).start()
        started = time.monotonic()
        while True:
            try:
                return future.result(timeout=FLUSH_CHECK_S)
            except FutureTimeout:
                if time.monotonic() - started > TRANSACTION_STUCK_S:
                    self._replace_producer(what)
                    raise KafkaTimeoutError(f"{what}: no answer for {TRANSACTION_STUCK_S:g} s") from None
                self.waiting(what, KafkaTimeoutError("no answer from the broker yet"))

    def _replace_producer(self, what: str) -> None:
        logger.warning("%s has had no answer for %g s: replacing the transactional producer (its open "
                       "transaction is aborted, the batch processed again)", what, TRANSACTION_STUCK_S)
        self._new_producer()
        self.open = False
        self.sends = []
        self.retry("initialising transactions", self._init_transactions)

    def _fatal_guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except (ProducerFencedError, TransactionalIdAuthorizationFailedError, AuthorizationError) as exc:
            raise WorkerError(f"transactional id {self.transactional_id!r} cannot write: {exc!r} (another worker "
                              "with the same AE_KAFKA__INSTANCE_ID is running, or an ACL is missing)") from exc


def make_delivery(k: KafkaSettings, consumer: Any, retry: Retry, waiting: Waiting,
                  **producer: Any) -> AtLeastOnce | ExactlyOnce:
    mode = ExactlyOnce if k.exactly_once else AtLeastOnce
    return mode(k, consumer, retry, waiting, **producer)
