"""From reconstruction residuals to one anomaly score per event.

The reconstruction error of one event is noisy: channels the network cannot predict add their
noise to every score, so a persistent 3-sigma shift in one of eight channels barely moves it.
The score therefore follows the residual *vector* ``r = x_hat - x`` (scaled units) of each key:

1. each channel of ``r`` is standardised by the centre and spread of that channel's residuals
   on normal events, and clipped to ``[-clip, clip]``: one extreme reading then weighs like a
   large deviation, not like a billion of them, and cannot hold the average up for hundreds
   of events afterwards;
2. an exponentially weighted moving average per key, ``s_t = a * z_t + (1 - a) * s_{t-1}`` (a
   multivariate EWMA chart on the residuals): noise averages out while a lasting deviation stays.
   A key's first average after the warm-up starts, as an EWMA chart does, at its target: the
   centre of normal events' averages. Started at the key's first residual instead, it carried
   one event's spread where step 3 expects an average's (``a / (2 - a)`` of it): every device
   that joined a fleet after the warm-up, and every stream's first live event, scored up to 19
   times too high;
3. each channel of ``s`` is standardised by its running centre and spread on normal events, and
   the score is the mean (``aggregate="mean"``: a chi-square-like statistic, best for deviations
   spread over many channels) or the largest (``"max"``: best for a fault in one or two sensors
   among many) of the squared standardised values.

With ``decorrelate`` step 3 first whitens the channels' standardised values by their
correlation on normal events (:mod:`ae_core.correlation`), so the mean square is the
multivariate EWMA chart's T-squared per channel.

A second signal may ride along as one more column of ``r`` (see :mod:`ae_core.density`): the
distance of the event's bottleneck code to normal codes. It goes through steps 1 and 2 like a
channel; in step 3 only its excess counts (an event closer to normal codes than usual is not
anomalous), and it joins the channels' aggregate with ``density_weight`` channels' worth of weight.

With ``slow_smoothing`` the residuals are averaged at a second, slower rate too, and steps 2-3
run at both: the score is the larger of the two scales' aggregates. A fault that moves a channel
by a little for a long time stands out of the slow average, where the fast one lets noise hide
it; a short sharp one stands out of the fast average, where the slow one dilutes it (the
multiple-EWMA chart of statistical process control).

With ``smoothing=1`` step 2 does nothing. Every statistic forgets with ``horizon`` (events), so
the scale of "normal" follows a stream whose noise changes. Spreads have floors: a channel the
network reconstructs perfectly (a flat line) must not turn rounding noise into alarms.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.signal import lfilter

from ae_core.correlation import ChannelCorrelation
from ae_core.keys import by_occurrence, per_key
from ae_core.scaling import OnlineScaler

# Smallest residual spread, in scaled input units (standard deviations, or the [0, 1] range).
RESIDUAL_FLOOR = 1e-3
# The lowest threshold there is. A stream whose residuals vary exactly as much as the floors
# allow scores about 1 on average (the mean of n squared unit deviations); a quieter one (a
# constant, a channel the network reconstructs perfectly) scores less, and a threshold that
# followed it down would flag changes smaller than the floors call noise: an exactly constant
# stream flooded. Not tuned: with the default settings no real recording at hand takes the
# threshold below 1.18; over bench/lodo.py's grid the floor moved one number (NAB at smoothing
# 0.1, threshold_k 4: 50.2 -> 50.4) and no held-out one.
QUIET_SCORE = 1.0


class ResidualScorer:
    """Per-key EWMA of clipped standardised residuals, standardised again by normal-event statistics."""

    def __init__(self, n_features: int, smoothing: float, clip: float, horizon: int | None = None,
                 aggregate: str = "mean", density_weight: float = 0.0, slow_smoothing: float | None = None,
                 decorrelate: bool = False, window: int = 1) -> None:
        self.n_channels = n_features  # residual columns; the density column, when there is one, follows
        self.density_weight = density_weight
        self.width = n_features + (density_weight > 0)  # residual columns, density included
        # the smoothing factor of each scale; the smoothed residuals hold one block of columns per scale
        self.factors = (smoothing,) if slow_smoothing is None else (smoothing, slow_smoothing)
        self.smoothed_width = self.width * len(self.factors)
        self.aggregate_kind = aggregate
        self.clip = clip
        self.horizon = horizon
        self.state: dict[str, np.ndarray] = {}
        self.raw = OnlineScaler(self.width, "standard", clip, horizon)
        self.normal = OnlineScaler(self.smoothed_width, "standard", clip, horizon)
        # White noise of unit spread has EWMA spread sqrt(a / (2 - a)); half of it is the floor.
        self.smoothed_floor = np.repeat([0.5 * math.sqrt(a / (2.0 - a)) for a in self.factors], self.width)
        self._rate = np.repeat(self.factors, self.width)  # each smoothed column's factor
        self.correlation = (ChannelCorrelation(n_features // window, len(self.factors), window, horizon)
                            if decorrelate else None)

    def standardise(self, residuals: np.ndarray) -> np.ndarray:
        spread = np.maximum(self.raw.std, RESIDUAL_FLOOR)
        return np.clip((residuals - self.raw.mean) / spread, -self.clip, self.clip)

    def smooth(self, z: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        """EWMA of each key's standardised residuals, continuing from the state its last events left.

        Many keys with few events each (a fleet) run one step per occurrence, vectorised over the
        keys; few keys with many events run a filter per key. Both compute ``a * z + (1 - a) * s``
        in the same order, so the results are the same to the bit (a test holds them to it).
        With two scales the result holds the fast block, then the slow one."""
        if self.factors == (1.0,):
            return z
        if keys is None:
            return self._smooth_key("", z)
        distinct, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        if counts.max() > len(distinct):  # (the split by occurrence is costly: only when it is used)
            return per_key(z, keys, self._smooth_key, self.smoothed_width)
        if len(self.factors) > 1:
            z = np.tile(z, len(self.factors))
        return self._smooth_fleet(z, distinct, inverse, by_occurrence(inverse, counts))

    def _smooth_fleet(self, z: np.ndarray, distinct: np.ndarray, inverse: np.ndarray,
                      by_occurrence: list[np.ndarray]) -> np.ndarray:
        a, state = self._rate, self.state
        names = distinct.tolist()
        start = self.normal.mean
        prev = np.array([state[k] if k in state else start for k in names])
        keep = 1.0 - a
        out = np.empty_like(z)
        for rows in by_occurrence:
            at = inverse[rows]
            out[rows] = a * z[rows] + keep * prev[at]
            prev[at] = out[rows]
        state.update(zip(names, [row.copy() for row in prev]))  # not views of one array: keys are evicted alone
        return out

    def _smooth_key(self, key: str, z: np.ndarray) -> np.ndarray:
        prev = self.state.get(key)
        if prev is None:  # a key's first event: every scale starts at the centre of normal events
            prev = self.normal.mean
        w = self.width
        blocks = [lfilter([a], [1.0, a - 1.0], z, axis=0, zi=((1.0 - a) * prev[b * w:(b + 1) * w])[None, :])[0]
                  for b, a in enumerate(self.factors)]
        out = blocks[0] if len(blocks) == 1 else np.hstack(blocks)
        self.state[key] = out[-1].copy()
        return out

    def squared_deviations(self, smoothed: np.ndarray) -> np.ndarray:
        """Squared standardised smoothed residuals, per event and column (the density column: its
        excess only; with ``decorrelate`` the channels' whitened)."""
        z = self._standardised(smoothed)
        if self.correlation is not None:
            channels = self._channel_columns(z)
            channels[...] = self.correlation.whiten(channels)
        for b in range(len(self.factors)):
            density = z[:, b * self.width + self.n_channels:(b + 1) * self.width]
            np.maximum(density, 0.0, out=density)
        return np.square(z)

    def _standardised(self, smoothed: np.ndarray) -> np.ndarray:
        return (smoothed - self.normal.mean) / np.maximum(self.normal.std, self.smoothed_floor)

    def _channel_columns(self, z: np.ndarray) -> np.ndarray:
        """A view of the channels' columns of each scale block, shape ``(N, scales, channels)``."""
        return z.reshape(len(z), len(self.factors), self.width)[:, :, :self.n_channels]

    def _correlation_rows(self, smoothed: np.ndarray) -> np.ndarray:
        """What the correlation learns: the channels' clipped standardised values, per scale."""
        return self._channel_columns(np.clip(self._standardised(smoothed), -self.clip, self.clip))

    def score_and_channels(self, deviations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One score per event from its squared standardised deviations (the larger of the scales'),
        and its channels' squared deviations at the scale that gave it."""
        w, n = self.width, self.n_channels
        fast = self._aggregate(deviations[:, :w])
        if len(self.factors) == 1:
            return fast, deviations[:, :n]
        slow = self._aggregate(deviations[:, w:])
        slower_wins = slow > fast  # (ties: the fast scale's channels)
        channels = np.where(slower_wins[:, None], deviations[:, w:w + n], deviations[:, :n])
        return np.where(slower_wins, slow, fast), channels

    def _aggregate(self, deviations: np.ndarray) -> np.ndarray:
        """One scale's score per event: the channels' mean (or largest) squared deviation, and the
        density column with ``density_weight`` channels' worth of weight."""
        channels = deviations[:, :self.n_channels]
        score = channels.max(axis=1) if self.aggregate_kind == "max" else channels.mean(axis=1)
        if self.density_weight > 0:
            share = self.density_weight / self.n_channels
            score = (score + share * deviations[:, self.n_channels]) / (1.0 + share)
        return score

    def learn_many(self, residuals: np.ndarray, smoothed: np.ndarray) -> None:
        """Learn the residuals (step 1) and the smoothed residuals (step 3) of normal events; the
        two may be of different events (see :meth:`AutoencoderDetector._finish_batch`)."""
        self.raw.learn_many(residuals)
        self.normal.learn_many(smoothed)
        if self.correlation is not None:
            self.correlation.learn_many(self._correlation_rows(smoothed))

    def forget(self, key: str) -> None:
        """Drop a key's running average: its next event starts afresh."""
        self.state.pop(key, None)

    def restart(self, residuals: np.ndarray) -> np.ndarray:
        """Forget everything, learn from residuals in time order, return their smoothed values."""
        self.state.clear()
        self.raw = OnlineScaler(self.width, "standard", self.clip, self.horizon)
        self.normal = OnlineScaler(self.smoothed_width, "standard", self.clip, self.horizon)
        self.raw.learn_many(residuals)
        z = self.standardise(residuals)
        # The warm-up's own averages start at its first residual, as they always have: the spread
        # that start leaves in the statistics (the slow scale's about a tenth wider over 400
        # events) is part of what the defaults were chosen with. Started at the centre as well,
        # SKAB's false-alarm rate went 8.3% -> 14.3% and the spot rule flagged 3.8% of white
        # noise at a 1% risk (bench/quality.py, tests/test_decisions.py).
        self.state[""] = np.tile(z[0], len(self.factors))
        smoothed = self.smooth(z, None)
        self.state.clear()
        self.normal.learn_many(smoothed)
        if self.correlation is not None:
            self.correlation.restart(self._correlation_rows(smoothed))
        return smoothed
