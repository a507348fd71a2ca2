"""Recordings (CSV or JSON lines) read as ordered batches of validated readings."""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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


class Recording:
    """Iterates a CSV or JSONL file in :class:`RowBatch` chunks, in file order.

    The channels are every column except the time, key, label and ignored ones. A row with a
    missing, non-numeric, NaN, infinite or out-of-range reading becomes a ``bad`` entry with its
    reason and never reaches the detector.
    """

    def __init__(self, path: str | Path, options: InputSettings, chunk_size: int = 4096) -> None:
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.is_jsonl = self.path.suffix.lower() in (".jsonl", ".ndjson", ".json")
        header, first, sep = self._head(options.sep)
        self.options = infer_columns(header, first, options if sep == options.sep else
                                     options.model_copy(update={"sep": sep}))
        self.channels = self._discover_channels(header)

    def describe(self) -> str:
        """One line: which columns are the time, key and labels, and how many are readings."""
        o = self.options
        parts = [f"time {o.time_column!r}" if o.time_column else "no time column"]
        if o.sep != ",":
            parts.insert(0, f"separator {o.sep!r}")
        if o.key_column:
            parts.append(f"key {o.key_column!r}")
        unused = [c for c in o.ignore_columns if c.lower() in LABEL_NAMES]
        if o.label_column:
            parts.append(f"labels {o.label_column!r}")
        if unused:
            parts.append(f"also left out: {', '.join(map(repr, unused))}")
        return (f"{self.path.name}: {', '.join(parts)}; {len(self.channels)} reading column(s) "
                "(set --time-column, --label-column, --ignore-columns to change)")

    def _discover_channels(self, header: list[str]) -> tuple[str, ...]:
        o = self.options
        special = {o.time_column, o.key_column, o.label_column, *o.ignore_columns} - {None}
        missing = sorted(name for name in special if name not in header)
        if missing:
            raise InputFormatError(f"{self.path}: no column named {missing[0]!r} (columns: {', '.join(header)})")
        channels = tuple(name for name in header if name not in special)
        if not channels:
            raise InputFormatError(f"{self.path}: no reading columns left after time/key/label/ignored")
        return channels

    def _head(self, sep: str) -> tuple[list[str], list[Any], str]:
        """The column names, the first row's values (empty when there is no row) and the CSV
        separator: a header with no comma but a semicolon, tab or bar is read with that one."""
        try:
            with self.path.open(newline="", encoding="utf-8") as fh:
                if self.is_jsonl:
                    for line in fh:
                        if line.strip():
                            first = orjson.loads(line)
                            if not isinstance(first, dict):
                                raise InputFormatError(f"{self.path}: first line is not a JSON object")
                            return list(first), list(first.values()), sep
                    raise InputFormatError(f"{self.path}: empty recording")
                line = fh.readline()
                if sep == "," and "," not in line:
                    sep = next((other for other in (";", "\t", "|") if other in line), sep)
                reader = csv.reader(itertools.chain([line], fh), delimiter=sep)
                header = next(reader, None)
                row = next(reader, None) or []
        except (OSError, UnicodeDecodeError, orjson.JSONDecodeError) as exc:
            raise InputFormatError(f"{self.path}: cannot read: {exc}") from exc
        if not header:
            raise InputFormatError(f"{self.path}: empty recording")
        return [h.strip() for h in header], row, sep

    def records(self) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
        """``(row index, field mapping or None if unparseable, raw text)`` in file order."""
        with self.path.open(newline="", encoding="utf-8") as fh:
            if self.is_jsonl:
                index = 0
                for line in fh:
                    if not line.strip():
                        continue
                    try:
                        obj = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        obj = None
                    yield index, obj if isinstance(obj, dict) else None, line.rstrip("\n")
                    index += 1
                return
            reader = csv.reader(fh, delimiter=self.options.sep)
            header = [h.strip() for h in next(reader)]
            for index, row in enumerate(reader):
                yield self._csv_record(index, row, header)

    def batches(self) -> Iterator[RowBatch]:
        if not self.is_jsonl:
            yield from self._csv_batches()
            return
        chunk: list[tuple[int, dict[str, Any] | None, str]] = []
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
        with self.path.open(newline="", encoding="utf-8") as fh:
            header_line = fh.readline()
            if '"' in header_line:
                yield from self._csv_reader_batches(csv.reader(itertools.chain([header_line], fh), delimiter=sep))
                return
            header = [h.strip() for h in next(csv.reader([header_line], delimiter=sep))]
            first = 0
            while lines := list(itertools.islice(fh, self.chunk_size)):
                if any('"' in line for line in lines):
                    reader = csv.reader(itertools.chain(lines, fh), delimiter=sep)
                    yield from self._csv_reader_batches(reader, header, first)
                    return
                fast = self._csv_lines_fast_path(first, lines, header)
                yield fast if fast is not None else self._csv_chunk(first, list(csv.reader(lines, delimiter=sep)),
                                                                     header)
                first += len(lines)

    def _csv_reader_batches(self, reader: Iterator[list[str]], header: list[str] | None = None,
                            first: int = 0) -> Iterator[RowBatch]:
        if header is None:
            header = [h.strip() for h in next(reader)]
        rows: list[list[str]] = []
        for row in reader:
            rows.append(row)
            if len(rows) >= self.chunk_size:
                yield self._csv_chunk(first, rows, header)
                first, rows = first + len(rows), []
        if rows:
            yield self._csv_chunk(first, rows, header)

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

    def _csv_chunk(self, first: int, rows: list[list[str]], header: list[str]) -> RowBatch:
        """One numpy conversion when every row is well-formed and numeric; else row by row."""
        fast = self._csv_fast_path(first, rows, header)
        if fast is not None:
            return fast
        return self._to_batch_row_by_row([self._csv_record(first + i, row, header) for i, row in enumerate(rows)])

    def _csv_record(self, index: int, row: list[str], header: list[str]) -> tuple[int, dict[str, Any] | None, str]:
        """``(index, fields or None when the row does not split into the header's columns, raw text)``."""
        return index, dict(zip(header, row)) if len(row) == len(header) else None, self.options.sep.join(row)

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

    def _to_batch_row_by_row(self, chunk: list[tuple[int, dict[str, Any] | None, str]]) -> RowBatch:
        o = self.options
        good_index, values, times, keys, labels, bad = [], [], [], [], [], []
        for index, fields, raw in chunk:
            if fields is None:
                bad.append((index, "malformed row: cannot split into the header's columns", raw))
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
