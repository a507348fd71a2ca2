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

    writes = True  # (a NullSink does not)

    def __init__(self, path: str | Path | None, stream: IO[str] | None = None, lazy: bool = False) -> None:
        self.path = None if path in (None, "-") else Path(path)  # type: ignore[arg-type]
        self.stream = stream
        self.lazy = lazy
        self._fh: IO[bytes] | None = None
        self._entered = False

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
        if rows:
            self._write(b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for row in rows))

    def write_lines(self, lines: list[bytes]) -> None:
        """Lines already serialised (one JSON object each, without the line break)."""
        if lines:
            self._write(b"\n".join(lines) + b"\n")

    def _write(self, data: bytes) -> None:
        assert self._entered, "use the sink as a context manager"
        if self._fh is None:
            self._open()
        assert self._fh is not None
        self._fh.write(data)


class NullSink(JsonLinesSink):
    """Writes nothing (evaluation, benchmarks): a replay into it does not build the lines."""

    writes = False

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
        return None

    def write_lines(self, lines: list[bytes]) -> None:
        return None
