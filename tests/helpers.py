"""Small seeded data and detector configurations shared by the tests."""

from __future__ import annotations

import numpy as np

from ae_core import DetectorConfig

CONFIGS = {
    "default": dict(n_channels=5),
    # the score on two time scales (a slow average beside the fast one)
    "two-scales": dict(n_channels=5, slow_smoothing=0.1),
    "sigmoid-bce": dict(n_channels=5, output_activation="sigmoid"),
    "l1-denoise": dict(n_channels=5, penalty="l1", denoise_sigma=0.1),
    "window": dict(n_channels=2, window=4),
    "no-smoothing-small-batch": dict(n_channels=5, smoothing=1.0, batch_size=8, memory_size=0),
    "quantile-threshold": dict(n_channels=5, threshold_rule="quantile", batch_size=32),
    # a short window: the tail is fitted (more than MIN_SCORES normal scores) within the tests' streams
    "spot-threshold": dict(n_channels=5, threshold_rule="spot", threshold_risk=1e-2, batch_size=32,
                           threshold_window=256),
    # the same rule with its budget counted in alerts (the extremal index of the recent scores)
    "spot-alert-budget": dict(n_channels=5, threshold_rule="spot", alert_budget=100.0, batch_size=32,
                              threshold_window=256),
    "max-aggregate": dict(n_channels=5, score_aggregate="max"),
    # the channels' correlation taken out of the score: its co-moments in every snapshot; beside
    # the density column (not whitened), and with a window (lags share a channel's correlations)
    # and two time scales (a matrix per scale)
    "decorrelated-density": dict(n_channels=5, decorrelate=True, density_weight=1.0),
    "decorrelated-window-two-scales": dict(n_channels=2, window=4, decorrelate=True, slow_smoothing=0.1),
    # the density signal beside reconstruction error: its column in every statistic and snapshot
    "density": dict(n_channels=5, density_weight=1.0),
    # a low bar: many short episodes, some accepted as a new normal, all through the contract
    "busy-episodes": dict(n_channels=5, threshold_k=0.5, episode_quiet=3, adapt_after=20, batch_size=32),
    # episodes accepted on plateaus: their recent scores are part of every snapshot
    "plateau-episodes": dict(n_channels=5, threshold_k=0.5, episode_quiet=3, adapt_after=60, accept_plateau=6,
                             batch_size=32),
    # episodes held open down to a lower level (hysteresis): flags depend on open episodes
    "held-episodes": dict(n_channels=5, threshold_k=1.0, episode_quiet=3, episode_hold=0.5, batch_size=32),
}


def config(name: str, **overrides: object) -> DetectorConfig:
    values = {"warmup": 64, "fit_steps": 16, "seed": 7, **CONFIGS[name], **overrides}
    return DetectorConfig(**values)  # type: ignore[arg-type]


def correlated(n: int, channels: int, seed: int = 0) -> np.ndarray:
    """Rows driven by two latent factors plus noise: learnable structure."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mixing = np.random.default_rng(99).normal(size=(2, channels))
    return 10.0 + latent @ mixing + 0.1 * rng.normal(size=(n, channels))
