"""The one exception root of the worker service."""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error raised on purpose by :mod:`worker`."""


class InputFormatError(WorkerError):
    """A recording cannot be read at all (no header, unknown column, unsupported format)."""


class SettingsError(WorkerError):
    """A setting is invalid; the message names it as the user wrote it (env var or flag).
    ``location`` is (section, name) of the setting where one is known, ``problem`` what is wrong."""

    def __init__(self, message: str, location: tuple[str, ...] = (), problem: str | None = None) -> None:
        super().__init__(message)
        self.location = location
        self.problem = problem or message
