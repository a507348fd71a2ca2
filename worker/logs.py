"""Logging set-up; only the CLI calls it."""

from __future__ import annotations

import logging
import sys

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with any ``extra={...}`` fields."""

    _plain = set(vars(logging.makeLogRecord({})))

    def format(self, record: logging.LogRecord) -> str:
        payload = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
                   "msg": record.getMessage()}
        payload.update({k: v for k, v in vars(record).items() if k not in self._plain and k != "message"})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line with every secret (a password, a signing key) replaced by ``***``: whatever
    a library logs, at any level, a configuration dump included, no secret reaches the log.
    Secrets shorter than 4 characters are not looked for (they would blank common words)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__(sys.stderr)
        self.secrets = tuple(s for s in secrets if len(s) >= 4)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def configure_logging(level: str, as_json: bool, secrets: tuple[str, ...] = ()) -> None:
    handler = RedactingHandler(secrets)
    handler.setFormatter(JsonFormatter() if as_json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python's own lines: its connection and metadata-refresh errors repeat many times a
    # second while a broker is away (the worker says so itself, once per retry), and it warns
    # that a batch's work "blocks the event loop" (it does, by design: a batch is scored between
    # polls). Errors only, and none of those, unless DEBUG is asked for, which shows its warnings
    # too (never its own debug chatter).
    debug = logging.getLevelName(level) <= logging.DEBUG
    logging.getLogger("kafka").setLevel(logging.WARNING if debug else logging.ERROR)
    for chatty in ("kafka.net", "kafka.cluster"):  # connection and metadata-refresh errors
        logging.getLogger(chatty).setLevel(logging.WARNING if debug else logging.CRITICAL)
