"""The event schema on the input topic, validated with pydantic, and what becomes of a bad event."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from itertools import chain
from typing import Annotated, Any, NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from ae_core.config import MAX_ABS_READING

Reading = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=-MAX_ABS_READING, le=MAX_ABS_READING)]
NO_TIMESTAMP = -1  # Kafka's record timestamp when a record has none
UTF8_BOM = b"\xef\xbb\xbf"  # some producers (Windows tools) put it before the JSON
MAX_KEY_BYTES = 256  # device ids longer than this are refused, as a JSON field or a record key
# parse_many's fast path leaves to parse() any event with fields of its own and this many
# brackets: they might nest too deep (pydantic's JSON parser refuses nesting past 200 levels,
# orjson takes up to 1024).
FAST_MAX_BRACKETS = 150


class SensorEvent(BaseModel):
    """One reading of one device.

    ``{"key": "pump-7", "timestamp": "2026-01-01T00:00:00Z", "readings": {"pressure": 1.2}}``;
    ``readings`` may also be a list in the configured channel order. ``key`` falls back to the
    Kafka record key and ``timestamp`` to the record timestamp. Other fields are kept as-is.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    key: str | None = Field(None, min_length=1, max_length=MAX_KEY_BYTES)
    timestamp: datetime | None = None
    readings: dict[str, Reading] | list[Reading]


class ParsedEvent(NamedTuple):  # (a frozen dataclass took 0.9 us to make, more than decoding)
    key: str
    values: list[float]
    event_time: datetime | None
    record_ts_ms: int | None

    @property
    def timestamp(self) -> str | None:
        """ISO 8601, from the event or else the record; formatted only when asked (anomalies).
        None when neither has one, or the record's is beyond what ISO 8601 years can say."""
        return self.event_time.isoformat() if self.event_time else _ms_to_iso(self.record_ts_ms)

    @property
    def unreadable_record_time(self) -> int | None:
        """The record timestamp in epoch milliseconds when it stands for the event time but no
        date-time can show it (before year 1 or after 9999): kept as it came, beside a null."""
        if self.event_time is not None or self.record_ts_ms is None or self.record_ts_ms == NO_TIMESTAMP:
            return None
        return self.record_ts_ms if _ms_to_iso(self.record_ts_ms) is None else None


class EventError(ValueError):
    """Why an event goes to the dead-letter topic; ``kind`` is a short label for metrics."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


_NUMBER_TYPES = {float, int}
_TIMESTAMPS = TypeAdapter(list[datetime | None])  # SensorEvent.timestamp's type, for a whole poll at once


class EventParser:
    """Bytes from Kafka to a validated vector in the detector's channel order."""

    def __init__(self, channels: tuple[str, ...] | None, allow_unknown: bool, max_bytes: int) -> None:
        self.channels = channels
        # A list of readings is read in the configured order only: channels found from the first
        # events' names give no order a list producer could have agreed to.
        self.lists_allowed = channels is not None
        self.allow_unknown = allow_unknown
        self.max_bytes = max_bytes

    def parse(self, value: bytes | None, record_key: bytes | None, record_ts_ms: int | None) -> ParsedEvent:
        if value is None:
            raise EventError("empty", "empty message (tombstone)")
        if len(value) > self.max_bytes:
            raise EventError("oversize", f"event of {len(value)} bytes exceeds max_event_bytes={self.max_bytes}")
        try:
            event = SensorEvent.model_validate_json(value.removeprefix(UTF8_BOM))
        except ValidationError as exc:
            raise EventError(_kind(exc), _describe(exc)) from None
        if event.key is None and record_key is not None and len(record_key) > MAX_KEY_BYTES:
            raise EventError("oversize_key", f"record key of {len(record_key)} bytes exceeds {MAX_KEY_BYTES} "
                                             "(a device id that long would swell every anomaly record)")
        key = event.key or (record_key.decode("utf-8", "replace") if record_key else None)
        if key is None:
            raise EventError("missing_field", "no key: neither a 'key' field nor a record key")
        return ParsedEvent(key, self._vector(event.readings), event.timestamp, record_ts_ms)

    def parse_many(self, values: list[bytes | None], record_keys: list[bytes | None],
                   record_ts_ms: list[int | None]) -> list[ParsedEvent | EventError]:
        """:meth:`parse` of each record of a poll, each result a ParsedEvent or the EventError that
        parse would raise. Events of the usual shape (a JSON object whose ``readings`` cover the
        channels, a plain key) are decoded with orjson, and their readings' types and ranges and
        their timestamps checked in bulk; any other event, and any the bulk checks are unsure of,
        goes through :meth:`parse` itself, so every value and every dead-letter reason is the same."""
        results: list[ParsedEvent | EventError | None] = [None] * len(values)
        quick = [(i, *fields) for i, fields in enumerate(map(self._usual_shape, values, record_keys))
                 if fields is not None]  # (position, key, values, every reading, raw timestamp)
        flat = list(chain.from_iterable(q[3] for q in quick))
        kinds = set(map(type, flat))
        if not kinds <= _NUMBER_TYPES or (flat and max(map(abs, flat)) > MAX_ABS_READING):
            quick = [q for q in quick if set(map(type, q[3])) <= _NUMBER_TYPES
                     and max(map(abs, q[3])) <= MAX_ABS_READING]
        times: list[Any] = [q[4] for q in quick]
        if any(t is not None for t in times):
            try:
                times = _TIMESTAMPS.validate_json(orjson.dumps(times))
            except ValidationError:  # parse() says which and why
                quick = [q for q in quick if q[4] is None]
                times = [None] * len(quick)
        for (i, key, vector, _, _), event_time in zip(quick, times):
            if int in kinds:  # pydantic makes them floats (strict floats take JSON integers)
                vector = [float(v) for v in vector]
            results[i] = ParsedEvent(key, vector, event_time, record_ts_ms[i])
        for i, result in enumerate(results):
            if result is None:
                try:
                    results[i] = self.parse(values[i], record_keys[i], record_ts_ms[i])
                except EventError as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def _usual_shape(self, value: bytes | None, record_key: bytes | None) -> tuple[str, list[Any], Any, Any] | None:
        """(key, readings in channel order, every reading, raw timestamp) of an event parse()
        would accept unless a reading or the timestamp is wrong, else None. Errs towards None."""
        channels = self.channels
        if value is None or channels is None or len(value) > self.max_bytes:
            return None
        try:
            event = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if type(event) is not dict:
            return None
        readings, key = event.get("readings"), event.get("key")
        extra_fields = len(event) - ("readings" in event) - ("key" in event) - ("timestamp" in event)
        if extra_fields and value.count(b"[") + value.count(b"{") >= FAST_MAX_BRACKETS:
            return None  # (the readings hold numbers once checked, and the timestamp is validated by pydantic)
        if key is None:
            if not record_key or len(record_key) > MAX_KEY_BYTES:
                return None
            key = record_key.decode("utf-8", "replace")
        elif type(key) is not str or not 0 < len(key) <= MAX_KEY_BYTES:
            return None
        if type(readings) is dict:
            if len(readings) != len(channels) and (len(readings) < len(channels) or not self.allow_unknown):
                return None
            try:
                vector = [readings[c] for c in channels]
            except KeyError:
                return None
            every = vector if len(readings) == len(vector) else list(readings.values())
        elif type(readings) is list and len(readings) == len(channels) and readings and self.lists_allowed:
            vector = every = readings
        else:
            return None
        return key, vector, every, event.get("timestamp")

    def _vector(self, readings: dict[str, float] | list[float]) -> list[float]:
        if isinstance(readings, list):
            if self.channels is None or not self.lists_allowed:
                raise EventError("schema", "readings is a list but no channel names are configured "
                                           "(set AE_EVENTS__CHANNELS to the list's order)")
            if len(readings) != len(self.channels):
                raise EventError("schema", f"{len(readings)} readings for {len(self.channels)} channels")
            return readings
        if self.channels is None:
            raise EventError("schema", "the channels are not known yet (set AE_EVENTS__CHANNELS, or let the "
                                       "first events fix them: infer_channels)")
        try:
            values = [readings[c] for c in self.channels]
        except KeyError as exc:
            raise EventError("missing_field", f"missing channel {exc.args[0]!r}") from None
        if not self.allow_unknown and len(readings) > len(self.channels):
            unknown = sorted(set(readings) - set(self.channels))
            raise EventError("unknown_channel", f"unknown channel {unknown[0]!r}")
        return values


def readings_matrix(events: list[ParsedEvent]) -> np.ndarray:
    """The events' readings as one ``(N, channels)`` float array, from their flat sequence (0.33 us
    an event at 8 channels, where ``np.array`` on the list of lists takes 0.53)."""
    width = len(events[0].values) if events else 0
    flat = chain.from_iterable(event.values for event in events)
    return np.fromiter(flat, np.float64, count=len(events) * width).reshape(len(events), width)


def infer_channels(values: list[bytes | None], max_bytes: int,
                   limit: int | None = None) -> tuple[tuple[str, ...] | None, int]:
    """The channels a stream's events agree on, and how many valid events had a say.

    Of the valid events whose ``readings`` is a non-empty object (the first ``limit`` of them,
    when given), the key set most of them carry wins (a tie goes to the set seen first), in the
    order of its first event: one malformed early event cannot decide the schema of the valid
    ones after it. ``(None, 0)`` without such events.
    """
    votes: Counter[frozenset[str]] = Counter()
    order: dict[frozenset[str], tuple[str, ...]] = {}
    for value in values:
        if limit is not None and sum(votes.values()) >= limit:
            break
        if value is None or len(value) > max_bytes:
            continue
        try:
            readings = SensorEvent.model_validate_json(value.removeprefix(UTF8_BOM)).readings
        except ValidationError:
            continue
        if isinstance(readings, dict) and readings:
            names = frozenset(readings)
            votes[names] += 1
            order.setdefault(names, tuple(readings))
    if not votes:
        return None, 0
    best = max(votes.values())
    winner = next(names for names in order if votes[names] == best)  # dicts keep first-seen order
    return order[winner], sum(votes.values())


def _kind(exc: ValidationError) -> str:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return "not_json"
    if first["type"] == "missing":
        return "missing_field"
    if first["type"] == "finite_number":
        return "not_finite"
    if first["type"] in ("greater_than_equal", "less_than_equal"):
        return "out_of_range"
    return "wrong_type"


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    # Drop pydantic's union-branch labels such as 'dict[str,float]' from the location.
    where = ".".join(str(part) for part in first["loc"] if "[" not in str(part)) or "event"
    return f"{where}: {first['msg']}"


def _ms_to_iso(ms: int | None) -> str | None:
    """A record timestamp as ISO 8601; None without one, or outside years 1 to 9999."""
    if ms is None or ms == NO_TIMESTAMP:
        return None
    try:
        return (EPOCH + timedelta(milliseconds=ms)).isoformat()
    except OverflowError:
        return None


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
