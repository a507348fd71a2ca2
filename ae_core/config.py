"""Typed, validated detector settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ae_core.errors import ConfigError

# Larger magnitudes overflow the running statistics (squares of 1e155 are inf) and would poison
# the model; no sensor reports them, so they are refused as invalid input.
MAX_ABS_READING = 1e15

Output = Literal["sigmoid", "identity"]
Loss = Literal["mse", "bce"]
Penalty = Literal["l2", "l1"]
Scaling = Literal["minmax", "standard"]


@dataclass(frozen=True)
class DetectorConfig:
    """Every setting of an :class:`~ae_core.detector.AutoencoderDetector`.

    ``n_channels`` readings per event enter the detector; with ``window`` W > 1 the model sees the
    last W readings of the event's key, so its input has ``n_channels * W`` features.
    ``loss`` and ``scaling`` follow ``output_activation`` when left ``None``: a sigmoid output reconstructs
    inputs min-max scaled to [0, 1] under binary cross-entropy, an identity output reconstructs
    standardised inputs under mean squared error.
    """

    n_channels: int
    channel_names: tuple[str, ...] | None = None
    window: int = 1
    # network
    hidden: tuple[int, ...] = (32, 16)
    bottleneck: int | None = None
    output_activation: Output = "identity"
    loss: Loss | None = None
    penalty: Penalty = "l2"
    penalty_weight: float = 1e-5
    denoise_sigma: float = 0.0
    learning_rate: float = 3e-3
    # online learning
    batch_size: int = 256
    learn_steps: int = 2
    fit_steps: int = 256
    memory_size: int = 1024
    scaling: Scaling | None = None
    learn_on_anomalies: bool = False
    stats_horizon: int | None = 10_000
    clip: float = 20.0
    # decision
    warmup: int = 400
    smoothing: float = 0.3
    slow_smoothing: float | None = None
    score_aggregate: Literal["mean", "max"] = "mean"
    threshold_rule: Literal["sigma", "quantile", "spot"] = "sigma"
    threshold_k: float = 4.0
    threshold_risk: float = 1e-3
    alert_budget: float | None = None
    threshold_quantile: float = 0.99
    threshold_margin: float = 1.5
    threshold_window: int = 4096
    episode_quiet: int = 100
    episode_hold: float | None = None
    escalate: float | None = 4.0
    adapt_after: int | None = 300
    accept_plateau: int | None = 120
    adapt_steps: int = 32
    decorrelate: bool = False
    density_weight: float = 0.0
    density_k: int = 5
    top_k: int = 3
    seed: int = 0
    # per-key state (windows, residual averages, open episodes)
    key_ttl: int | None = None
    max_keys: int | None = 100_000

    def __post_init__(self) -> None:
        _positive("n_channels", self.n_channels)
        _positive("window", self.window)
        _positive("batch_size", self.batch_size)
        _positive("learn_steps", self.learn_steps)
        _positive("top_k", self.top_k)
        _at_least("warmup", self.warmup, 0)
        _at_least("memory_size", self.memory_size, 0)
        _at_least("fit_steps", self.fit_steps, 0)
        _at_least("penalty_weight", self.penalty_weight, 0.0)
        _at_least("denoise_sigma", self.denoise_sigma, 0.0)
        if not self.learning_rate > 0:
            raise ConfigError("learning_rate", f"must be > 0, got {self.learning_rate}")
        if not 0 < self.smoothing <= 1:
            raise ConfigError("smoothing", f"must be in (0, 1], got {self.smoothing}")
        if self.slow_smoothing is not None and not 0 < self.slow_smoothing < self.smoothing:
            raise ConfigError("slow_smoothing", f"must be below smoothing ({self.smoothing}), got "
                                                f"{self.slow_smoothing} (set it lower, or none for one scale)")
        _positive("episode_quiet", self.episode_quiet)
        if self.episode_hold is not None and not 0 < self.episode_hold <= 1:
            raise ConfigError("episode_hold", f"must be in (0, 1] (a share of the threshold), got {self.episode_hold}")
        if self.escalate is not None and not self.escalate > 1:
            raise ConfigError("escalate", f"must be > 1 (a factor over the episode's peak score), got {self.escalate}")
        if self.key_ttl is not None:
            _positive("key_ttl", self.key_ttl)
        if self.max_keys is not None:
            _positive("max_keys", self.max_keys)
        if self.adapt_after is not None:
            _positive("adapt_after", self.adapt_after)
        if self.accept_plateau is not None:
            _at_least("accept_plateau", self.accept_plateau, 2)
        _at_least("adapt_steps", self.adapt_steps, 0)
        if self.stats_horizon is not None and self.stats_horizon < self.batch_size:
            raise ConfigError("stats_horizon", "must hold at least one batch_size of events")
        if not self.clip > 0:
            raise ConfigError("clip", f"must be > 0, got {self.clip}")
        if self.score_aggregate not in ("mean", "max"):
            raise ConfigError("score_aggregate", f"must be 'mean' or 'max', got {self.score_aggregate!r}")
        if self.threshold_rule not in ("sigma", "quantile", "spot"):
            raise ConfigError("threshold_rule",
                              f"must be 'sigma', 'quantile' or 'spot', got {self.threshold_rule!r}")
        if not 0 < self.threshold_risk < 1:
            raise ConfigError("threshold_risk", f"must be in (0, 1), got {self.threshold_risk}")
        if self.alert_budget is not None:
            if not 0 < self.alert_budget < 5000:
                raise ConfigError("alert_budget",
                                  f"must be in (0, 5000) alerts per 10,000 events, got {self.alert_budget}")
            if self.threshold_rule != "spot":
                raise ConfigError("alert_budget",
                                  "is a budget for threshold_rule 'spot' (set it, or unset alert_budget)")
        if not 0 < self.threshold_quantile < 1:
            raise ConfigError("threshold_quantile", f"must be in (0, 1), got {self.threshold_quantile}")
        if not self.threshold_margin > 0:
            raise ConfigError("threshold_margin", f"must be > 0, got {self.threshold_margin}")
        if not self.density_weight >= 0:
            raise ConfigError("density_weight",
                              f"must be >= 0 (0: reconstruction error alone), got {self.density_weight}")
        if self.density_k < 1:
            raise ConfigError("density_k", f"must be >= 1, got {self.density_k}")
        if not self.threshold_k > 0:
            raise ConfigError("threshold_k", f"must be > 0, got {self.threshold_k}")
        if self.threshold_window < self.batch_size:
            raise ConfigError("threshold_window", "must hold at least one batch_size of events")
        if self.output_activation not in ("sigmoid", "identity"):
            raise ConfigError("output_activation", f"must be 'sigmoid' or 'identity', got {self.output_activation!r}")
        if self.loss not in (None, "mse", "bce"):
            raise ConfigError("loss", f"must be 'mse' or 'bce', got {self.loss!r}")
        if self.penalty not in ("l1", "l2"):
            raise ConfigError("penalty", f"must be 'l1' or 'l2', got {self.penalty!r}")
        if self.scaling not in (None, "minmax", "standard"):
            raise ConfigError("scaling", f"must be 'minmax' or 'standard', got {self.scaling!r}")
        if self.resolved_loss == "bce" and self.output_activation != "sigmoid":
            raise ConfigError("loss", "'bce' needs output_activation='sigmoid' (targets and outputs in [0, 1])")
        if self.resolved_loss == "bce" and self.resolved_scaling != "minmax":
            raise ConfigError("scaling", "'bce' needs 'minmax' scaling to keep targets in [0, 1]")
        if any(h < 1 for h in self.hidden):
            raise ConfigError("hidden", f"every layer needs at least one unit, got {self.hidden}")
        if not 1 <= self.resolved_bottleneck < self.n_features:
            raise ConfigError(
                "bottleneck",
                f"must be in [1, {self.n_features}) (fewer units than input features), "
                f"got {self.resolved_bottleneck}",
            )
        if self.channel_names is not None and len(self.channel_names) != self.n_channels:
            raise ConfigError(
                "channel_names", f"{len(self.channel_names)} names for {self.n_channels} channels"
            )

    @property
    def n_features(self) -> int:
        """Width of the model input: channels times window."""
        return self.n_channels * self.window

    @property
    def score_width(self) -> int:
        """Columns the scorer follows: the model input's, and the density signal's when it is on."""
        return self.n_features + (self.density_weight > 0)

    @property
    def resolved_loss(self) -> Loss:
        return self.loss or ("bce" if self.output_activation == "sigmoid" else "mse")

    @property
    def resolved_scaling(self) -> Scaling:
        return self.scaling or ("minmax" if self.output_activation == "sigmoid" else "standard")

    @property
    def resolved_bottleneck(self) -> int:
        if self.bottleneck is not None:
            return self.bottleneck
        return max(1, min(self.n_features - 1, (self.n_features + 2) // 3))

    @property
    def names(self) -> tuple[str, ...]:
        """Channel names, ``x0..`` when none were given."""
        return self.channel_names or tuple(f"x{i}" for i in range(self.n_channels))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], "unknown detector setting")
        values = dict(data)
        for key in ("hidden", "channel_names"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(name, f"must be >= {low}, got {value!r}")
