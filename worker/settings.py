"""Service settings: pydantic-settings models read once at the edge (the CLI) and passed down.

Every setting reads from the environment with the prefix ``AE_`` and ``__`` between nested
names (``AE_DETECTOR__THRESHOLD_K=5``), or from a ``.env`` file; command-line flags override both.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from dotenv import dotenv_values
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from ae_core import ConfigError, DetectorConfig
from worker.errors import SettingsError

ENV_PREFIX = "AE_"
T = TypeVar("T")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _none_word(value: object) -> object:
    if isinstance(value, str) and value.strip().lower() in ("none", "null", "off"):
        return None
    return value


# An optional number: "none" (also "off", "null") from the environment or a flag unsets it.
OptionalInt = Annotated[int | None, BeforeValidator(_none_word)]
OptionalFloat = Annotated[float | None, BeforeValidator(_none_word)]

# "a,b,c" from the environment or a flag; a JSON list or tuple from code. NoDecode keeps
# pydantic-settings from parsing the environment value as JSON first.
CommaSeparated = Annotated[tuple[T, ...], NoDecode, BeforeValidator(_split_commas)]


class DetectorSettings(BaseModel):
    """Model, learning and threshold settings; see :class:`ae_core.DetectorConfig`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(1, ge=1, description="sliding window W: the model sees the last W readings of a key")
    hidden: CommaSeparated[int] = Field((32, 16), description="hidden layer widths, encoder side")
    bottleneck: int | None = Field(None, ge=1, description="bottleneck width q < n (default about n/3)")
    output_activation: Literal["sigmoid", "identity"] = Field(
        "identity", description="sigmoid for [0,1] inputs (BCE), identity for unbounded (MSE)")
    loss: Literal["mse", "bce"] | None = Field(None, description="default: bce for sigmoid, mse for identity")
    penalty: Literal["l2", "l1"] = Field("l2", description="weight penalty: l2 (sum of squares) or l1")
    penalty_weight: float = Field(1e-5, ge=0, description="lambda of the penalty over every weight and bias")
    denoise_sigma: float = Field(0.0, ge=0, description="Gaussian input noise while training (denoising AE)")
    learning_rate: float = Field(3e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(256, ge=1, description="events per learning step")
    learn_steps: int = Field(2, ge=1, description="optimisation steps per mini-batch")
    fit_steps: int = Field(256, ge=0, description="steps on the remembered warm-up events when warm-up ends")
    memory_size: int = Field(1024, ge=0, description="recent normal events rehearsed in later steps")
    scaling: Literal["minmax", "standard"] | None = Field(
        None, description="online scaling; default: minmax for sigmoid, standard for identity")
    learn_on_anomalies: bool = Field(False, description="also learn from flagged events")
    stats_horizon: OptionalInt = Field(10_000, ge=1, description="events the running statistics remember "
                                       "(scaling, residual spread); none = all")
    clip: float = Field(20.0, gt=0, description="standardised inputs and residuals are clipped (and learned "
                        "winsorised) at this many standard deviations")
    warmup: int = Field(400, ge=0, description="events learned but never judged at the start (score null)")
    smoothing: float = Field(0.3, gt=0, le=1, description="EWMA factor of the residuals per key (1 = none)")
    slow_smoothing: OptionalFloat = Field(None, gt=0, lt=1, description="a second, slower EWMA factor of the "
                                          "residuals per key: the score is the larger of the two scales' (a small "
                                          "lasting deviation stands out of the slow one); below smoothing; none = "
                                          "one scale")
    score_aggregate: Literal["mean", "max"] = Field(
        "mean", description="score from the squared standardised residuals: mean (spread faults) or max "
        "(a fault in one sensor among many)")
    threshold_rule: Literal["sigma", "quantile", "spot"] = Field(
        "sigma", description="sigma: (mean + k*std)^3 of cube roots; quantile: margin * rolling quantile; "
        "spot: the score normal events exceed with probability threshold_risk (a fitted extreme-value tail)")
    threshold_risk: float = Field(1e-3, gt=0, lt=1, description="rule spot: the share of normal events expected "
                                  "above the threshold (1e-3: about 10 flagged normal events per 10,000)")
    alert_budget: OptionalFloat = Field(None, gt=0, lt=5000, description="rule spot: the alerts (what pages a "
                                        "person) allowed per 10,000 events of a detector, in place of threshold_risk "
                                        "(7: about one a day at one event a minute); the alerts raised are counted "
                                        "against it; none = threshold_risk decides")
    threshold_quantile: float = Field(0.99, gt=0, lt=1, description="quantile of normal scores (rule quantile)")
    threshold_margin: float = Field(1.5, gt=0, description="multiplier of that quantile (rule quantile)")
    threshold_k: float = Field(4.0, gt=0, description="threshold = (mean + k*std)^3 of cube-rooted normal scores")
    threshold_window: int = Field(4096, ge=1, description="events the threshold statistics cover")
    episode_quiet: int = Field(100, ge=1, description="events of a key without a flag that close its episode")
    episode_hold: OptionalFloat = Field(None, gt=0, le=1, description="while a key's episode is open (and not "
                                       "accepted), its events stay flagged down to this share of the threshold "
                                       "(hysteresis: a fault whose score dips stays one run of flags; none = off)")
    escalate: OptionalFloat = Field(4.0, gt=1, description="a run of flags that comes back inside a key's open "
                                    "episode pages again (alert) when its score reaches this many times the "
                                    "episode's earlier peak (a real fault after a blip; none = one page per episode)")
    adapt_after: OptionalInt = Field(300, ge=1, description="an episode still open after this many events of "
                                     "its key is accepted as a new normal and learned (none = never)")
    accept_plateau: OptionalInt = Field(120, ge=2, description="an episode whose last this many events were all "
                                        "flagged with a score that stopped changing (a new steady level) is "
                                        "accepted then, before adapt_after (none = only after adapt_after; "
                                        "adapt_after none: never)")
    adapt_steps: int = Field(32, ge=0, description="extra optimisation steps, at the end of the mini-batch in which "
                             "a new normal is accepted, on its flagged events beside remembered normal ones (the "
                             "network catches up with it at once)")
    decorrelate: bool = Field(False, description="score the residuals by their distance under the channels' "
                              "usual correlations (whitened, the multivariate EWMA chart's T-squared): channels "
                              "that move together count once, and a break in how they move together stands "
                              "out; for many correlated channels (server metrics) with a long warm-up")
    density_weight: float = Field(0.0, ge=0, description="weight, in channels, of the density signal beside the "
                                  "residual channels in the score: how isolated an event's bottleneck code is "
                                  "among the remembered normal codes (keeps a fault that recurs rare after the "
                                  "network has learned to reconstruct it; 1 is a good start; 0 = reconstruction "
                                  "error alone)")
    density_k: int = Field(5, ge=1, description="density signal: the nearest remembered codes an event's "
                           "distance, and their own spacing, are taken over")
    top_k: int = Field(3, ge=1, description="contributing channels reported per event")
    seed: int = Field(0, description="seeds weights, sampling and noise: same seed, same output")
    key_ttl: OptionalInt = Field(None, ge=1, description="a key (device) not seen for this many events of its "
                                 "detector is forgotten: its window, residual average and open episode "
                                 "(none = never)")
    max_keys: OptionalInt = Field(100_000, ge=1, description="keys a detector (one partition) keeps state for; "
                                  "beyond it the least recently seen are forgotten (none = no bound)")


    def to_config(self, n_channels: int, channel_names: tuple[str, ...] | None = None) -> DetectorConfig:
        try:
            return DetectorConfig(n_channels=n_channels, channel_names=channel_names, **self.model_dump())
        except ConfigError as exc:
            raise SettingsError(f"{ENV_PREFIX}DETECTOR__{exc.setting.upper()} (--{exc.setting.replace('_', '-')}): "
                                f"{exc}") from exc


class InputSettings(BaseModel):
    """How recordings are read (replay, evaluate, produce)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sep: str | None = Field(None, min_length=1, max_length=1, description="CSV separator (unset: a comma, else "
                            "the first of semicolon, tab or bar in the header)")
    time_column: str | None = Field(None, description="column copied to the output as the event time")
    key_column: str | None = Field(None, description="device id column: separate windows and smoothing")
    label_column: str | None = Field(None, description="0/1 labels, never fed to the model")
    ignore_columns: CommaSeparated[str] = Field((), description="comma-separated columns to leave out")



class KafkaSettings(BaseModel):
    """Where the worker reads and writes, and how it talks to the cluster (env AE_KAFKA__<NAME>)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1, description="host:port[,host:port]")
    input_topics: CommaSeparated[str] = Field(
        ("sensor-readings",), min_length=1, description="topics to consume, comma-separated")
    output_topic: str = Field("anomalies", min_length=1, description="where flagged events are published")
    dlq_topic: str = Field("sensor-readings-dlq", min_length=1, description="malformed events, with the reason")
    changelog_topic: str | None = Field(None, description="compacted topic of partition snapshots "
                                        "(default <group_id>-state; created when missing)")
    group_id: str = Field("ae-worker", min_length=1, description="consumer group: workers of a group share partitions")
    instance_id: str | None = Field(None, min_length=1, max_length=200, description="stable unique name of this "
                                    "worker (e.g. the pod name): static group membership, so a restart within "
                                    "session_timeout_ms keeps its partitions without a rebalance; with exactly_once, "
                                    "its transactional id")
    exactly_once: bool = Field(False, description="one transaction per batch (outputs, snapshots, offsets); "
                               "readers use isolation.level=read_committed")
    transaction_timeout_ms: int = Field(60_000, ge=1000, description="exactly_once: the broker aborts a "
                                        "transaction left open this long (a crashed worker without instance_id)")
    client_id: str = Field("ae-worker", description="client id seen by the brokers")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group without committed offsets starts")
    # Each batch pays a commit and a flush round trip (~7 ms here): through a backlog, 2000 events
    # a batch ran 1.25x as fast as 500 (p50 latency 40 ms, 13 ms); a live stream's batches hold
    # what arrived meanwhile, whatever the bound.
    max_poll_records: int = Field(2000, ge=1, description="most events per mini-batch")
    poll_timeout_ms: int = Field(200, ge=1, description="longest wait for a mini-batch to fill")
    session_timeout_ms: int = Field(10_000, ge=1000, description="group session timeout")
    max_poll_interval_ms: int = Field(300_000, ge=1000, description="longest gap between polls (/healthz)")
    create_topics: bool = Field(False, description="create missing topics instead of failing")
    topic_partitions: int = Field(1, ge=1, description="partitions of topics the worker creates")
    replication_factor: OptionalInt = Field(None, ge=1, description="replication factor of topics the worker "
                                            "creates (none = the broker's default.replication.factor)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="passed to kafka-python as is")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(None, description="SASL")
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret: never logged)")
    ssl_cafile: str | None = Field(None, description="CA bundle (PEM)")
    ssl_certfile: str | None = Field(None, description="client certificate (PEM)")
    ssl_keyfile: str | None = Field(None, description="client key (PEM)")
    ssl_password: SecretStr | None = Field(None, description="client key password (secret: never logged)")
    snapshot_key: SecretStr | None = Field(None, min_length=16, description="signs partition snapshots "
                                           "(HMAC-SHA256): unsigned or wrongly signed ones are refused, so "
                                           "write access to the changelog cannot steer a detector (secret: "
                                           "never logged; the same on every worker of the group)")



class EventSettings(BaseModel):
    """The shape of incoming events (env AE_EVENTS__<NAME>)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: CommaSeparated[str] | None = Field(
        None, description="channel names in model order; required when readings are lists")
    allow_unknown_channels: bool = Field(False, description="ignore extra channels instead of dead-lettering")
    max_event_bytes: int = Field(65_536, ge=16, description="larger events go to the dead-letter topic")
    schema_sample: int = Field(16, ge=1, description="without channels: the key set most common among a "
                               "partition's first this-many valid events fixes its channels")



class ServiceSettings(BaseModel):
    """Run-time behaviour of ``ae-worker run`` (env AE_SERVICE__<NAME>)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics_host: str = Field("127.0.0.1", description="address of the metrics/health endpoint")
    metrics_port: int = Field(9108, ge=0, le=65535, description="Prometheus /metrics, /healthz, /readyz (0 = off)")
    max_events: int | None = Field(None, ge=1, description="exit 0 after this many events")
    idle_timeout: float | None = Field(None, gt=0, description="exit 0 after this many seconds without events while "
                                        "partitions are assigned (waiting for an assignment or for the broker "
                                        "does not count)")
    state_dir: str | None = Field(None, description="also keep each partition's snapshot in this local folder "
                                  "(a cache beside the changelog topic)")
    start_timeout: OptionalFloat = Field(120.0, gt=0, description="seconds to wait for the broker at start-up "
                                        "(a line per retry, /healthz 200, /readyz 503) before exiting with an "
                                        "error (none = wait for ever)")
    snapshot_interval: float = Field(10.0, ge=0, description="seconds between snapshots of a partition's "
                                     "detector to the changelog (0 = every batch)")


class Settings(BaseSettings):
    """All settings of the service."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", env_file=".env", frozen=True, extra="ignore"
    )

    detector: DetectorSettings = DetectorSettings()
    input: InputSettings = InputSettings()
    kafka: KafkaSettings = KafkaSettings()
    events: EventSettings = EventSettings()
    service: ServiceSettings = ServiceSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_json: bool = Field(False, description="one JSON object per log line")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (small networks: 1 is fastest)")

    def secrets(self) -> tuple[str, ...]:
        """The secret values set (passwords, the snapshot key): what the log never shows."""
        k = self.kafka
        return tuple(s.get_secret_value() for s in (k.sasl_password, k.ssl_password, k.snapshot_key) if s)


# Variables with the AE_ prefix that belong to the project's own scripts, not to the settings
# (scripts/kafka/broker.sh, tests/conftest.py, .ci/run): never reported as unknown settings.
TOOL_VARIABLES = frozenset({"AE_KAFKA_HOME", "AE_KAFKA_PORT", "AE_KAFKA_LIBS", "AE_KAFKA_CLUSTER_HOME",
                            "AE_KAFKA_CLUSTER_PORT", "AE_KAFKA_SECURE_HOME", "AE_KAFKA_SECURE_PORT",
                            "AE_KAFKA_SECURE_PARTITIONS", "AE_TEST_BOOTSTRAP", "AE_CI_VENV_ROOT"})


def setting_names() -> list[str]:
    """Every variable that names a setting: ``AE_<NAME>``, ``AE_<SECTION>`` (the whole section as
    JSON) and ``AE_<SECTION>__<NAME>``."""
    names = []
    for name, info in Settings.model_fields.items():
        names.append(ENV_PREFIX + name.upper())
        section = info.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            names += [f"{ENV_PREFIX}{name.upper()}__{field.upper()}" for field in section.model_fields]
    return names


def check_variable_names(environ: Mapping[str, str], env_file: str | Path = ".env") -> None:
    """Raise :class:`SettingsError` for an ``AE_`` variable, in the environment or the ``.env``
    file, that names no setting (a typo would otherwise leave the default in place, silently),
    with the closest valid name."""
    known = set(setting_names()) | TOOL_VARIABLES
    found = [(name, "environment") for name in environ]
    if Path(env_file).is_file():
        found += [(name, f"{env_file} file") for name in dotenv_values(env_file)]
    for name, where in found:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, sorted(known - TOOL_VARIABLES), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SettingsError(f"unknown setting {name} in the {where}{hint}; the settings are listed by "
                                "`ae-worker run --help` and in README.md", location=())


def load_settings(**overrides: object) -> Settings:
    """Settings from env/.env with ``overrides`` (nested dicts, from flags) on top.

    Raises :class:`SettingsError` naming the first invalid setting as an environment variable,
    with its location (section, name) for the caller to name a flag instead; an ``AE_`` variable
    that names no setting is an error too.
    """
    check_variable_names(os.environ)
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        location = tuple(str(part) for part in first["loc"] if not isinstance(part, int))
        name = ENV_PREFIX + "__".join(location).upper()
        raise SettingsError(f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})",
                            location=location, problem=f"{first['msg']} (got {first.get('input')!r})") from exc
    except SourceError as exc:
        raise SettingsError(f"invalid setting: {exc}", location=()) from exc
