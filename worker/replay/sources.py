"""Recordings (CSV or JSON lines) read as ordered batches of validated readings."""

from __future__ import annotations

import csv
import gzip
import itertools
import logging
import math
import os
import shutil
import sys
import tempfile
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import orjson

from ae_core.config import MAX_ABS_READING
from worker.errors import InputFormatError
from worker.settings import InputSettings

logger = logging.getLogger(__name__)


@dataclass
class RowBatch:
    """Consecutive rows of a recording: the good ones as numbers, the bad ones with a reason."""

    index: np.ndarray
    values: np.ndarray
    times: list[Any] | None
    keys: list[str] | None
    labels: np.ndarray | None
    bad: list[tuple[int, str, str]] = field(default_factory=list)


def parse_reading(value: Any) -> float:
    """A finite float, or ValueError saying why not."""
    if isinstance(value, bool) or value is None or value == "":
        raise ValueError("missing value" if value in (None, "") else f"not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"not finite: {value!r}")
    if abs(number) > MAX_ABS_READING:
        raise ValueError(f"out of range (|x| > {MAX_ABS_READING:g}): {value!r}")
    return number


# Column names taken as the time and as labels (case-insensitive) unless flags say otherwise.
TIME_NAMES = ("timestamp", "time", "datetime", "date", "ts")
LABEL_NAMES = ("anomaly", "is_anomaly", "label", "changepoint")


def looks_like_time(value: Any) -> bool:
    """An ISO-8601 date-time string ('2026-01-04T11:20:00Z', '2026-01-04 11:20:00')."""
    if not isinstance(value, str) or len(value) < 10 or "-" not in value[:8]:
        return False
    try:
        datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def infer_columns(header: list[str], first: list[Any], options: InputSettings) -> InputSettings:
    """Fill in what the flags left unset: the time column (named like one, or holding ISO-8601
    date-times) and the label column (named like one: anomaly, is_anomaly, label, changepoint).
    Every label-named column is left out of the model, whichever one evaluation uses."""
    o = options
    updates: dict[str, Any] = {}
    taken = {o.time_column, o.key_column, o.label_column, *o.ignore_columns}
    if o.time_column is None:
        named = [h for h in header if h.lower() in TIME_NAMES and h not in taken]
        valued = [h for h, v in zip(header, first) if looks_like_time(v) and h not in taken]
        if named or valued:
            updates["time_column"] = (named or valued)[0]
    labels = sorted((h for h in header if h.lower() in LABEL_NAMES and h not in taken - {None}),
                    key=lambda h: LABEL_NAMES.index(h.lower()))
    if o.label_column is None and labels:
        updates["label_column"] = labels[0]
    left_out = [h for h in labels if h != updates.get("label_column", o.label_column)]
    if left_out:
        updates["ignore_columns"] = (*o.ignore_columns, *left_out)
    return o.model_copy(update=updates) if updates else o


# A recording wider than this is refused at its header (a 4096-row chunk of it is ~330 MB of
# floats), and a CSV field longer than this makes its row unreadable (the csv module's own default
# limit, 128 KiB, would end the run on one long line).
MAX_COLUMNS = 10_000
MAX_FIELD_CHARS = 16 * 1024 * 1024
STDIN = "-"
CSV_SEPARATORS = (",", ";", "\t", "|")
csv.field_size_limit(MAX_FIELD_CHARS)


class Row(NamedTuple):
    """One row of a recording: its fields (None when the row cannot be read into the header's
    columns), its raw text, and why it cannot be read (None: the generic reason)."""

    index: int
    fields: dict[str, Any] | None
    raw: str
    problem: str | None = None


class Recording:
    """Iterates a CSV or JSONL file in :class:`RowBatch` chunks, in file order.

    The channels are every column except the time, key, label and ignored ones; in JSON lines
    in the input topic's event schema (``{"key", "timestamp", "readings": {...}}``) they are the
    ``readings`` and ``key`` is the device. ``-`` reads standard input (spooled to a temporary
    file) and a ``.gz`` file is read through gzip. A row with a missing, non-numeric, NaN,
    infinite or out-of-range reading, or one the csv module cannot read (an unterminated quote,
    a field over 16 MiB), becomes a ``bad`` entry with its reason and never reaches the detector;
    reading goes on at the next line.
    """

    def __init__(self, path: str | Path, options: InputSettings, chunk_size: int = 4096) -> None:
        self.name = "stdin" if str(path) == STDIN else Path(path).name
        self.path = _spool_stdin(self) if str(path) == STDIN else Path(path)
        self.chunk_size = chunk_size
        self.compressed = _is_gzip(self.path)
        plain = self.path.with_suffix("") if self.path.suffix.lower() == ".gz" else self.path
        suffix = plain.suffix.lower()
        self.is_jsonl = suffix in (".jsonl", ".ndjson", ".json") or (
            suffix not in (".csv", ".tsv", ".txt") and self._first_char() == "{")
        self.event_schema = False  # set by _head: JSON lines whose readings are an object
        header, first, sep = self._head(options.sep)
        if self.event_schema and options.key_column is None and "key" in header:
            options = options.model_copy(update={"key_column": "key"})
        self.options = infer_columns(header, first, options.model_copy(update={"sep": sep}))
        self.channels = self._discover_channels(header)

    def describe(self) -> str:
        """One line: which columns are the time, key and labels, and how many are readings."""
        o = self.options
        parts = [f"time {o.time_column!r}" if o.time_column else "no time column"]
        if o.sep != "," and not self.is_jsonl:
            parts.insert(0, f"separator {o.sep!r}")
        if self.event_schema:
            parts.insert(0, "events with readings")
        if o.key_column:
            parts.append(f"key {o.key_column!r}")
        unused = [c for c in o.ignore_columns if c.lower() in LABEL_NAMES]
        if o.label_column:
            parts.append(f"labels {o.label_column!r}")
        if unused:
            parts.append(f"also left out: {', '.join(map(repr, unused))}")
        return (f"{self.name}: {', '.join(parts)}; {len(self.channels)} reading column(s) "
                "(set --time-column, --label-column, --ignore-columns to change)")

    def _discover_channels(self, header: list[str]) -> tuple[str, ...]:
        o = self.options
        special = {o.time_column, o.key_column, o.label_column, *o.ignore_columns} - {None}
        missing = sorted(name for name in special if name not in header)
        if missing:
            raise InputFormatError(f"{self.name}: no column named {missing[0]!r} (columns: "
                                   f"{_shortened(header)})")
        names = self._readings if self.event_schema else header
        channels = tuple(name for name in names if name not in special)
        if not channels:
            raise InputFormatError(f"{self.name}: no reading columns left after time/key/label/ignored")
        return channels

    def _open(self) -> IO[str]:
        """The recording as text (a BOM before the header is dropped), through gzip when compressed."""
        if self.compressed:
            return gzip.open(self.path, "rt", newline="", encoding="utf-8-sig")
        return self.path.open(newline="", encoding="utf-8-sig")

    def _first_char(self) -> str:
        try:
            with self._open() as fh:
                return fh.read(4096).lstrip()[:1]
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise InputFormatError(f"{self.name}: cannot read: {exc}") from exc

    def _head(self, sep: str | None) -> tuple[list[str], list[Any], str]:
        """The column names, the first row's values (empty when there is no row) and the CSV
        separator: unless given, a comma, else the first of a semicolon, tab or bar the header holds."""
        try:
            with self._open() as fh:
                if self.is_jsonl:
                    return self._jsonl_head(fh)
                line = fh.readline(MAX_FIELD_CHARS)
                if sep is None:
                    sep = next((other for other in CSV_SEPARATORS if other in line), ",")
                if line.count(sep) >= MAX_COLUMNS:
                    raise InputFormatError(f"{self.name}: the header has {line.count(sep) + 1} or more columns; "
                                           f"at most {MAX_COLUMNS} are read")
                reader = csv.reader(itertools.chain([line], fh), delimiter=sep)
                header = next(reader, None)
                row = next(reader, None) or []
        except csv.Error as exc:
            raise InputFormatError(f"{self.name}: cannot read the header and first row: {exc}") from exc
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise InputFormatError(f"{self.name}: cannot read: {exc}") from exc
        if not header:
            raise InputFormatError(f"{self.name}: empty recording")
        return [h.strip() for h in header], row, sep

    def _jsonl_head(self, fh: IO[str]) -> tuple[list[str], list[Any], str]:
        for line in fh:
            if line.strip():
                try:
                    first = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputFormatError(f"{self.name}: the first line is not JSON: {exc}") from exc
                if not isinstance(first, dict):
                    raise InputFormatError(f"{self.name}: first line is not a JSON object")
                readings = first.get("readings")
                if isinstance(readings, dict):  # the input topic's event schema
                    self.event_schema = True
                    self._readings = list(readings)
                    first = _flat(first)
                if len(first) > MAX_COLUMNS:
                    raise InputFormatError(f"{self.name}: the first event has {len(first)} fields; at most "
                                           f"{MAX_COLUMNS} are read")
                return list(first), list(first.values()), ","
        raise InputFormatError(f"{self.name}: empty recording")

    def records(self) -> Iterator[Row]:
        """Every row in file order: its index, fields (None when unreadable) and raw text."""
        with self._open() as fh:
            if self.is_jsonl:
                yield from self._jsonl_rows(fh)
                return
            rows = _csv_rows(fh, self.options.sep)
            header = _header(rows)
            for index, (row, raw, problem) in enumerate(rows):
                yield self._csv_record(index, row, raw, problem, header)

    def _jsonl_rows(self, fh: IO[str]) -> Iterator[Row]:
        index = 0
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if self.event_schema and isinstance(obj, dict) and isinstance(obj.get("readings"), dict):
                obj = _flat(obj)
            yield Row(index, obj if isinstance(obj, dict) else None, line.rstrip("\n"))
            index += 1

    def batches(self) -> Iterator[RowBatch]:
        if not self.is_jsonl:
            yield from self._csv_batches()
            return
        chunk: list[Row] = []
        for record in self.records():
            chunk.append(record)
            if len(chunk) >= self.chunk_size:
                yield self._to_batch_row_by_row(chunk)
                chunk = []
        if chunk:
            yield self._to_batch_row_by_row(chunk)

    def _csv_batches(self) -> Iterator[RowBatch]:
        """Chunks of lines, numbers parsed by NumPy's C reader; a chunk it cannot take whole (a
        bad row) goes through the csv module row by row, which finds and explains the bad rows.
        From the first quote character on, the csv module reads the rest (a quoted field may
        hold the separator or a line break)."""
        sep = self.options.sep
        with self._open() as fh:
            header_line = fh.readline(MAX_FIELD_CHARS)
            if '"' in header_line:
                rows = _csv_rows(itertools.chain([header_line], fh), sep)
                header = _header(rows)
                yield from self._csv_reader_batches(rows, header)
                return
            header = [h.strip() for h in next(csv.reader([header_line], delimiter=sep))]
            first = 0
            while lines := list(itertools.islice(fh, self.chunk_size)):
                if any('"' in line for line in lines):
                    rows = _csv_rows(itertools.chain(lines, fh), sep, line=first + 2)  # (one line a row so far)
                    yield from self._csv_reader_batches(rows, header, first)
                    return
                fast = self._csv_lines_fast_path(first, lines, header)
                if fast is None:
                    yield from self._csv_reader_batches(_csv_rows(lines, sep, line=first + 2), header, first)
                else:
                    yield fast
                first += len(lines)

    def _csv_reader_batches(self, rows: Iterator[tuple[list[str] | None, str, str | None]], header: list[str],
                            first: int = 0) -> Iterator[RowBatch]:
        chunk: list[tuple[list[str] | None, str, str | None]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= self.chunk_size:
                yield self._csv_chunk(first, chunk, header)
                first, chunk = first + len(chunk), []
        if chunk:
            yield self._csv_chunk(first, chunk, header)

    def _csv_lines_fast_path(self, first: int, lines: list[str], header: list[str]) -> RowBatch | None:
        """Unquoted lines, every one with the header's column count and valid numbers, in one
        ``np.loadtxt`` (C; the same correctly rounded values as ``float``); None otherwise."""
        o, sep = self.options, self.options.sep
        text = [line.rstrip("\r\n") for line in lines]
        if any(line.count(sep) != len(header) - 1 for line in text):
            return None
        where = {name: i for i, name in enumerate(header)}
        numeric = [where[c] for c in self.channels] + ([where[o.label_column]] if o.label_column else [])
        try:
            parsed = np.loadtxt(text, dtype=np.float64, delimiter=sep, usecols=numeric, comments=None,
                                quotechar=None, ndmin=2)
        except ValueError:
            return None
        if len(parsed) != len(lines):  # loadtxt passes over blank lines
            return None
        values, labels = (parsed[:, :-1], parsed[:, -1]) if o.label_column else (parsed, None)
        return self._whole_chunk(first, values, labels, lambda name: _column(text, sep, where[name]))

    def _csv_chunk(self, first: int, rows: list[tuple[list[str] | None, str, str | None]],
                   header: list[str]) -> RowBatch:
        """One numpy conversion when every row is well-formed and numeric; else row by row."""
        fields = [row for row, _, _ in rows]
        if all(f is not None for f in fields):
            fast = self._csv_fast_path(first, fields, header)  # type: ignore[arg-type]
            if fast is not None:
                return fast
        return self._to_batch_row_by_row([self._csv_record(first + i, row, raw, problem, header)
                                          for i, (row, raw, problem) in enumerate(rows)])

    def _csv_record(self, index: int, row: list[str] | None, raw: str, problem: str | None,
                    header: list[str]) -> Row:
        """The row's fields, or None when it does not split into the header's columns or the csv
        module could not read it (``problem`` says why)."""
        if row is None or len(row) != len(header):
            return Row(index, None, raw, problem)
        return Row(index, dict(zip(header, row)), raw)

    def _csv_fast_path(self, first: int, rows: list[list[str]], header: list[str]) -> RowBatch | None:
        o = self.options
        if any(len(row) != len(header) for row in rows):
            return None
        where = {name: i for i, name in enumerate(header)}
        pick = [where[c] for c in self.channels]
        try:
            values = np.array([[row[i] for i in pick] for row in rows], dtype=np.float64)
            labels = (np.array([row[where[o.label_column]] for row in rows], dtype=np.float64)
                      if o.label_column else None)
        except ValueError:
            return None
        return self._whole_chunk(first, values.reshape(len(rows), len(self.channels)), labels,
                                 lambda name: [row[where[name]] for row in rows])

    def _whole_chunk(self, first: int, values: np.ndarray, labels: np.ndarray | None,
                     column: Callable[[str], list[str]]) -> RowBatch | None:
        """A chunk parsed in one go (both fast paths), if every reading is in range and every
        label finite; None sends it row by row. ``column(name)`` gives a text column's values."""
        o = self.options
        if not (np.abs(values) <= MAX_ABS_READING).all() or (labels is not None and not np.isfinite(labels).all()):
            return None
        return RowBatch(
            index=np.arange(first, first + len(values), dtype=np.int64),
            values=np.ascontiguousarray(values),
            times=column(o.time_column) if o.time_column else None,
            keys=column(o.key_column) if o.key_column else None,
            labels=labels,
        )

    def _to_batch_row_by_row(self, chunk: list[Row]) -> RowBatch:
        o = self.options
        good_index, values, times, keys, labels, bad = [], [], [], [], [], []
        for index, fields, raw, problem in chunk:
            if fields is None:
                bad.append((index, problem or "malformed row: cannot split into the header's columns", raw))
                continue
            try:
                row = [_reading(fields, name) for name in self.channels]
                label = _reading(fields, o.label_column) if o.label_column else None
            except ValueError as exc:
                bad.append((index, str(exc), raw))
                continue
            good_index.append(index)
            values.append(row)
            labels.append(label)
            if o.time_column:
                times.append(fields.get(o.time_column))
            if o.key_column:
                keys.append(str(fields.get(o.key_column)))
        return RowBatch(
            index=np.asarray(good_index, dtype=np.int64),
            values=np.asarray(values, dtype=np.float64).reshape(len(values), len(self.channels)),
            times=times if o.time_column else None,
            keys=keys if o.key_column else None,
            labels=np.asarray(labels, dtype=np.float64) if o.label_column else None,
            bad=bad,
        )


class _Lines:
    """Lines handed to a csv reader, kept since the current row began so that a row the reader
    cannot finish can be given back (all but its first line) to a new reader."""

    def __init__(self, lines: Iterable[str]) -> None:
        self.source = iter(lines)
        self.given_back: deque[str] = deque()
        self.row: list[str] = []
        self.number = 0  # physical lines handed out, net of those given back

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.given_back.popleft() if self.given_back else next(self.source)
        self.row.append(line)
        self.number += 1
        return line

    def give_back_after_first(self) -> None:
        rest = self.row[1:]
        self.given_back.extendleft(reversed(rest))
        self.number -= len(rest)


def _csv_rows(lines: Iterable[str], sep: str, line: int = 1) -> Iterator[tuple[list[str] | None, str, str | None]]:
    """``(fields, raw text, problem)`` per CSV row, the first being the header. A row the csv
    module cannot read (a quote never closed, which would swallow the rest of the file; a stray
    character after a closing quote; a field over MAX_FIELD_CHARS) comes as ``(None, its first
    line, why)`` and reading goes on at the line after that first line: no row is lost silently.
    ``line`` is the file's line number of the first of ``lines``."""
    feed = _Lines(lines)
    feed.number = line - 1
    reader = csv.reader(feed, delimiter=sep, strict=True)
    while True:
        feed.row = []
        starts_at = feed.number + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            first_line = feed.row[0].rstrip("\r\n") if feed.row else ""
            feed.give_back_after_first()
            reader = csv.reader(feed, delimiter=sep, strict=True)
            why = "a quote opened in it is never closed" if "unexpected end of data" in str(exc) else str(exc)
            yield None, first_line[:4096], f"unreadable CSV row at line {starts_at}: {why} (read on from the next line)"
            continue
        yield row, sep.join(row), None


def _header(rows: Iterator[tuple[list[str] | None, str, str | None]]) -> list[str]:
    """The column names: the first row of :func:`_csv_rows`, stripped."""
    return [h.strip() for h in next(rows)[0] or []]


def _spool_stdin(owner: object) -> Path:
    """Standard input copied to a temporary file (a recording is read more than once); the file
    goes when ``owner`` does."""
    fd, name = tempfile.mkstemp(prefix="ae-worker-stdin-")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    weakref.finalize(owner, os.unlink, name)
    return Path(name)


def _is_gzip(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    """An event of the input topic's schema as one row: its fields beside its readings."""
    return {**{k: v for k, v in event.items() if k != "readings"}, **event["readings"]}


def _shortened(names: list[str], at_most: int = 20) -> str:
    shown = ", ".join(names[:at_most])
    return shown + (f", ... ({len(names)} columns)" if len(names) > at_most else "")


def _column(lines: list[str], sep: str, i: int) -> list[str]:
    """Field ``i`` of unquoted lines, splitting no further than it."""
    return [line.split(sep, i + 1)[i] for line in lines]


def _reading(fields: dict[str, Any], name: str) -> float:
    if name not in fields:
        raise ValueError(f"missing field {name!r}")
    try:
        return parse_reading(fields[name])
    except ValueError as exc:
        raise ValueError(f"column {name!r}: {exc}") from None
