"""How the channels' smoothed residuals move together on normal events, and the whitening that
takes it out of the score (the multivariate EWMA chart's T-squared, Lowry et al. 1992).

Step 3 of the score (:mod:`ae_core.scoring`) sums each channel's squared standardised deviation
as if the channels were independent. They rarely are: nineteen server metrics that rise together
with load count a common swing nineteen times, and a break in how two channels usually move
together (one rises, its partner does not) hides among ordinary swings. With ``decorrelate`` the
standardised deviations are first multiplied by the inverse square root of their correlation
matrix on normal events (ZCA whitening: each whitened coordinate stays the one most like its
channel, so the per-channel contributions keep their meaning), and the score's mean of squares
becomes ``T^2 / n``, the Mahalanobis distance of the residual vector per channel.

The correlation is learned as the other score statistics are: from the warm-up's out-of-sample
residuals, then from every unflagged event, forgetting with the statistics' ``horizon``. With a
window, the lags of a channel share its correlations with the other channels (the lags of one
series are not channels). It is shrunk by ``SHRINKAGE`` toward independence, which bounds the
weight of any direction (a channel that never moves, two channels that always move as one) at
``1 / SHRINKAGE`` times a channel's.
"""

from __future__ import annotations

import numpy as np

# Share of independence mixed into the measured correlation: every eigenvalue is at least this.
# A floor for directions the data never moved in, not a tuned value: bench/quality.py's numbers
# barely move between 0 and 0.1 (SKAB AUC-PR 0.885 / 0.887 / 0.884 at 0 / 0.03 / 0.1).
SHRINKAGE = 0.05
# A channel whose deviations stayed this small (a constant, perfectly reconstructed channel) is
# taken as uncorrelated with the others.
_TINY = 1e-12


class ChannelCorrelation:
    """Running co-moments of standardised deviations between ``channels`` channels, one matrix per
    time scale (the lags of a window pooled), and the whitening matrices they give."""

    def __init__(self, channels: int, scales: int, lags: int, horizon: int | None) -> None:
        self.channels = channels
        self.scales = scales
        self.lags = lags
        self.horizon = horizon
        self.reset()

    def reset(self) -> None:
        """Forget everything learned."""
        self.n = 0.0  # rows learned (events times lags), after forgetting
        self.comoment = np.zeros((self.scales, self.channels, self.channels))
        self._whiteners: np.ndarray | None = None

    def learn_many(self, z: np.ndarray) -> None:
        """Learn rows of standardised deviations, shape ``(N, scales, lags * channels)``."""
        if len(z) == 0:
            return
        split = z.reshape(len(z), self.scales, self.lags, self.channels)
        rows = split.transpose(1, 0, 2, 3).reshape(self.scales, -1, self.channels)  # per scale: (events x lags) rows
        m = rows.shape[1]
        kept = self.n if self.horizon is None else min(self.n, max(self.horizon * self.lags - m, 0))
        if self.n > 0:
            self.comoment *= kept / self.n
        for scale, block in enumerate(rows):
            self.comoment[scale] += block.T @ block
        self.n = kept + m
        self._whiteners = None

    def whiten(self, z: np.ndarray) -> np.ndarray:
        """``z`` (shape ``(N, scales, lags * channels)``) with each lag's channels whitened."""
        if self.n == 0:
            return z
        if self._whiteners is None:
            self._whiteners = np.stack([_inverse_sqrt(self._correlation(s)) for s in range(self.scales)])
        split = z.reshape(len(z), self.scales, self.lags, self.channels)
        out = np.empty_like(split)
        for scale, whitener in enumerate(self._whiteners):
            out[:, scale] = split[:, scale] @ whitener
        return out.reshape(z.shape)

    def _correlation(self, scale: int) -> np.ndarray:
        moment = self.comoment[scale] / self.n
        spread = np.sqrt(np.maximum(np.diag(moment), 0.0))
        moving = spread > _TINY
        safe = np.where(moving, spread, 1.0)
        corr = np.where(np.outer(moving, moving), moment / np.outer(safe, safe), 0.0)
        np.fill_diagonal(corr, 1.0)
        return (1.0 - SHRINKAGE) * corr + SHRINKAGE * np.eye(self.channels)

    def state(self) -> dict[str, object]:
        return {"n": self.n, "comoment": self.comoment}

    def load_state(self, state: dict[str, object]) -> None:
        comoment = np.asarray(state["comoment"], dtype=np.float64)
        if comoment.shape != self.comoment.shape:
            raise ValueError(f"correlation co-moments have shape {comoment.shape}, expected {self.comoment.shape}")
        self.n = float(state["n"])  # type: ignore[arg-type]
        self.comoment = comoment
        self._whiteners = None


def _inverse_sqrt(corr: np.ndarray) -> np.ndarray:
    """The symmetric inverse square root of a correlation matrix (ZCA whitening)."""
    values, vectors = np.linalg.eigh(corr)
    return (vectors / np.sqrt(np.maximum(values, SHRINKAGE))) @ vectors.T
