"""Adaptive threshold on the anomaly-score stream, built on :class:`river.stats.Var`."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from river import stats


class AdaptiveThreshold:
    """Rolling ``(mean + k * std) ** 3`` of the cube roots of recent normal events' scores.

    The score is a mean of squared standardised residuals, shaped like a scaled chi-square. Its
    cube root is close to normal (Wilson-Hilferty), so ``mean + k * std`` on that scale behaves
    like a high quantile whose level ``k`` sets (k=3: about 99.9%), without the plain score's
    heavy right tail inflating the spread or a log's long left tail doing the same. The statistics
    are a :class:`river.stats.Var` per mini-batch, merged with river's ``+`` and ``-`` over the
    last ``window_batches`` mini-batches, so the threshold follows slow drift and forgets the
    untrained model's first scores. :meth:`get` returns ``None`` until two scores were seen.
    """

    def __init__(self, k: float, window_batches: int) -> None:
        self.k = k
        self.window_batches = window_batches
        self._batches: deque[stats.Var] = deque()
        self._total = stats.Var()
        self._since_rebuild = 0

    def update_many(self, scores: np.ndarray) -> None:
        if len(scores) == 0:
            return
        batch = stats.Var()
        batch.update_many(np.cbrt(np.asarray(scores, dtype=np.float64)))
        self._batches.append(batch)
        self._total += batch
        if len(self._batches) > self.window_batches:
            self._total -= self._batches.popleft()
        self._since_rebuild += 1
        if self._since_rebuild >= self.window_batches:
            self._rebuild()

    def reset(self) -> None:
        self._batches.clear()
        self._rebuild()

    def _rebuild(self) -> None:
        # Merging then un-merging summaries leaks rounding error; start over once per window.
        total = stats.Var()
        for batch in self._batches:
            total += batch
        self._total = total
        self._since_rebuild = 0

    @property
    def n(self) -> float:
        return self._total.mean.n

    def get(self) -> float | None:
        if self.n < 2:
            return None
        root = self._total.mean.get() + self.k * math.sqrt(max(self._total.get(), 0.0))
        return max(root, 0.0) ** 3

    def state(self) -> dict[str, object]:
        """Every summary as river holds it (count, mean, sum of squared deviations) and the merge
        count since the last rebuild: a restored threshold equals the saved one to the bit,
        including the rounding its running merges had accumulated."""
        return {"batches": [_raw(b) for b in self._batches], "total": _raw(self._total),
                "since_rebuild": self._since_rebuild}

    def load_state(self, saved: dict[str, object] | list[list[float]]) -> None:
        if isinstance(saved, list):  # checkpoints before version 4: (n, mean, variance) per batch
            self._batches = deque(stats.Var._from_state(n, m, v) for n, m, v in saved)
            self._rebuild()
            return
        self._batches = deque(_var(*raw) for raw in saved["batches"])  # type: ignore[attr-defined]
        self._total = _var(*saved["total"])  # type: ignore[misc]
        self._since_rebuild = int(saved["since_rebuild"])  # type: ignore[call-overload]


def _raw(var: stats.Var) -> list[float]:
    return [float(var.mean.n), float(var.mean._mean), float(var._S)]


def _var(n: float, mean: float, squares: float) -> stats.Var:
    var = stats.Var()
    var.mean = stats.Mean._from_state(n, mean)
    var._S = squares
    return var


class QuantileThreshold:
    """``margin`` times a rolling quantile of recent normal events' scores
    (:class:`river.stats.RollingQuantile` over the last ``window`` scores).

    Makes no assumption on the score's distribution; ``q`` sets the expected false-alarm rate
    on a stationary stream (about ``1 - q``), ``margin`` above 1 trades recall for fewer alarms.
    """

    def __init__(self, q: float, margin: float, window: int, batch_size: int) -> None:
        self.q = q
        self.margin = margin
        self.window = window
        self.window_batches = max(1, window // batch_size)
        self._scores: deque[float] = deque(maxlen=window)
        self._quantile = stats.RollingQuantile(q, window_size=window)

    def update_many(self, scores: np.ndarray) -> None:
        for score in np.asarray(scores, dtype=np.float64).tolist():
            self._quantile.update(score)
            self._scores.append(score)

    @property
    def n(self) -> float:
        return float(len(self._scores))

    def get(self) -> float | None:
        value = self._quantile.get() if len(self._scores) >= 2 else None
        return None if value is None else self.margin * value

    def reset(self) -> None:
        self._scores.clear()
        self._quantile = stats.RollingQuantile(self.q, window_size=self.window)

    def state(self) -> list[float]:
        return list(self._scores)

    def load_state(self, scores: list[float]) -> None:
        self.reset()
        self.update_many(np.asarray(scores, dtype=np.float64))
