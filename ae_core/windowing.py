"""Sliding-window features: the last W readings of a key as one input vector."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ae_core.keys import per_key


class SlidingWindow:
    """Turns rows of C channels into rows of ``W * C`` features, per key.

    Output row ``t`` is ``[x[t-W+1], ..., x[t]]`` flattened (oldest first) over the key's own
    history. Until a key has W readings, its first reading stands in for the missing ones, so
    every event gets a vector and the stream is never held back. Memory: W - 1 rows per key.
    """

    def __init__(self, width: int, n_channels: int) -> None:
        self.width = width
        self.n_channels = n_channels
        self.history: dict[str, np.ndarray] = {}

    def transform(self, X: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        if self.width == 1:
            return X
        return per_key(X, keys, self._extend, self.width * self.n_channels)

    def forget(self, key: str) -> None:
        """Drop a key's history: its next reading starts a new window."""
        self.history.pop(key, None)

    def _extend(self, key: str, rows: np.ndarray) -> np.ndarray:
        past = self.history.get(key)
        if past is None:
            past = np.repeat(rows[:1], self.width - 1, axis=0)
        joined = np.concatenate([past, rows])
        self.history[key] = joined[-(self.width - 1):].copy()
        windows = sliding_window_view(joined, (self.width, self.n_channels))[:, 0]
        return windows.reshape(len(rows), -1)
