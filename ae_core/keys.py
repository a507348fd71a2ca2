"""Applying a per-key stateful transform to rows of a mini-batch, keeping row order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def per_key(rows: np.ndarray, keys: np.ndarray | None, transform: Callable[[str, np.ndarray], np.ndarray],
            width: int) -> np.ndarray:
    """``transform(key, that key's rows in order)`` for each key; results back in row order.

    ``keys=None`` means one stream (key ``""``). ``width`` is the output row width.
    """
    if keys is None:
        return transform("", rows)
    out = np.empty((len(rows), width))
    uniq, inverse = np.unique(keys, return_inverse=True)
    for i, key in enumerate(uniq):
        mask = inverse == i
        out[mask] = transform(str(key), rows[mask])
    return out
