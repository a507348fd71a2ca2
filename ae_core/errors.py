"""The one exception root of the detector library."""

from __future__ import annotations


class AECoreError(Exception):
    """Base class of every error raised on purpose by :mod:`ae_core`."""


class ConfigError(AECoreError, ValueError):
    """A detector setting is invalid; the message names the setting."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting


class CheckpointError(AECoreError):
    """A checkpoint is corrupt, truncated, foreign or of an unsupported version."""


class SignatureError(CheckpointError):
    """A checkpoint's signature is missing, wrong, or cannot be checked without the key."""
