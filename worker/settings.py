"""Service settings: pydantic-settings models read once at the edge (the CLI) and passed down.

Every setting reads from the environment with the prefix ``AE_`` and ``__`` between nested
names (``AE_DETECTOR__THRESHOLD_K=5``), or from a ``.env`` file; command-line flags override both.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from ae_core import ConfigError, DetectorConfig
from worker.errors import SettingsError

ENV_PREFIX = "AE_"


class DetectorSettings(BaseModel):
    """Model, learning and threshold settings; see :class:`ae_core.DetectorConfig`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(1, ge=1, description="sliding window W: the model sees the last W readings of a key")
    hidden: Annotated[tuple[int, ...], NoDecode] = Field((32, 16), description="hidden layer widths, encoder side")
    bottleneck: int | None = Field(None, ge=1, description="bottleneck width q < n (default about n/3)")
    output_activation: Literal["sigmoid", "identity"] = Field(
        "identity", description="sigmoid for [0,1] inputs (BCE), identity for unbounded (MSE)")
    loss: Literal["mse", "bce"] | None = None
    penalty: Literal["l2", "l1"] = "l2"
    penalty_weight: float = Field(1e-5, ge=0)
    denoise_sigma: float = Field(0.0, ge=0, description="Gaussian input noise while training (denoising AE)")
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1, description="events per learning step")
    learn_steps: int = Field(2, ge=1, description="optimisation steps per mini-batch")
    fit_steps: int = Field(256, ge=0, description="steps on the remembered warm-up events when warm-up ends")
    memory_size: int = Field(1024, ge=0, description="recent normal events rehearsed in later steps")
    scaling: Literal["minmax", "standard"] | None = None
    learn_on_anomalies: bool = Field(False, description="also learn from flagged events")
    relearn_rate: float = Field(0.5, gt=0, le=1, description="learn flagged events too once this share of "
                                "the recent stream is flagged (1 = never)")
    warmup: int = Field(256, ge=0, description="events learned but never flagged at the start")
    smoothing: float = Field(0.1, gt=0, le=1, description="EMA factor of the score per key (1 = none)")
    threshold_k: float = Field(4.0, gt=0, description="threshold = exp(mean + k*std) of log-scores")
    threshold_window: int = Field(4096, ge=1, description="events the threshold statistics cover")
    top_k: int = Field(3, ge=1, description="contributing channels reported per event")
    seed: int = 0

    @field_validator("hidden", mode="before")
    @classmethod
    def _split_hidden(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    def to_config(self, n_channels: int, channel_names: tuple[str, ...] | None = None) -> DetectorConfig:
        try:
            return DetectorConfig(n_channels=n_channels, channel_names=channel_names, **self.model_dump())
        except ConfigError as exc:
            raise SettingsError(f"{ENV_PREFIX}DETECTOR__{exc.setting.upper()} (--{exc.setting.replace('_', '-')}): "
                                f"{exc}") from exc


class InputSettings(BaseModel):
    """How recordings are read (replay, evaluate, produce)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sep: str = Field(",", min_length=1, max_length=1)
    time_column: str | None = None
    key_column: str | None = None
    label_column: str | None = None
    ignore_columns: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("ignore_columns", mode="before")
    @classmethod
    def _split_columns(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class Settings(BaseSettings):
    """All settings of the service."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=".env", frozen=True, extra="ignore"
    )

    detector: DetectorSettings = DetectorSettings()
    input: InputSettings = InputSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False


def load_settings(**overrides: object) -> Settings:
    """Settings from env/.env with ``overrides`` (nested dicts, from flags) on top.

    Raises :class:`SettingsError` naming the first invalid setting as an environment variable.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + "__".join(str(part) for part in first["loc"]).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})") from exc
    except SourceError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
