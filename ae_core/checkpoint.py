"""Save and restore a whole detector as a versioned structure, never as a pickled object.

File layout: the 8-byte magic ``AEWCKPT1``, the SHA-256 of the payload (32 bytes), then the
payload: a ``torch.save`` of plain dicts, lists, numbers, strings and tensors. Loading checks the
magic (a foreign file is refused), the digest (a corrupt or truncated file is refused), and
reads the payload with ``torch.load(weights_only=True)``, which cannot run arbitrary code.

Signed with a secret ``key``, the magic is ``AEWCKPTS`` and the digest an HMAC-SHA256 of the
payload under that key: whoever can write the file (or the changelog topic) but does not hold
the key cannot make a checkpoint that loads. Loading with a key refuses unsigned and wrongly
signed checkpoints; loading a signed one without the key refuses it too (it cannot be checked).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ae_core.config import DetectorConfig
from ae_core.correlation import ChannelCorrelation
from ae_core.detector import AutoencoderDetector
from ae_core.errors import AECoreError, CheckpointError, SignatureError
from ae_core.scaling import OnlineScaler

MAGIC = b"AEWCKPT1"
SIGNED_MAGIC = b"AEWCKPTS"
FORMAT = "ae-worker/detector"
# 3: per-key last-seen counts (key eviction), and per-key arrays as one tensor beside a list of
# keys (a tensor per key made 100,000 devices a 35 MiB snapshot taking 6 s); 4: the threshold's
# summaries exactly as held (a restore was off in the last bits); 5: the density signal (its column
# in the residual statistics); 6: the channels' correlation (decorrelate); 7: whether a new normal
# was accepted in the pending mini-batch (its catch-up steps); 8: the evidence for each shrinkage
# of the correlation; 9: where an open episode's returning run pages again (escalate); 10: the
# alert budget's account of alerts raised and events judged; 2 to 9 are still read, as detectors
# without the signals they did not have (a budget's account starting afresh)
VERSION = 10
READABLE = (2, 3, 4, 5, 6, 7, 8, 9, 10)


def detector_state(det: AutoencoderDetector, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    t = torch.from_numpy
    return {
        "format": FORMAT,
        "metadata": dict(metadata or {}),
        "version": VERSION,
        "config": det.config.to_dict(),
        "module": det.module.state_dict(),
        "optimizer": det.optimizer.state_dict(),
        "torch_rng": det._torch_rng.get_state(),
        "numpy_rng": det._rng.bit_generator.state,
        "scaler": _state_tensors(det.scaler),
        "threshold": det.threshold.state(),
        "windows": _stacked(det.windows.history),
        "memory": t(det.memory[: min(det.memory_count, det.config.memory_size)].copy()),
        "memory_count": det.memory_count,
        "pending_x": t(det.pending_x.copy()),
        "pending_residual": t(det.pending_residual.copy()),
        "pending_smoothed": t(det.pending_smoothed.copy()),
        "pending_score": t(det.pending_score.copy()),
        "pending_flag": t(det.pending_flag.copy()),
        "pending_learn": t(det.pending_learn.copy()),
        "residual_ewma": _stacked(det.scorer.state),
        "keys": det.keys.state(),
        "residual_raw_stats": _state_tensors(det.scorer.raw),
        "residual_stats": _state_tensors(det.scorer.normal),
        **({} if det.scorer.correlation is None else {"residual_correlation": _state_tensors(det.scorer.correlation)}),
        "episodes": det.episodes.state(),
        "regime_changes": det.regime_changes,
        "pending_accepted": det.pending_accepted,
        "pending_alerts": det.pending_alerts,
        "events_seen": det.events_seen,
        "batches_learned": det.batches_learned,
        "last_loss": det.last_loss,
    }


def restore_detector(state: dict[str, Any]) -> AutoencoderDetector:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError("not an ae-worker detector checkpoint")
    if state.get("version") not in READABLE:
        raise CheckpointError(f"checkpoint version {state.get('version')!r} is not supported (expected one of "
                              f"{', '.join(map(str, READABLE))})")
    try:
        config = state["config"]
        if state["version"] < 5:  # saved before the density signal: the detector had none
            config = {**config, "density_weight": 0.0}
        config = {"episode_hold": None, "alert_budget": None, "slow_smoothing": None, "escalate": None,
                  **config}  # saved before these: the detector ran without them
        det = AutoencoderDetector(DetectorConfig.from_dict(config))
        det.module.load_state_dict(state["module"])
        det.optimizer.load_state_dict(state["optimizer"])
        det._torch_rng.set_state(state["torch_rng"])
        det._rng.bit_generator.state = state["numpy_rng"]
        det.scaler.load_state(_state_arrays(state["scaler"]))
        det.threshold.load_state(state["threshold"])
        det.windows.history = _unstacked(state["windows"], state["version"])
        memory = state["memory"].numpy()
        det.memory[: len(memory)] = memory
        det.memory_count = int(state["memory_count"])
        det.pending_x = state["pending_x"].numpy().copy()
        det.pending_residual = state["pending_residual"].numpy().copy()
        det.pending_smoothed = state["pending_smoothed"].numpy().copy()
        det.pending_score = state["pending_score"].numpy().copy()
        det.pending_flag = state["pending_flag"].numpy().copy()
        det.pending_learn = state["pending_learn"].numpy().copy()
        det.scorer.state = _unstacked(state["residual_ewma"], state["version"])
        det.scorer.raw.load_state(_state_arrays(state["residual_raw_stats"]))
        det.scorer.normal.load_state(_state_arrays(state["residual_stats"]))
        if det.scorer.correlation is not None:
            det.scorer.correlation.load_state(_state_arrays(state["residual_correlation"]))
        det.episodes.load_state(state["episodes"])
        det.regime_changes = int(state["regime_changes"])
        # (versions before 7 caught up in every mini-batch of an accepted episode, and kept no mark)
        det.pending_accepted = bool(state.get("pending_accepted", False))
        det.pending_alerts = int(state.get("pending_alerts", 0))  # (versions before 10 kept no account)
        det.events_seen = int(state["events_seen"])
        det.batches_learned = int(state["batches_learned"])
        det.last_loss = state["last_loss"]
        if "keys" in state:  # version 2 has none: its keys are tracked from their next event
            det.keys.load_state(state["keys"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, AECoreError) as exc:
        raise CheckpointError(f"checkpoint is inconsistent: {type(exc).__name__}: {exc}") from exc
    return det


def _stacked(per_key: dict[str, np.ndarray]) -> dict[str, Any]:
    """Arrays of one shape per key as ``{"keys": [...], "values": tensor (keys, ...)}``."""
    keys = list(per_key)
    values = np.stack([per_key[k] for k in keys]) if keys else np.empty(0)
    return {"keys": keys, "values": torch.from_numpy(values)}


def _unstacked(saved: dict[str, Any], version: int) -> dict[str, np.ndarray]:
    """Per-key arrays back from :func:`_stacked`, or from version 2's tensor per key."""
    if version >= 3:
        keys, values = saved["keys"], saved["values"].numpy()
        if len(keys) != (len(values) if keys else 0):
            raise ValueError(f"{len(keys)} keys for {len(values)} per-key rows")
        return {str(k): row.copy() for k, row in zip(keys, values)}
    return {str(k): v.numpy().copy() for k, v in saved.items()}


def _state_tensors(stats: OnlineScaler | ChannelCorrelation) -> dict[str, torch.Tensor]:
    """Running statistics' state (a count ``n`` and arrays) as tensors."""
    return {k: torch.from_numpy(np.atleast_1d(np.asarray(v, dtype=np.float64))) for k, v in stats.state().items()}


def _state_arrays(tensors: dict[str, torch.Tensor]) -> dict[str, object]:
    state: dict[str, object] = {k: v.numpy() for k, v in tensors.items()}
    state["n"] = float(tensors["n"][0])
    return state


def dumps(det: AutoencoderDetector, metadata: dict[str, Any] | None = None, key: bytes | None = None) -> bytes:
    """The checkpoint as bytes; ``metadata`` (plain values) is stored beside the detector. With
    ``key`` it is signed (HMAC-SHA256) instead of only checksummed."""
    buffer = io.BytesIO()
    torch.save(detector_state(det, metadata), buffer)
    payload = buffer.getvalue()
    if key is not None:
        return SIGNED_MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload
    return MAGIC + hashlib.sha256(payload).digest() + payload


def loads(blob: bytes, key: bytes | None = None) -> AutoencoderDetector:
    return loads_with_metadata(blob, key)[0]


def loads_with_metadata(blob: bytes, key: bytes | None = None) -> tuple[AutoencoderDetector, dict[str, Any]]:
    """The detector and its metadata; with ``key`` only a checkpoint signed with that key loads."""
    magic, digest, payload = blob[:len(MAGIC)], blob[len(MAGIC): len(MAGIC) + 32], blob[len(MAGIC) + 32:]
    if magic not in (MAGIC, SIGNED_MAGIC):
        raise CheckpointError("not an ae-worker detector checkpoint (bad magic bytes)")
    if magic == SIGNED_MAGIC and key is None:
        raise SignatureError("checkpoint is signed and no key is set to check it (set the snapshot key)")
    if magic == MAGIC and key is not None:
        raise SignatureError("checkpoint is not signed and a key is set: unsigned checkpoints are refused")
    if key is not None:
        if not hmac.compare_digest(hmac.new(key, payload, hashlib.sha256).digest(), digest):
            raise SignatureError("checkpoint signature does not match (signed with another key, altered, or forged)")
    elif hashlib.sha256(payload).digest() != digest:
        raise CheckpointError("checkpoint is corrupt or truncated (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad archive; all mean the same here
        raise CheckpointError(f"checkpoint payload is unreadable: {exc}") from exc
    metadata = state.get("metadata", {}) if isinstance(state, dict) else {}
    return restore_detector(state), dict(metadata)


def save_detector(det: AutoencoderDetector, path: str | os.PathLike[str],
                  metadata: dict[str, Any] | None = None, key: bytes | None = None) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint in place."""
    write_blob(dumps(det, metadata, key), path)


def write_blob(blob: bytes, path: str | os.PathLike[str]) -> None:
    """Write checkpoint bytes (from :func:`dumps`) atomically."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_detector(path: str | os.PathLike[str], key: bytes | None = None) -> AutoencoderDetector:
    return load_detector_with_metadata(path, key)[0]


def load_detector_with_metadata(path: str | os.PathLike[str],
                                key: bytes | None = None) -> tuple[AutoencoderDetector, dict[str, Any]]:
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        return loads_with_metadata(blob, key)
    except CheckpointError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
