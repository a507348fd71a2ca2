"""The online autoencoder anomaly detector: scaling, network, training step, decisions."""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (see below)
from river.base import AnomalyDetector
from torch import nn

from ae_core.backprop import adam_step, set_gradients
from ae_core.config import MAX_ABS_READING, DetectorConfig
from ae_core.density import Reference, cross_outlier_ratio
from ae_core.episodes import ClosedEpisode, EpisodeTracker
from ae_core.errors import ConfigError
from ae_core.keys import KeyTracker
from ae_core.losses import add_penalty_gradient, feature_errors
from ae_core.network import Autoencoder, activate
from ae_core.scaling import OnlineScaler
from ae_core.scoring import QUIET_SCORE, ResidualScorer
from ae_core.single_event import SingleEventForward
from ae_core.threshold import AdaptiveThreshold, QuantileThreshold, SpotThreshold
from ae_core.windowing import SlidingWindow

# torch.optim imports torch._dynamo at the first optimisation step: seconds, and ~140,000 Python
# objects. Imported with the detector, both land at start-up, not in a batch, and a process that
# then freezes its imports out of the garbage collector's sight (worker.cli) freezes these too:
# left to the first step, every full collection walked them (a replay: 0.5 s per 100,000 events).

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What :meth:`AutoencoderDetector.process_many` decided for each event of a mini-batch.

    ``score`` is the decision score (see :mod:`ae_core.scoring`), ``error`` the event's own
    reconstruction error (MSE or BCE); both ``score`` and ``threshold`` are NaN during warm-up,
    when the model is not judged yet. ``top_channels`` holds channel indices, largest share of
    the score first, and ``top_shares`` those shares. ``episode``, ``alert``, ``closed_episode``
    and ``regime_change`` come from :class:`~ae_core.episodes.EpisodeTracker` (-1: none);
    ``closed`` maps a row to the episode it closed.
    """

    score: np.ndarray
    error: np.ndarray
    threshold: np.ndarray
    is_anomaly: np.ndarray
    top_channels: np.ndarray
    top_shares: np.ndarray
    episode: np.ndarray
    alert: np.ndarray
    closed_episode: np.ndarray
    regime_change: np.ndarray
    latent: np.ndarray | None = None
    closed: dict[int, ClosedEpisode] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def concat(parts: list[BatchResult]) -> BatchResult:
        joined: dict[str, Any] = {
            f.name: None if getattr(parts[0], f.name) is None
            else np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(BatchResult) if f.name != "closed"
        }
        closed, offset = {}, 0
        for part in parts:
            closed.update({offset + row: ep for row, ep in part.closed.items()})
            offset += len(part)
        return BatchResult(**joined, closed=closed)

    @staticmethod
    def empty(top_k: int, latent_width: int | None) -> BatchResult:
        none, flags = np.empty(0), np.empty(0, dtype=bool)
        ids = np.empty(0, dtype=np.int64)
        return BatchResult(none, none, none, flags, np.empty((0, top_k), dtype=np.int64), np.empty((0, top_k)),
                           ids, flags, ids, flags, None if latent_width is None else np.empty((0, latent_width)))


class AutoencoderDetector(AnomalyDetector):
    """Online autoencoder anomaly detector; a river anomaly detector (usable in a river pipeline).

    * :meth:`score_many` / :meth:`score_one`: reconstruction error of model-input vectors; pure.
    * :meth:`learn_many` / :meth:`learn_one`: update the scaler, then one optimisation step
      (and ``learn_steps - 1`` more, each rehearsing a sample of remembered normal events).
    * :meth:`process_many`: the prequential path for raw channel readings. Every event is scored
      once with the state left by the mini-batches before it, compared with the threshold, and
      buffered; each time ``batch_size`` events have gathered, the not-flagged ones teach the
      scaler, the network, the score statistics and the threshold. State changes only at those
      fixed event counts, so the outcome does not depend on how a caller cuts the stream.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = AutoencoderDetector(DetectorConfig(n_channels=4, warmup=256, seed=1))
    >>> normal = rng.normal(size=(1024, 2)) @ rng.normal(size=(2, 4))
    >>> _ = det.process_many(normal)
    >>> odd = normal[:3].copy(); odd[:, 0] += 25.0
    >>> det.process_many(odd).is_anomaly.tolist()
    [True, True, True]
    """

    def __init__(self, config: DetectorConfig | None = None, **params: Any) -> None:
        known = {f.name for f in fields(DetectorConfig)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TypeError(f"AutoencoderDetector got an unknown hyperparameter {unknown[0]!r}")
        self.params = params
        self.config = config  # type: ignore[assignment]  (None until the first event fixes the width)
        self._learn_buffer: list[np.ndarray] = []
        self._keys: tuple[Any, ...] | None = None  # the first dict's keys, when it fixed the channels
        if config is not None:
            self._build(replace(config, **params) if params else config)
        elif "n_channels" in params:
            self._build(DetectorConfig(**params))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with the torch generator's state as bytes: a Generator pickles a fresh tensor
        whose storage key is a memory address, so two pickles of one detector would differ."""
        state = self.__dict__.copy()
        state["_single"] = None  # a cache (with buffers of the last event scored): rebuilt on use
        state["_reference_codes"] = None  # a cache: rebuilt on use
        if "_torch_rng" in state:
            state["_torch_rng"] = state["_torch_rng"].get_state().numpy().tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("_torch_rng"), bytes):
            rng = torch.Generator()
            rng.set_state(torch.frombuffer(bytearray(state["_torch_rng"]), dtype=torch.uint8))
            state["_torch_rng"] = rng
        state.setdefault("_reference_codes", None)  # (caches a pickle made before them lacks)
        state.setdefault("_warned_foreign", False)
        state.setdefault("pending_accepted", False)  # (a pickle from before the catch-up mark)
        state.setdefault("pending_alerts", 0)
        self.__dict__.update(state)

    @classmethod
    def _unit_test_params(cls) -> Any:
        """Small settings for river's estimator checks."""
        yield {"warmup": 32, "batch_size": 16, "fit_steps": 8, "memory_size": 64, "hidden": (8,)}

    @property
    def built(self) -> bool:
        """Whether the input width is known (given, or learned from the first event)."""
        return self.config is not None

    def _build_for(self, n_channels: int, names: tuple[str, ...] | None = None) -> None:
        """Fix the width from the first event when the detector was made without one."""
        if not self.built:
            self._build(DetectorConfig(**{**self.params, "n_channels": n_channels, "channel_names": names}))

    def _build(self, config: DetectorConfig) -> None:
        self.config = c = config
        self._single: SingleEventForward | None = None  # score_one's copy; dropped when weights or scaling change
        self._torch_rng = torch.Generator().manual_seed(c.seed)
        self._rng = np.random.default_rng(c.seed)
        self.module = Autoencoder(c.n_features, c.hidden, c.resolved_bottleneck, c.output_activation)
        _init_weights(self.module, self._torch_rng)
        self._params = list(self.module.parameters())
        self.optimizer = torch.optim.Adam(self._params, lr=c.learning_rate, fused=True)
        self.scaler = OnlineScaler(c.n_features, c.resolved_scaling, c.clip, c.stats_horizon)
        self.scorer = ResidualScorer(c.n_features, c.smoothing, c.clip, c.stats_horizon, c.score_aggregate,
                                     c.density_weight, c.slow_smoothing, c.decorrelate, c.window)
        self._reference_codes: Reference | None = None  # the memory's codes; dropped when either changes
        self._warned_foreign = False  # said once that an event held none of the channels
        self.episodes = EpisodeTracker(c.episode_quiet, c.adapt_after, c.accept_plateau, c.escalate)
        self.threshold: AdaptiveThreshold | QuantileThreshold | SpotThreshold
        sigma = AdaptiveThreshold(c.threshold_k, max(1, c.threshold_window // c.batch_size))
        if c.threshold_rule == "quantile":
            self.threshold = QuantileThreshold(c.threshold_quantile, c.threshold_margin, c.threshold_window,
                                               c.batch_size)
        elif c.threshold_rule == "spot":
            budget = None if c.alert_budget is None else c.alert_budget / 10_000
            self.threshold = SpotThreshold(c.threshold_risk, c.threshold_window, fallback=sigma, alert_budget=budget,
                                           run=c.episode_quiet)
        else:
            self.threshold = sigma
        self.windows = SlidingWindow(c.window, c.n_channels)
        self.keys = KeyTracker(c.key_ttl, c.max_keys)
        self.memory = np.zeros((c.memory_size, c.n_features))
        self.memory_count = 0
        self.pending_x = np.zeros((0, c.n_features))
        self.pending_residual = np.zeros((0, c.score_width))
        self.pending_smoothed = np.zeros((0, self.scorer.smoothed_width))
        self.pending_score = np.zeros(0)
        self.pending_flag = np.zeros(0, dtype=bool)
        self.pending_learn = np.zeros(0, dtype=bool)
        self.regime_changes = 0
        self.pending_accepted = False  # a new normal was accepted in the pending mini-batch
        self.pending_alerts = 0  # alerts raised in the pending mini-batch (the alert budget's account)
        self.events_seen = 0
        self.batches_learned = 0
        self.last_loss: float | None = None

    # -- river-like API on model-input vectors -------------------------------------------------
    @property
    def feature_names(self) -> tuple[str, ...]:
        names, w = self.config.names, self.config.window
        if w == 1:
            return names
        return tuple(f"{n}[t-{lag}]" for lag in range(w - 1, -1, -1) for n in names)

    def score_many(self, X: np.ndarray) -> np.ndarray:
        """Reconstruction error of each row; changes nothing."""
        X = np.asarray(X, dtype=np.float64)
        self._build_for(X.shape[1])
        return self._reconstruct(X)[1].mean(axis=1)

    def learn_many(self, X: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        self._build_for(X.shape[1])
        self._learn(X)

    def score_one(self, x: dict[Any, Any]) -> float:
        """:meth:`score_many` of one event, through a NumPy copy of the network
        (:class:`~ae_core.single_event.SingleEventForward`): a torch call costs more than the arithmetic."""
        vector = self._vector(x)
        if self._single is None:
            c = self.config
            self._single = SingleEventForward(self.module, self.scaler.affine(), c.resolved_loss, c.output_activation)
        return self._single.error(vector)

    def learn_one(self, x: dict[Any, Any]) -> None:
        """Buffer the event; every ``batch_size`` events, one :meth:`learn_many` step on them (a
        step per event would cost a full optimisation step each). The buffer is not checkpointed."""
        self._learn_buffer.append(self._vector(x))
        if len(self._learn_buffer) >= self.config.batch_size:
            self.learn_many(np.vstack(self._learn_buffer))
            self._learn_buffer.clear()

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Bottleneck representation of model-input rows, shape ``(N, q)``."""
        x = torch.from_numpy(self.scaler.transform(np.asarray(X, dtype=np.float64)).astype(np.float32))
        with torch.inference_mode():
            return self.module.encode(x).numpy().astype(np.float64)

    # -- prequential processing -----------------------------------------------------------------
    def process_many(self, X: np.ndarray, keys: np.ndarray | None = None, latent: bool = False) -> BatchResult:
        """Score, decide, and learn from a mini-batch of raw channel readings, in order.

        ``X`` has shape ``(N, n_channels)`` and finite values within ``MAX_ABS_READING``; ``keys`` (one
        string per event) separates the sliding windows and the score smoothing of devices.
        With ``latent`` the result also holds each event's bottleneck code (:meth:`encode`).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 2:
            self._build_for(X.shape[1])
        c = self.config
        if X.ndim != 2 or X.shape[1] != c.n_channels:
            raise ValueError(f"expected shape (N, {c.n_channels}), got {X.shape}")
        if not (np.abs(X) <= MAX_ABS_READING).all():  # also False for NaN
            raise ValueError(f"readings must be finite and within +-{MAX_ABS_READING:g}; drop others upstream")
        if len(X) == 0:
            return BatchResult.empty(min(c.top_k, c.n_channels), c.resolved_bottleneck if latent else None)
        key_arr = None if keys is None else np.asarray(keys, dtype=str)
        parts, start = [], 0
        while True:
            room = c.batch_size - len(self.pending_score)
            if self.events_seen < c.warmup:
                room = min(room, c.warmup - self.events_seen)
            stop = min(len(X), start + room)
            part_keys = None if key_arr is None else key_arr[start:stop]
            # per segment: keys are forgotten at batch ends, before the next segment's windows
            features = self.windows.transform(X[start:stop], part_keys)
            parts.append(self._process_segment(features, part_keys, latent))
            start = stop
            if start >= len(X):
                return BatchResult.concat(parts)

    def _process_segment(self, X: np.ndarray, keys: np.ndarray | None, latent: bool) -> BatchResult:
        c = self.config
        # Float32 kernels may round differently for different row counts; scoring every event
        # at its fixed slot of a full batch-sized matrix makes results independent of the cuts.
        offset = len(self.pending_score)
        padded = np.zeros((c.batch_size, c.n_features))
        padded[offset:offset + len(X)] = X
        residuals, ferr, codes = self._reconstruct(padded)
        if c.density_weight:  # (over the whole padded batch too: distances of a fixed number of rows)
            residuals = np.column_stack([residuals, self._reference().outlier_ratio(codes)])
        residuals, ferr, codes = (a[offset:offset + len(X)] for a in (residuals, ferr, codes))
        smoothed = self.scorer.smooth(self.scorer.standardise(residuals), keys)
        deviations = self.scorer.squared_deviations(smoothed)
        first = self.events_seen
        self.events_seen += len(X)
        if keys is not None:
            self.keys.seen(keys.tolist(), first)
        limit = self._limit()
        live = np.arange(first, self.events_seen) >= c.warmup
        aggregate, channel_deviations = self.scorer.score_and_channels(deviations)
        score = np.where(live, aggregate, np.nan)
        threshold = np.where(live, np.nan if limit is None else limit, np.nan)
        flags = live & (score > threshold)
        hold = None if limit is None or c.episode_hold is None else max(c.episode_hold * limit, QUIET_SCORE)
        episodes = self.episodes.update(flags, score, keys, hold)
        if hold is not None:  # an open episode's events are judged against the hold level
            flags |= episodes.held
            threshold = np.where(episodes.held_level, hold, threshold)
        if episodes.accepted.any():
            self.regime_changes += int(episodes.accepted.sum())
            self.pending_accepted = True
            logger.info("accepting a new normal in episode(s) %s (open adapt_after=%s events, or settled on a "
                        "plateau)", episodes.episode[episodes.accepted].tolist(), c.adapt_after)
        self.pending_alerts += int(episodes.alert.sum())
        top, shares = self._contributions(channel_deviations)
        self.pending_x = np.concatenate([self.pending_x, X])
        self.pending_residual = np.concatenate([self.pending_residual, residuals])
        self.pending_smoothed = np.concatenate([self.pending_smoothed, smoothed])
        self.pending_score = np.concatenate([self.pending_score, score])
        self.pending_flag = np.concatenate([self.pending_flag, flags])
        self.pending_learn = np.concatenate([self.pending_learn, ~flags | episodes.adapting | c.learn_on_anomalies])
        warmup_ends = c.warmup > 0 and self.events_seen == c.warmup
        if len(self.pending_score) >= c.batch_size or warmup_ends:
            self._finish_batch()
        if warmup_ends:
            self._fit_warmup()
        return BatchResult(score, ferr.mean(axis=1), threshold, flags, top, shares, episodes.episode,
                           episodes.alert, episodes.closed, episodes.accepted, codes if latent else None,
                           episodes.closed_episodes)

    def _finish_batch(self) -> None:
        # The network and scaler learn the events that were not flagged, and those of an episode
        # accepted as a new normal: an anomaly does not teach the model that it is normal. The
        # smoothed residuals' statistics and the threshold learn only unflagged events, so an
        # accepted shift stops being flagged once the network reconstructs it, not because the
        # bar was raised. The residuals' own spread (step 1 of the score) learns an accepted
        # episode's events too once the network has caught up with them (mini-batches after the
        # one that accepted it): a channel that was constant until then has a residual spread at
        # the floor, and how well the network reconstructs its new normal is learned from nothing
        # else, since every event of it is flagged against that floor (a binary channel that
        # starts toggling stayed flagged for as long as it toggled).
        normal = ~self.pending_flag
        settled = normal
        if not self.pending_accepted and not self.config.learn_on_anomalies:
            settled = normal | self.pending_learn
        self._learn(self.pending_x[self.pending_learn])
        if self.pending_accepted and not self.config.learn_on_anomalies:
            # A new normal accepted in this mini-batch, its events still flagged: the network is
            # behind it. Extra steps on those events beside the remembered ones catch it up at
            # once without forgetting the old; later mini-batches learn them as any normal events.
            adapting = self.pending_x[self.pending_learn & self.pending_flag]
            if len(adapting):
                self._fit(np.concatenate([adapting, self._remembered()]), self.config.adapt_steps)
        self.pending_accepted = False
        self.scorer.learn_many(self.pending_residual[settled], self.pending_smoothed[normal])
        judged = ~np.isnan(self.pending_score)
        if isinstance(self.threshold, SpotThreshold):
            self.threshold.record(self.pending_alerts, int(judged.sum()))
        self.pending_alerts = 0
        limit = self._limit()
        if self.threshold.censored and limit is not None:
            # every pending event was judged against the same limit (it changes only here)
            self.threshold.update_many(np.minimum(self.pending_score[judged], limit))
        else:
            self.threshold.update_many(self.pending_score[judged & normal])
        self.pending_x = self.pending_x[:0]
        self.pending_residual = self.pending_residual[:0]
        self.pending_smoothed = self.pending_smoothed[:0]
        self.pending_score = self.pending_score[:0]
        self.pending_flag = self.pending_flag[:0]
        self.pending_learn = self.pending_learn[:0]
        self._forget_idle_keys()

    def _limit(self) -> float | None:
        """The threshold in force: the rule's value, never below ``QUIET_SCORE``."""
        limit = self.threshold.get()
        return None if limit is None else max(limit, QUIET_SCORE)

    def _forget_idle_keys(self) -> None:
        """Per-key state of keys not seen for ``key_ttl`` events, or beyond ``max_keys``, is
        dropped at the end of a batch (fixed event counts: the same keys whatever the cuts)."""
        for key in self.keys.expired(self.events_seen):
            self.windows.forget(key)
            self.scorer.forget(key)
            self.episodes.forget(key)

    def _fit_warmup(self) -> None:
        """Consolidate what the warm-up taught, then restart the score statistics and threshold.

        A few learning steps per mini-batch leave the network far from converged after a short
        warm-up, and the statistics full of the untrained model's residuals. So once, when the
        warm-up ends, the network takes ``fit_steps`` steps on samples of the remembered warm-up
        events. The score statistics and the threshold restart from *out-of-sample* residuals of
        those events (each half scored by a network fitted on the other half): residuals of the
        events a network was just fitted on are too small, and a threshold built on them cries
        wolf on the next, unseen events (on SKAB: FAR 14.3% -> 9.6% at k=5, F1 0.771 -> 0.765).
        """
        c = self.config
        rows = self._remembered()
        if len(rows) < 2:
            return
        held_out = self._cross_fitted_residuals(rows) if len(rows) >= 4 else None
        self._fit(rows)
        residuals = held_out if held_out is not None else self._reconstruct(rows)[0]
        if c.density_weight:
            residuals = np.column_stack([residuals, cross_outlier_ratio(self._reconstruct(rows)[2], c.density_k)])
        smoothed = self.scorer.restart(residuals)
        scores = self.scorer.score_and_channels(self.scorer.squared_deviations(smoothed))[0]
        self.threshold.reset()
        for start in range(0, len(scores), c.batch_size):
            self.threshold.update_many(scores[start:start + c.batch_size])

    def _cross_fitted_residuals(self, rows: np.ndarray) -> np.ndarray:
        """Residuals of ``rows`` (time order), each half reconstructed by a network fitted on
        the other half from the current weights; the weights are put back afterwards.

        The optimizer's moments are not put back: they carry on through both fits and into the
        one that follows. Restoring them for each fit moved every data set (``bench/quality.py``:
        SKAB F1 0.723 -> 0.647; ASD AUC-PR 0.209 -> 0.241; NAB 47.5 -> 52.5): a choice for
        leave-one-dataset-out together with the other defaults.
        """
        weights = copy.deepcopy(self.module.state_dict())
        half = len(rows) // 2
        out = []
        for train, test in ((rows[:half], rows[half:]), (rows[half:], rows[:half])):
            self.module.load_state_dict(weights)
            self._fit(train)
            out.append(self._reconstruct(test)[0])
        self.module.load_state_dict(weights)
        return np.concatenate([out[1], out[0]])

    def _fit(self, rows: np.ndarray, steps: int | None = None) -> None:
        """``steps`` (default ``fit_steps``) optimisation steps on random mini-batches of ``rows``."""
        c = self.config
        for _ in range(c.fit_steps if steps is None else steps):
            sample = rows[self._rng.integers(0, len(rows), size=min(c.batch_size, len(rows)))]
            self._step(self.scaler.transform(sample))

    def _contributions(self, deviations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        per_channel = deviations.reshape(len(deviations), c.window, c.n_channels).sum(axis=1)
        k = min(c.top_k, c.n_channels)
        top = np.argsort(-per_channel, axis=1, kind="stable")[:, :k]
        total = per_channel.sum(axis=1, keepdims=True)
        shares = np.take_along_axis(per_channel, top, axis=1) / np.where(total > 0, total, 1.0)
        return top, shares

    # -- learning ---------------------------------------------------------------------------------
    def _reconstruct(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Residuals ``x_hat - x``, per-feature errors and bottleneck codes of rows; changes nothing."""
        c = self.config
        target = torch.from_numpy(self.scaler.transform(X).astype(np.float32))
        with torch.inference_mode():
            codes = self.module.encode(target)
            logits = self.module.decode(codes)
            recon = activate(logits, c.output_activation)
            errors = feature_errors(logits, target, c.resolved_loss, c.output_activation)
            return ((recon - target).numpy().astype(np.float64), errors.numpy().astype(np.float64),
                    codes.numpy().astype(np.float64))

    def _reference(self) -> Reference:
        """Bottleneck codes of the remembered events under the current weights and scaling (cached)."""
        if self._reference_codes is None:
            remembered = self.memory[: min(self.memory_count, self.config.memory_size)]
            self._reference_codes = Reference.of(self._reconstruct(remembered)[2], self.config.density_k)
        return self._reference_codes

    def _learn(self, X: np.ndarray) -> None:
        if len(X) == 0:
            return
        c = self.config
        self.scaler.learn_many(X)
        self._single = None  # the scaling changed
        self._reference_codes = None
        for step in range(c.learn_steps):
            batch = X
            if step > 0 and self.memory_count > 0:
                rows = self._rng.integers(0, min(self.memory_count, c.memory_size), size=len(X))
                batch = np.concatenate([X, self.memory[rows]])
            self._step(self.scaler.transform(batch))
        self._remember(X)
        self.batches_learned += 1

    def _step(self, X: np.ndarray) -> None:
        c = self.config
        target = torch.from_numpy(X.astype(np.float32))
        inputs = target
        if c.denoise_sigma > 0:
            inputs = target + c.denoise_sigma * torch.randn(target.shape, generator=self._torch_rng)
        loss = set_gradients(self.module, inputs, target, c.resolved_loss, c.output_activation)
        add_penalty_gradient(self._params, c.penalty, c.penalty_weight)
        adam_step(self.optimizer)
        self._single = None  # the weights changed
        self._reference_codes = None
        self.last_loss = float(loss)

    def _remember(self, X: np.ndarray) -> None:
        size = self.config.memory_size
        if size == 0:
            return
        rows = X[-size:]
        self._reference_codes = None
        self.memory[(self.memory_count + np.arange(len(rows))) % size] = rows
        self.memory_count += len(rows)

    def _remembered(self) -> np.ndarray:
        """The remembered events, oldest first."""
        size = self.config.memory_size
        if self.memory_count <= size:
            return self.memory[: self.memory_count]
        return np.roll(self.memory, -(self.memory_count % size), axis=0)

    def _vector(self, x: dict[Any, Any]) -> np.ndarray:
        """A model-input vector (1-D) from a dict. Made without a width, the detector takes its channels
        from the first dict's keys, sorted, so the order of keys never matters."""
        if not self.built:
            if self.params.get("window", 1) != 1:
                raise ConfigError("window", "a detector made without n_channels learns its width from the first "
                                            "event's keys: dict inputs are model-input vectors, so window must be 1")
            self._keys = tuple(sorted(x, key=str))
            self._build_for(len(self._keys), tuple(str(k) for k in self._keys))
        keys = self._keys or self.feature_names
        try:
            return np.fromiter(map(x.__getitem__, keys), dtype=np.float64, count=len(keys))
        except KeyError:  # a channel missing from this event reads as its running mean (a neutral
            pass          # value); keys the first event did not have are not part of the model
        mean = self.scaler.mean
        if not any(k in x for k in keys) and not self._warned_foreign:
            # every channel missing: the event reads as the running means and scores as normal
            # whatever it holds; most likely the keys are named differently (once per detector)
            self._warned_foreign = True
            logger.warning("an event holds none of the detector's channels (%s; it has %s): it reads as the "
                           "running means; are the keys named as the detector's channels?",
                           ", ".join(map(str, keys[:5])) + (", ..." if len(keys) > 5 else ""),
                           ", ".join(map(str, list(x)[:5])) or "no keys")
        return np.array([float(x[k]) if k in x else float(mean[i]) for i, k in enumerate(keys)])


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, drawn from a local generator."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
