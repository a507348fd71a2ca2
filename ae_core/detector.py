"""The online autoencoder anomaly detector: scaling, network, training step, decisions."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import lfilter
from torch import nn

from ae_core.config import DetectorConfig
from ae_core.losses import add_penalty_gradient, feature_errors
from ae_core.network import Autoencoder
from ae_core.scaling import OnlineScaler
from ae_core.threshold import AdaptiveThreshold
from ae_core.windowing import SlidingWindow

logger = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What :meth:`AutoencoderDetector.process_many` decided for each event of a mini-batch.

    ``score`` is the decision score (the reconstruction error smoothed per key), ``error`` the
    event's own reconstruction error, ``threshold`` NaN during warm-up. ``top_channels`` holds
    channel indices, worst reconstructed first, and ``top_shares`` their share of the error.
    """

    score: np.ndarray
    error: np.ndarray
    threshold: np.ndarray
    is_anomaly: np.ndarray
    top_channels: np.ndarray
    top_shares: np.ndarray
    latent: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.score)

    @staticmethod
    def concat(parts: list[BatchResult], top_k: int) -> BatchResult:
        if not parts:
            empty = np.empty(0)
            return BatchResult(empty, empty, empty, empty.astype(bool),
                               np.empty((0, top_k), dtype=np.int64), np.empty((0, top_k)))
        joined = {f: np.concatenate([getattr(p, f) for p in parts]) if parts[0].latent is not None or f != "latent"
                  else None for f in BatchResult.__dataclass_fields__}
        return BatchResult(**joined)


class AutoencoderDetector:
    """Online autoencoder anomaly detector with a river-like API.

    * :meth:`score_many` / :meth:`score_one`: reconstruction error of model-input vectors; pure.
    * :meth:`learn_many` / :meth:`learn_one`: update the scaler, then one optimisation step
      (``learn_steps`` of them, each rehearsing a sample of recent normal events).
    * :meth:`process_many`: the prequential path for raw channel readings. Every event is scored
      once with the state left by the mini-batches before it, compared with the threshold, and
      buffered; each time ``batch_size`` events have gathered, the not-flagged ones teach the
      scaler, the network and the threshold. Because state changes only at those fixed event
      counts, the outcome does not depend on how a caller cuts the stream into calls.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = AutoencoderDetector(DetectorConfig(n_channels=4, warmup=128, seed=1))
    >>> normal = rng.normal(size=(1024, 2)) @ rng.normal(size=(2, 4))
    >>> _ = det.process_many(normal)
    >>> odd = normal[:3].copy(); odd[:, 0] += 25.0
    >>> det.process_many(odd).is_anomaly.tolist()
    [True, True, True]
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.config = c = config
        self._torch_rng = torch.Generator().manual_seed(c.seed)
        self._rng = np.random.default_rng(c.seed)
        self.module = Autoencoder(c.n_features, c.hidden, c.resolved_bottleneck, c.output_activation)
        _init_weights(self.module, self._torch_rng)
        self._params = list(self.module.parameters())
        self.optimizer = torch.optim.Adam(self._params, lr=c.learning_rate, fused=True)
        self.scaler = OnlineScaler(c.n_features, c.resolved_scaling)
        self.threshold = AdaptiveThreshold(c.threshold_k, max(1, c.threshold_window // c.batch_size))
        self.windows = SlidingWindow(c.window, c.n_channels)
        self.memory = np.zeros((c.memory_size, c.n_features))
        self.memory_count = 0
        self.pending_x = np.zeros((0, c.n_features))
        self.pending_score = np.zeros(0)
        self.pending_flag = np.zeros(0, dtype=bool)
        self.smoothed: dict[str, float] = {}
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
        errors = self._feature_errors(np.asarray(X, dtype=np.float64))
        return errors.mean(axis=1)

    def learn_many(self, X: np.ndarray) -> None:
        self._learn(np.asarray(X, dtype=np.float64))

    def score_one(self, x: dict[str, float]) -> float:
        return float(self.score_many(self._vector(x))[0])

    def learn_one(self, x: dict[str, float]) -> None:
        self.learn_many(self._vector(x))

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Bottleneck representation of model-input rows, shape ``(N, q)``."""
        x = torch.from_numpy(self.scaler.transform(np.asarray(X, dtype=np.float64)).astype(np.float32))
        self._set_training(False)
        with torch.inference_mode():
            return self.module.encode(x).numpy().astype(np.float64)

    def window_features(self, X: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Model-input rows for raw channel rows; advances each key's window."""
        return self.windows.transform(np.asarray(X, dtype=np.float64), keys)

    # -- prequential processing -----------------------------------------------------------------
    def process_many(self, X: np.ndarray, keys: np.ndarray | None = None, latent: bool = False) -> BatchResult:
        """Score, decide, and learn from a mini-batch of raw channel readings, in order.

        ``X`` has shape ``(N, n_channels)`` and only finite values; ``keys`` (optional, one
        string per event) separates the sliding windows and the score smoothing of devices.
        With ``latent`` the result also holds each event's bottleneck code (:meth:`encode`).
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.config.n_channels:
            raise ValueError(f"expected shape (N, {self.config.n_channels}), got {X.shape}")
        if not np.isfinite(X).all():
            raise ValueError("readings must be finite; drop NaN and infinite values upstream")
        key_arr = None if keys is None else np.asarray(keys, dtype=str)
        features = self.window_features(X, key_arr)
        parts, start = [], 0
        while start < len(features):
            room = self.config.batch_size - len(self.pending_score)
            stop = min(len(features), start + room)
            part_keys = None if key_arr is None else key_arr[start:stop]
            parts.append(self._process_segment(features[start:stop], part_keys, latent))
            start = stop
        return BatchResult.concat(parts, self.config.top_k)

    def _process_segment(self, X: np.ndarray, keys: np.ndarray | None, latent: bool) -> BatchResult:
        c = self.config
        codes = self.encode(X) if latent else None
        ferr = self._feature_errors(X)
        error = ferr.mean(axis=1)
        score = self._smooth(error, keys)
        first = self.events_seen
        self.events_seen += len(X)
        live = np.arange(first, self.events_seen) >= c.warmup
        limit = self.threshold.get()
        threshold = np.where(live & (limit is not None), limit if limit is not None else np.nan, np.nan)
        flags = live & (score > threshold)
        top, shares = self._contributions(ferr)
        self.pending_x = np.concatenate([self.pending_x, X])
        self.pending_score = np.concatenate([self.pending_score, score])
        self.pending_flag = np.concatenate([self.pending_flag, flags])
        if len(self.pending_score) >= c.batch_size:
            self._finish_batch()
        return BatchResult(score, error, threshold, flags, top, shares, codes)

    def _finish_batch(self) -> None:
        keep = np.ones_like(self.pending_flag) if self.config.learn_on_anomalies else ~self.pending_flag
        self._learn(self.pending_x[keep])
        # Scores from the first half of the warm-up come from an unfitted scaler and network.
        if self.events_seen > self.config.warmup // 2:
            self.threshold.update_many(self.pending_score[keep])
        self.pending_x = self.pending_x[:0]
        self.pending_score = self.pending_score[:0]
        self.pending_flag = self.pending_flag[:0]

    def _smooth(self, error: np.ndarray, keys: np.ndarray | None) -> np.ndarray:
        a = self.config.smoothing
        if a == 1.0:
            return error
        if keys is None:
            return self._smooth_key("", error)
        out = np.empty_like(error)
        uniq, inverse = np.unique(keys, return_inverse=True)
        for i, key in enumerate(uniq):
            mask = inverse == i
            out[mask] = self._smooth_key(str(key), error[mask])
        return out

    def _smooth_key(self, key: str, error: np.ndarray) -> np.ndarray:
        a = self.config.smoothing
        prev = self.smoothed.get(key, float(error[0]))
        out, _ = lfilter([a], [1.0, a - 1.0], error, zi=[(1.0 - a) * prev])
        self.smoothed[key] = float(out[-1])
        return out

    def _contributions(self, ferr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.config
        per_channel = ferr.reshape(len(ferr), c.window, c.n_channels).sum(axis=1)
        k = min(c.top_k, c.n_channels)
        top = np.argsort(-per_channel, axis=1, kind="stable")[:, :k]
        total = per_channel.sum(axis=1, keepdims=True)
        shares = np.take_along_axis(per_channel, top, axis=1) / np.where(total > 0, total, 1.0)
        return top, shares

    # -- internals --------------------------------------------------------------------------------
    def _vector(self, x: dict[str, float]) -> np.ndarray:
        return np.array([[float(x[name]) for name in self.feature_names]])

    def _feature_errors(self, X: np.ndarray) -> np.ndarray:
        c = self.config
        target = torch.from_numpy(self.scaler.transform(X).astype(np.float32))
        self._set_training(False)
        with torch.inference_mode():
            logits = self.module(target)
            return feature_errors(logits, target, c.resolved_loss, c.output_activation).numpy().astype(np.float64)

    def _learn(self, X: np.ndarray) -> None:
        if len(X) == 0:
            return
        c = self.config
        self.scaler.learn_many(X)
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
            noise = torch.randn(target.shape, generator=self._torch_rng)
            inputs = target + c.denoise_sigma * noise
        self._set_training(True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = feature_errors(self.module(inputs), target, c.resolved_loss, c.output_activation).mean()
        loss.backward()
        add_penalty_gradient(self._params, c.penalty, c.penalty_weight)
        self.optimizer.step()
        self.last_loss = float(loss.detach())

    def _set_training(self, mode: bool) -> None:
        # Module.train() walks every submodule; skip the walk when the mode is already right.
        if self.module.training != mode:
            self.module.train(mode)

    def _remember(self, X: np.ndarray) -> None:
        size = self.config.memory_size
        if size == 0:
            return
        rows = X[-size:]
        positions = (self.memory_count + np.arange(len(rows))) % size
        self.memory[positions] = rows
        self.memory_count += len(rows)


def _init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear initialisation, drawn from a local generator."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
