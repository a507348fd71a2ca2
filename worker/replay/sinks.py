"""Where results go: JSON lines to a file or to standard output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import orjson

from worker.errors import WorkerError


class JsonLinesSink:
    """Writes one JSON object per line; ``path=None`` or ``'-'`` means ``stream`` (stdout).

    ``lazy``: the file is made at the first row, so a run without such rows leaves none (an older
    file of that name is removed, as opening it would have emptied it)."""

    def __init__(self, path: str | Path | None, stream: IO[str] | None = None, lazy: bool = False) -> None:
        self.path = None if path in (None, "-") else Path(path)  # type: ignore[arg-type]
        self.stream = stream
        self.lazy = lazy
        self._fh: IO[bytes] | None = None
        self._entered = False
        self.count = 0

    @property
    def name(self) -> str:
        if self.path is not None:
            return str(self.path)
        return "stderr" if self.stream is sys.stderr else "stdout"

    def __enter__(self) -> JsonLinesSink:
        self._entered = True
        if self.path is None:
            self._fh = (self.stream or sys.stdout).buffer
        elif self.lazy:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise WorkerError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        else:
            self._open()
        return self

    def _open(self) -> None:
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
        except OSError as exc:
            raise WorkerError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.path is not None:
                self._fh.close()
        self._fh = None
        self._entered = False

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        assert self._entered, "use the sink as a context manager"
        if rows:
            if self._fh is None:
                self._open()
            assert self._fh is not None
            self._fh.write(json_lines(rows))
            self.count += len(rows)


def json_lines(rows: list[dict[str, Any]]) -> bytes:
    """One JSON object per line. Rows that all begin with the same key (replay's ``index``) are
    serialised in one orjson call (a call per row cost 4x as much) and the array cut where a row
    ends and the next begins, at ``},{"<key>":``. A JSON string never holds an unescaped quote, so
    only an object's start can match; each boundary does, and the cut is taken only when nothing
    else does (a nested object beginning with that key would): else one call per row."""
    first = next(iter(rows[0]), None)
    if isinstance(first, str) and all(rows) and all(map(first.__eq__, map(next, map(iter, rows)))):
        opening = orjson.dumps(first) + b":"
        inner = orjson.dumps(rows, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        if inner.count(b"},{" + opening) == len(rows) - 1:
            return inner.replace(b"},{" + opening, b"}\n{" + opening) + b"\n"
    return b"\n".join([orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in rows]) + b"\n"


class NullSink(JsonLinesSink):
    """Counts rows and writes nothing (evaluation, benchmarks)."""

    def __init__(self) -> None:
        super().__init__(None)

    @property
    def name(self) -> str:
        return "nowhere"

    def __enter__(self) -> NullSink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        self.count += len(rows)
