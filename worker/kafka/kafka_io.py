"""Building kafka-python clients from settings, and making sure the topics exist."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kafka.codec
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from worker.errors import WorkerError
from worker.kafka.access import connection_failures, refusal
from worker.settings import KafkaSettings

logger = logging.getLogger(__name__)
PRODUCER_BATCH_BYTES = 256 * 1024  # per partition; larger records still go out alone
BOOTSTRAP_PROBE_MS = 1500  # one attempt to reach a bootstrap server at start-up
START_RETRY_S = 2.0  # pause between attempts (a stop request ends the wait at once)


class TopicMissingError(WorkerError):
    """A topic the worker needs does not exist and creating it was not asked for."""


class BrokerUnavailableError(WorkerError):
    """No bootstrap server answered within the start-up timeout."""


def check_codecs() -> None:
    """Every compression a producer may use must be decodable, or the first compressed batch
    would stop a partition for good: fail at start-up naming the missing library instead."""
    missing = [name for name, has in (("snappy", kafka.codec.has_snappy), ("lz4", kafka.codec.has_lz4),
                                      ("zstd", kafka.codec.has_zstd)) if not has()]
    if missing:
        raise WorkerError(f"kafka-python cannot decode {', '.join(missing)} compressed records in this "
                          "environment: install 'kafka-python[lz4,snappy,zstd]' (ae-worker's own dependencies)")


def wait_for_broker(k: KafkaSettings, stop: threading.Event, timeout: float | None,
                    waiting: Callable[[str, BaseException], None] | None = None) -> bool:
    """Until a bootstrap server answers: one log line per attempt (every few seconds), ``waiting``
    told each time. False when ``stop`` was set meanwhile; :class:`BrokerUnavailableError` after
    ``timeout`` seconds (None: no limit). Errors that waiting cannot mend are raised at once: bad
    settings, and (:class:`~worker.kafka.access.AccessError`) a refused password or an untrusted certificate."""
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            with connection_failures() as failures:
                try:
                    KafkaAdminClient(**connection_config(k), bootstrap_timeout_ms=BOOTSTRAP_PROBE_MS).close()
                except KafkaError:
                    refused = refusal(failures, k)
                    if refused is not None:
                        raise refused from None
                    raise
            if attempt > 1:
                logger.info("the broker at %s answers: starting", k.bootstrap_servers)
            return True
        except KafkaError as exc:
            if not exc.retriable:
                raise
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise BrokerUnavailableError(f"no Kafka broker answered at {k.bootstrap_servers} within "
                                             f"{timeout:g} s (AE_SERVICE__START_TIMEOUT): {exc}") from None
            limit = f"{timeout:g} s" if timeout is not None else "no limit"
            logger.warning("waiting for the broker at %s (attempt %d, %.0f s of %s): %s", k.bootstrap_servers,
                           attempt, now - started, limit, exc)
            if waiting is not None:
                waiting("starting", exc)
            stop.wait(START_RETRY_S if deadline is None else min(START_RETRY_S, deadline - now))
    return False


def connection_config(k: KafkaSettings) -> dict[str, Any]:
    """Bootstrap and security settings shared by every client; secrets unwrapped only here."""
    config: dict[str, Any] = {"bootstrap_servers": k.bootstrap_servers.split(","),
                              "security_protocol": k.security_protocol, "client_id": k.client_id,
                              # after an outage, reconnect within 2 s (kafka-python backs off up to 30 s)
                              "reconnect_backoff_max_ms": 2000}
    if k.sasl_mechanism:
        config["sasl_mechanism"] = k.sasl_mechanism
        config["sasl_plain_username"] = k.sasl_username
        config["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(k, name):
            config[name] = getattr(k, name)
    if k.ssl_password:
        config["ssl_password"] = k.ssl_password.get_secret_value()
    return config


def make_consumer(k: KafkaSettings, **overrides: Any) -> KafkaConsumer:
    config = {
        **connection_config(k),
        "group_id": k.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": k.auto_offset_reset,
        "max_poll_records": k.max_poll_records,
        "session_timeout_ms": k.session_timeout_ms,
        "heartbeat_interval_ms": max(1000, k.session_timeout_ms // 3),
        "max_poll_interval_ms": k.max_poll_interval_ms,
        # A topic created just before the group forms can be missing from the metadata a member
        # assigns with; the group then assigns it to no one until the next metadata refresh (seen
        # in CI: a worker idle for its whole test). Refreshing every 10 s, not every 5 minutes,
        # bounds that wait; the cost is one small request per 10 s.
        "metadata_max_age_ms": 10_000,
        # exactly-once reads see only committed input (and never the aborted records of an upstream)
        "isolation_level": "read_committed" if k.exactly_once else "read_uncommitted",
    }
    config.update(overrides)
    if k.instance_id and config["group_id"]:
        config["group_instance_id"] = k.instance_id
    return KafkaConsumer(**config)


def subscribe(consumer: KafkaConsumer, topics: list[str], listener: Any) -> None:
    """Subscribe once the consumer's metadata holds the topics' partitions. Joining without them
    (a topic created just before) assigns nothing, and the second join that follows is the one
    kafka-python can orphan (see :func:`rejoin_if_orphaned`)."""
    for topic in topics:
        consumer.partitions_for_topic(topic)
    consumer.subscribe(topics, listener=listener)


def rejoin_if_orphaned(consumer: KafkaConsumer) -> bool:
    """Mend a group join that kafka-python (3.0.12) completed but never applied; call between polls.

    A join that a metadata change started (the leader's assignment no longer matches the topics'
    partitions) stops being needed the moment the leader assigns anew, while it is still in
    flight. When a short poll times out before it completes, the next poll sees no join needed
    and never collects the finished one: its assignment is never applied and the consumer sits in
    the group with no partitions and no heartbeat for good (seen in CI: a worker idle for minutes,
    through a broker restart; reproduced by polls of 1 ms right after a topic's creation, 20 of
    20 times). Outside a poll, a finished join left behind is such an orphan (a join collected or
    failed is cleared at once): asking for a rejoin lets the next poll join again. True if it did.
    Only private attributes show that state; without them (another kafka-python) nothing is done.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None or not getattr(task, "is_done", False) or coordinator.need_rejoin():
        return False
    logger.warning("the consumer's last group join was never applied (a kafka-python race): joining again")
    coordinator.request_rejoin()
    return True


def make_producer(k: KafkaSettings, **overrides: Any) -> KafkaProducer:
    # acks=all and idempotence: a flushed anomaly is durable before its input offset is committed.
    # Sends are retried through an outage for delivery_timeout_ms (kafka-python's default, 120 s).
    # A batch's records go out at its flush, in one produce request per partition when they fit
    # PRODUCER_BATCH_BYTES; with kafka-python's 16 KiB a burst of anomalies was cut into dozens
    # of requests, each its own round trip (bench/kafka_throughput.py: per published anomaly
    # ~80 -> ~26 us).
    config = {**connection_config(k), "acks": "all", "enable_idempotence": True, "linger_ms": 5,
              "batch_size": PRODUCER_BATCH_BYTES}
    return KafkaProducer(**{**config, **overrides})


def replication(k: KafkaSettings) -> int:
    """The replication factor to create topics with; -1 asks for the broker's default (KIP-464)."""
    return k.replication_factor if k.replication_factor is not None else -1


def ensure_topics(k: KafkaSettings, topics: list[str], create: bool) -> None:
    """Fail naming the first missing topic, or create the missing ones when ``create``."""
    admin = KafkaAdminClient(**connection_config(k))
    try:
        existing = set(admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return
        if not create:
            hidden = (f", or user {k.sasl_username!r} may not DESCRIBE it (an ACL)" if k.sasl_username else "")
            raise TopicMissingError(f"topic {missing[0]!r} does not exist on {k.bootstrap_servers}{hidden} "
                                    "(create it, or pass --create-topics / AE_KAFKA__CREATE_TOPICS=true)")
        new = [NewTopic(t, k.topic_partitions, replication(k)) for t in missing]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass  # another worker of the group created it first
        logger.info("created topics %s (%d partitions, replication %s)", missing, k.topic_partitions,
                    k.replication_factor or "the broker's default")
    finally:
        admin.close()


def message_limits(k: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """Each topic's ``max.message.bytes`` (the effective value: its own, or the broker's default).
    A topic the cluster will not describe (an ACL without DESCRIBE_CONFIGS) is left out, with a
    warning: the worker then sizes its records for Kafka's default."""
    admin = KafkaAdminClient(**connection_config(k))
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs=["max.message.bytes"]) for t in dict.fromkeys(topics)])
    except KafkaError as exc:
        if getattr(exc, "retriable", False):
            raise
        logger.warning("cannot read max.message.bytes of %s (%r): records are sized for Kafka's default (1 MB)",
                       ", ".join(topics), exc)
        return {}
    finally:
        admin.close()
    if not isinstance(described, dict):  # (kafka-python 3.0 answers a dict by resource type)
        logger.warning("cannot read max.message.bytes of %s (an answer of type %s): records are sized for "
                       "Kafka's default (1 MB)", ", ".join(topics), type(described).__name__)
        return {}
    limits = {}
    for topic, configs in described.get("topic", {}).items():
        value = configs.get("max.message.bytes", {}).get("value")
        if value is not None:
            limits[topic] = int(value)
    return limits
