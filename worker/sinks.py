"""Where results go: JSON lines to a file or to standard output."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

import orjson


class JsonLinesSink:
    """Writes one JSON object per line; ``path=None`` or ``'-'`` means ``stream`` (stdout)."""

    def __init__(self, path: str | Path | None, stream: IO[str] | None = None) -> None:
        self.path = None if path in (None, "-") else Path(path)  # type: ignore[arg-type]
        self.stream = stream
        self._fh: IO[bytes] | None = None
        self.count = 0

    @property
    def name(self) -> str:
        if self.path is not None:
            return str(self.path)
        return "stderr" if self.stream is sys.stderr else "stdout"

    def __enter__(self) -> JsonLinesSink:
        if self.path is None:
            self._fh = (self.stream or sys.stdout).buffer
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.path is not None:
                self._fh.close()
        self._fh = None

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        assert self._fh is not None, "use the sink as a context manager"
        if rows:
            self._fh.write(b"\n".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) for r in rows) + b"\n")
            self.count += len(rows)


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
