"""A cluster that refuses the worker: one clear line naming why, instead of waiting for good.

Three refusals do not mend by waiting, and kafka-python shows none of them to its caller: a
bootstrap against a broker that rejects the SASL password, or whose certificate the CA file does
not vouch for, just times out ("Unable to bootstrap"), and the worker would wait for a broker that
answers every time. :func:`connection_failures` collects what kafka-python logs about each failed
connection while a probe runs, and :func:`refusal` turns an authentication or certificate failure
among them into an :class:`AccessError`. A missing ACL comes back as an ``AuthorizationError``
from whichever request needed it; :func:`explain` names the user, the operation and the resource,
and the command an administrator runs to grant it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from kafka.errors import (
    AuthorizationError,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailedError,
)

from worker.errors import WorkerError
from worker.settings import KafkaSettings

# kafka-python's loggers that report a failed connection with its exception among the arguments
CONNECTION_LOGGERS = ("kafka.net.connection", "kafka.net.manager")
UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed")


class AccessError(WorkerError):
    """The cluster refuses this worker's credentials, certificate trust or permissions."""


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failures: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.failures.extend(a for a in args if isinstance(a, BaseException))


@contextlib.contextmanager
def connection_failures() -> Iterator[list[BaseException]]:
    """The exceptions kafka-python logs for connections that failed meanwhile (these loggers stay
    quiet otherwise: their lines repeat many times a second through an outage)."""
    collector = _Collector()
    loggers = [logging.getLogger(name) for name in CONNECTION_LOGGERS]
    saved = [(log.level, log.propagate) for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
        log.propagate = False
        log.addHandler(collector)
    try:
        yield collector.failures
    finally:
        for log, (level, propagate) in zip(loggers, saved):
            log.removeHandler(collector)
            log.setLevel(level)
            log.propagate = propagate


def refusal(failures: list[BaseException], k: KafkaSettings) -> AccessError | None:
    """An authentication or certificate failure among ``failures``, as one line; None otherwise."""
    for exc in failures:
        if isinstance(exc, SaslAuthenticationFailedError):
            reason = str(exc).split(": ", 1)[-1]
            return AccessError(f"the broker at {k.bootstrap_servers} refused SASL {k.sasl_mechanism} authentication "
                               f"as user {k.sasl_username!r} ({reason}): check AE_KAFKA__SASL_USERNAME and "
                               "AE_KAFKA__SASL_PASSWORD")
        if any(mark in str(exc) for mark in UNTRUSTED):
            trusted = f"the CA file {k.ssl_cafile}" if k.ssl_cafile else "the system's CA certificates"
            reason = str(exc).split("] ", 1)[-1]
            return AccessError(f"the broker at {k.bootstrap_servers} presented a TLS certificate that {trusted} does "
                               f"not vouch for ({reason}): set AE_KAFKA__SSL_CAFILE to the CA that signed it")
    return None


def explain(exc: BaseException, k: KafkaSettings) -> str | None:
    """One line for an authorization failure anywhere in ``exc``'s chain: who may not do what to
    which resource, and the grant; None when the chain holds none."""
    found = _authorization_error(exc)
    if found is None:
        return None
    user = k.sasl_username or "the client's principal"
    if isinstance(found, GroupAuthorizationFailedError):
        what, grant = f"READ group {k.group_id!r}", f"--operation Read --operation Describe --group {k.group_id}"
    elif isinstance(found, TransactionalIdAuthorizationFailedError):
        prefix = f"{k.group_id}-"
        what = f"WRITE transactional ids prefixed {prefix!r} (exactly once)"
        grant = (f"--operation Write --operation Describe --transactional-id {prefix} "
                 "--resource-pattern-type prefixed")
    elif isinstance(found, ClusterAuthorizationFailedError):
        what = "the cluster operation it asked for (CREATE topics with --create-topics, or IDEMPOTENT_WRITE)"
        grant = "--operation Create --topic <each topic>  (or create the topics beforehand)"
    elif isinstance(found, TopicAuthorizationFailedError):
        what, grant = _topic_operation(str(found), k)
    else:
        what, grant = f"an operation ({type(found).__name__})", "<the operation> --<resource> <name>"
    return (f"Kafka refused user {user!r}: it may not {what} ({type(found).__name__}); an administrator grants it "
            f"with kafka-acls.sh --add --allow-principal User:{user} {grant}")


def _topic_operation(message: str, k: KafkaSettings) -> tuple[str, str]:
    changelog = k.changelog_topic or f"{k.group_id}-state"
    for topic in k.input_topics:
        if topic in message:
            return f"READ topic {topic!r}", f"--operation Read --operation Describe --topic {topic}"
    for topic in (k.output_topic, k.dlq_topic):
        if topic in message:
            return f"WRITE topic {topic!r}", f"--operation Write --operation Describe --topic {topic}"
    if changelog in message:
        return (f"READ and WRITE its state changelog {changelog!r}",
                f"--operation Read --operation Write --operation Describe --topic {changelog}")
    return "use one of its topics", "--operation <Read|Write> --operation Describe --topic <topic>"


def _authorization_error(exc: BaseException | None) -> AuthorizationError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AuthorizationError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
