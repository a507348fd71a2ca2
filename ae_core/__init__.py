"""ae_core: an online autoencoder anomaly detector for sensor streams (no Kafka, no environment)."""

from __future__ import annotations

from ae_core.checkpoint import load_detector, save_detector
from ae_core.config import DetectorConfig
from ae_core.detector import AutoencoderDetector, BatchResult
from ae_core.errors import AECoreError, CheckpointError, ConfigError, SignatureError

__all__ = [
    "AECoreError",
    "AutoencoderDetector",
    "BatchResult",
    "CheckpointError",
    "SignatureError",
    "ConfigError",
    "DetectorConfig",
    "load_detector",
    "save_detector",
]
