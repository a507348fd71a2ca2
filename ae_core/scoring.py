"""From reconstruction residuals to one anomaly score per event.

The reconstruction error of one event is noisy: channels the network cannot predict add their
noise to every score, so a persistent 3-sigma shift in one of eight channels barely moves it.
The score therefore follows the residual *vector* ``r = x_hat - x`` (scaled units) through an
exponentially weighted moving average per key, ``s_t = a * r_t + (1 - a) * s_{t-1}`` (a
multivariate EWMA chart on the residuals): noise averages out while a lasting deviation stays.
Each channel of ``s`` is standardised by the running mean and spread of ``s`` on normal events,
and the score is the mean of the squared standardised values. With ``smoothing=1`` it is each
event's own residual, standardised per channel.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from ae_core.keys import per_key
from ae_core.scaling import OnlineScaler


class ResidualScorer:
    """Per-key EWMA of residual vectors, standardised per channel by normal-event statistics."""

    def __init__(self, n_features: int, smoothing: float) -> None:
        self.smoothing = smoothing
        self.state: dict[str, np.ndarray] = {}
        self.normal = OnlineScaler(n_features, "standard")

    def smooth(self, residuals: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        """EWMA of each key's residuals, continuing from the state its last events left."""
        if self.smoothing == 1.0:
            return residuals
        return per_key(residuals, keys, self._smooth_key, residuals.shape[1])

    def _smooth_key(self, key: str, residuals: np.ndarray) -> np.ndarray:
        a = self.smoothing
        prev = self.state.get(key)
        if prev is None:
            prev = residuals[0]
        out, _ = lfilter([a], [1.0, a - 1.0], residuals, axis=0, zi=((1.0 - a) * prev)[None, :])
        self.state[key] = out[-1].copy()
        return out

    def squared_deviations(self, smoothed: np.ndarray) -> np.ndarray:
        """Squared standardised smoothed residuals, per event and channel."""
        return np.square(self.normal.transform(smoothed))

    def learn_many(self, smoothed: np.ndarray) -> None:
        self.normal.learn_many(smoothed)

    def restart(self, residuals: np.ndarray) -> np.ndarray:
        """Forget everything, learn from residuals in time order, return their smoothed values."""
        self.state.clear()
        self.normal = OnlineScaler(self.normal.mean.shape[0], "standard")
        smoothed = self._smooth_key("", residuals)
        self.state.clear()
        self.normal.learn_many(smoothed)
        return smoothed
