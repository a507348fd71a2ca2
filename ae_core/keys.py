"""Per-key state: applying a per-key stateful transform to rows of a mini-batch keeping row
order, and tracking which keys to forget."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np


def per_key(rows: np.ndarray, keys: np.ndarray | None, transform: Callable[[str, np.ndarray], np.ndarray],
            width: int) -> np.ndarray:
    """``transform(key, that key's rows in order)`` for each key (in key order); results back in
    row order. ``keys=None`` means one stream (key ``""``). ``width`` is the output row width."""
    if keys is None:
        return transform("", rows)
    out = np.empty((len(rows), width))
    for key, idx in groups(keys):
        out[idx] = transform(key, rows[idx])
    return out


def groups(keys: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(key, its row indices in order)`` per distinct key, keys sorted; one sort, not a scan per key."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return [(str(ordered[start]), idx) for start, idx in zip(np.r_[0, cuts].tolist(), np.split(order, cuts))]


def by_occurrence(inverse: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """For r = 0, 1, ...: the rows that are their key's r-th in the batch (in key order), so a
    recursion over each key's rows runs as one vectorised step per occurrence (``inverse`` and
    ``counts`` as ``np.unique(keys, return_inverse=True, return_counts=True)`` gives them)."""
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(len(inverse), dtype=np.int64)
    rank[order] = np.arange(len(inverse)) - np.repeat(np.cumsum(counts) - counts, counts)
    by_rank = np.lexsort((inverse, rank))  # by occurrence, then by key
    return np.split(by_rank, np.cumsum(np.bincount(rank))[:-1])


class KeyTracker:
    """When each key was last seen, in events of the detector, least recently seen first; and
    which keys to forget: those not seen for ``ttl`` events, and the least recently seen beyond
    ``max_keys``. Counted in events, not seconds, so a replay, a restart from a checkpoint and an
    uninterrupted run forget the same keys at the same events."""

    def __init__(self, ttl: int | None, max_keys: int | None) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.last_seen: OrderedDict[str, int] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.last_seen)

    def seen(self, keys: list[str], first: int) -> None:
        """``keys[i]`` was seen at event ``first + i``."""
        last_seen = self.last_seen
        for at, key in enumerate(keys, first):
            last_seen[key] = at
            last_seen.move_to_end(key)

    def expired(self, now: int) -> list[str]:
        """Forget and return the keys to evict at event count ``now``."""
        gone: list[str] = []
        last_seen = self.last_seen
        while last_seen:
            key, at = next(iter(last_seen.items()))
            too_many = self.max_keys is not None and len(last_seen) > self.max_keys
            if not too_many and (self.ttl is None or now - at <= self.ttl):
                break
            del last_seen[key]
            gone.append(key)
        self.evicted += len(gone)
        return gone

    def state(self) -> dict[str, object]:
        return {"keys": list(self.last_seen), "seen": list(self.last_seen.values()), "evicted": self.evicted}

    def load_state(self, state: dict[str, object]) -> None:
        keys, seen = state["keys"], state["seen"]
        if len(keys) != len(seen):  # type: ignore[arg-type]
            raise ValueError("key tracker: keys and last-seen counts differ in length")
        self.last_seen = OrderedDict((str(k), int(s)) for k, s in zip(keys, seen))  # type: ignore[call-overload]
        self.evicted = int(state["evicted"])  # type: ignore[call-overload]
