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
series are not channels).

How far to trust it is measured, not set. The measured correlation is shrunk toward independence
by one of ``SHRINKAGES``: the one under which the events to come were most likely (a Gaussian
log-likelihood of each mini-batch's deviations under the correlation learned *before* it,
summed and forgotten as the co-moments are; for the warm-up, each half under the other's). A
correlation that holds (server metrics that rise together with load, over thousands of events)
earns little shrinkage; one that a short warm-up measured and the next events break (rig
channels that drift apart) earns much, up to none of it (independence, the plain mean square).
Every shrinkage is at least ``SHRINKAGES[0]``, which bounds the weight of any direction (a channel
that never moves, two channels that always move as one) at ``1 / SHRINKAGES[0]`` times a
channel's.
"""

from __future__ import annotations

import numpy as np

# Shares of independence that may be mixed into the measured correlation, the least first (ties
# go to it). The least is a floor for directions the data never moved in (every eigenvalue is at
# least this); 1 is independence.
SHRINKAGES = (0.05, 0.2, 0.5, 1.0)
# A channel whose deviations stayed this small (a constant, perfectly reconstructed channel) is
# taken as uncorrelated with the others.
_TINY = 1e-12


class ChannelCorrelation:
    """Running co-moments of standardised deviations between ``channels`` channels, one matrix per
    time scale (the lags of a window pooled), the evidence for each of ``SHRINKAGES``, and the
    whitening matrices they give."""

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
        # per scale and shrinkage: log-likelihood of rows under the correlation before them
        self.evidence = np.zeros((self.scales, len(SHRINKAGES)))
        self._whiteners: np.ndarray | None = None

    def restart(self, z: np.ndarray) -> None:
        """Forget everything, then learn ``z`` (the warm-up's rows, time order), its evidence each
        half's log-likelihood under the other half's correlation."""
        self.reset()
        rows = self._rows(z)
        half = rows.shape[1] // 2
        if half >= 2:
            for scale, block in enumerate(rows):
                first, second = block[:half], block[half:]
                self.evidence[scale] = (_log_likelihoods(_correlation_of(first.T @ first / len(first)), second)
                                        + _log_likelihoods(_correlation_of(second.T @ second / len(second)), first))
        self._add(rows)

    def learn_many(self, z: np.ndarray) -> None:
        """Learn rows of standardised deviations, shape ``(N, scales, lags * channels)``, after
        adding their log-likelihood under the correlation learned so far to the evidence."""
        if len(z) == 0:
            return
        rows = self._rows(z)
        if self.n > 0:
            for scale in range(self.scales):
                self.evidence[scale] += _log_likelihoods(self._correlation(scale), rows[scale])
        self._add(rows)

    @property
    def shrinkage(self) -> list[float]:
        """The share of independence in force, per time scale."""
        return [SHRINKAGES[int(np.argmax(e))] for e in self.evidence]

    def _rows(self, z: np.ndarray) -> np.ndarray:
        """Per scale, the (events x lags) rows of channels: shape ``(scales, N * lags, channels)``."""
        split = z.reshape(len(z), self.scales, self.lags, self.channels)
        return split.transpose(1, 0, 2, 3).reshape(self.scales, -1, self.channels)

    def _add(self, rows: np.ndarray) -> None:
        m = rows.shape[1]
        kept = self.n if self.horizon is None else min(self.n, max(self.horizon * self.lags - m, 0))
        if self.n > 0:
            self.comoment *= kept / self.n
            self.evidence *= kept / self.n  # evidence is forgotten with the rows it came from
        for scale, block in enumerate(rows):
            self.comoment[scale] += block.T @ block
        self.n = kept + m
        self._whiteners = None

    def whiten(self, z: np.ndarray) -> np.ndarray:
        """``z`` (shape ``(N, scales, lags * channels)``) with each lag's channels whitened."""
        if self.n == 0:
            return z
        if self._whiteners is None:
            self._whiteners = np.stack([_inverse_sqrt(self._correlation(s), shrink)
                                        for s, shrink in enumerate(self.shrinkage)])
        split = z.reshape(len(z), self.scales, self.lags, self.channels)
        out = np.empty_like(split)
        for scale, whitener in enumerate(self._whiteners):
            out[:, scale] = split[:, scale] @ whitener
        return out.reshape(z.shape)

    def _correlation(self, scale: int) -> np.ndarray:
        """The measured correlation of one scale, unshrunk."""
        return _correlation_of(self.comoment[scale] / self.n)

    def state(self) -> dict[str, object]:
        return {"n": self.n, "comoment": self.comoment, "evidence": self.evidence}

    def load_state(self, state: dict[str, object]) -> None:
        comoment = np.asarray(state["comoment"], dtype=np.float64)
        if comoment.shape != self.comoment.shape:
            raise ValueError(f"correlation co-moments have shape {comoment.shape}, expected {self.comoment.shape}")
        # (checkpoints before version 8 have no evidence: the least shrinkage, as they used, until some comes)
        evidence = np.asarray(state.get("evidence", np.zeros_like(self.evidence)), dtype=np.float64)
        if evidence.shape != self.evidence.shape:
            raise ValueError(f"correlation evidence has shape {evidence.shape}, expected {self.evidence.shape}")
        self.n = float(state["n"])  # type: ignore[arg-type]
        self.comoment = comoment
        self.evidence = evidence
        self._whiteners = None


def _correlation_of(moment: np.ndarray) -> np.ndarray:
    """Correlation from second moments; a channel that never moved is uncorrelated with the others."""
    spread = np.sqrt(np.maximum(np.diag(moment), 0.0))
    moving = spread > _TINY
    safe = np.where(moving, spread, 1.0)
    corr = np.where(np.outer(moving, moving), moment / np.outer(safe, safe), 0.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def _log_likelihoods(corr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Gaussian log-likelihood of ``rows`` (constant dropped) under ``corr`` shrunk by each of
    ``SHRINKAGES``."""
    values, vectors = np.linalg.eigh(corr)
    values = np.maximum(values, 0.0)
    projected = np.square(rows @ vectors).sum(axis=0)  # per eigen-direction
    out = np.empty(len(SHRINKAGES))
    for i, shrink in enumerate(SHRINKAGES):
        spread = (1.0 - shrink) * values + shrink
        out[i] = -0.5 * (len(rows) * np.log(spread).sum() + (projected / spread).sum())
    return out


def _inverse_sqrt(corr: np.ndarray, shrink: float) -> np.ndarray:
    """The symmetric inverse square root of ``corr`` shrunk by ``shrink`` toward independence (ZCA)."""
    values, vectors = np.linalg.eigh(corr)
    spread = (1.0 - shrink) * np.maximum(values, 0.0) + shrink
    return (vectors / np.sqrt(spread)) @ vectors.T
