"""Online feature scaling learned from the stream, a mini-batch at a time."""

from __future__ import annotations

import numpy as np

_TINY = 1e-12
# Winsorising needs a spread to measure against: learn the first events as they come.
_ROBUST_AFTER = 32


class OnlineScaler:
    """Per-feature scaling whose statistics follow the stream, one learned mini-batch at a time.

    ``standard``: ``(x - mean) / std`` with the running mean and sample variance of each
    feature, for all features in one numpy operation: each mini-batch's own mean and squared
    deviations merged into them (Chan et al.). They equal :meth:`river.stats.Var.update_many`'s
    on ordinary data; far from zero its one-pass update cancels and this merge does not
    (``tests/test_scaling_threshold_windowing.py`` checks both). ``minmax``:
    ``(x - min) / (max - min)`` clipped to [0, 1], as the sigmoid output needs.

    Robustness, both off by default:

    * ``clip`` (in standard deviations): standardised values are clipped to ``[-clip, clip]``, and
      once the statistics hold a few events every learned value is first winsorised to
      ``mean +- clip * std``. One extreme reading then moves the statistics by a bounded amount
      instead of owning them for ever (a valid 1e15 among readings near 1 would otherwise set
      the spread of that feature for the rest of the stream).
    * ``horizon`` (events): the statistics weigh the past as if it held at most ``horizon``
      events, an exponential forgetting that lets the centre and spread follow a new normal.

    Before any data, and for a constant feature, the spread counts as 1, so a value never
    divides by zero and an unseen value stays finite.
    """

    def __init__(self, n_features: int, kind: str, clip: float | None = None, horizon: int | None = None) -> None:
        self.kind = kind
        self.clip = clip
        self.horizon = horizon
        self.n = 0.0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)
        self.low = np.full(n_features, np.inf)
        self.high = np.full(n_features, -np.inf)

    def learn_many(self, X: np.ndarray) -> None:
        if len(X) == 0:
            return
        if self.clip is not None and self.n >= _ROBUST_AFTER:
            bound = self.clip * self.std
            X = np.clip(X, self.mean - bound, self.mean + bound)
        if self.kind == "minmax":
            self.low = np.minimum(self.low, X.min(axis=0))
            self.high = np.maximum(self.high, X.max(axis=0))
        m = len(X)
        kept = self.n if self.horizon is None else min(self.n, max(self.horizon - m, 0))
        old_m2 = self.m2 * (kept / self.n) if self.n > 0 else self.m2
        # Chan's merge of the batch's own mean and squared deviations, any weight kept. (The
        # one-pass form, sum((x - old_mean) * (x - new_mean)), cancels catastrophically on the
        # first batch of a channel far from 0: readings of 1e6 with a spread of 1e-3 came out
        # with no spread at all, and of 1e9 with a spread of 5.)
        batch_mean = X.mean(axis=0)
        delta = batch_mean - self.mean
        self.n = kept + m
        self.mean = self.mean + delta * (m / self.n)
        self.m2 = old_m2 + np.square(X - batch_mean).sum(axis=0) + np.square(delta) * (kept * m / self.n)

    def transform(self, X: np.ndarray) -> np.ndarray:
        shift, scale, low, high = self.affine()
        return np.clip((X - shift) / scale, low, high)

    def affine(self) -> tuple[np.ndarray, np.ndarray, float, float]:
        """``(shift, scale, low, high)``: :meth:`transform` is ``clip((X - shift) / scale, low, high)``.
        The arrays are replaced, never changed in place, by :meth:`learn_many`: safe to keep."""
        if self.kind == "minmax":
            if self.n == 0:
                return np.zeros_like(self.mean), np.ones_like(self.mean), 0.0, 1.0
            span = self.high - self.low
            return self.low, np.where(span > _TINY, span, 1.0), 0.0, 1.0
        bound = np.inf if self.clip is None else self.clip
        return self.mean, self.std, -bound, bound

    @property
    def std(self) -> np.ndarray:
        var = self.m2 / (self.n - 1) if self.n > 1 else np.ones_like(self.m2)
        std = np.sqrt(np.maximum(var, 0.0))
        return np.where(std > _TINY, std, 1.0)

    def state(self) -> dict[str, object]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2, "low": self.low, "high": self.high}

    def load_state(self, state: dict[str, object]) -> None:
        self.n = float(state["n"])  # type: ignore[arg-type]
        for name in ("mean", "m2", "low", "high"):
            value = np.asarray(state[name], dtype=np.float64)
            if value.shape != self.mean.shape:
                raise ValueError(f"scaler.{name} has shape {value.shape}, expected {self.mean.shape}")
            setattr(self, name, value)
