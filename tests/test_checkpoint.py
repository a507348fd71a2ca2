"""Checkpoints: full round trip, and loud refusal of anything else."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch

from ae_core import AutoencoderDetector, CheckpointError, load_detector, save_detector
from ae_core.checkpoint import MAGIC, detector_state, dumps, loads, restore_detector
from tests.helpers import config, correlated


@pytest.fixture
def saved(tmp_path):
    det = AutoencoderDetector(config("window"))
    det.process_many(correlated(300, 2), np.array(["a", "b"] * 150))
    path = tmp_path / "det.ckpt"
    save_detector(det, path)
    return det, path


def test_restored_detector_continues_identically(saved) -> None:
    det, path = saved
    twin = load_detector(path)
    nxt = correlated(130, 2, seed=9)
    keys = np.array(["a", "b"] * 65)
    a, b = det.process_many(nxt, keys), twin.process_many(nxt, keys)
    np.testing.assert_array_equal(a.score, b.score)
    assert twin.config == det.config and twin.events_seen == det.events_seen


def test_truncated_file_is_refused(saved) -> None:
    _, path = saved
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_detector(path)


def test_flipped_byte_is_refused(saved) -> None:
    _, path = saved
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_detector(path)


def test_foreign_files_are_refused(tmp_path) -> None:
    foreign = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an ae-worker"):
        load_detector(foreign)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_detector(tmp_path / "missing.ckpt")


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_never_executed(capsys) -> None:
    payload = pickle.dumps({"format": "ae-worker/detector", "x": _Exploit()})
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    with pytest.raises(CheckpointError, match="unreadable"):
        loads(blob)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_version_and_inconsistent_state_are_refused() -> None:
    det = AutoencoderDetector(config("default"))
    state = detector_state(det)
    state["version"] = 99
    with pytest.raises(CheckpointError, match="version 99"):
        restore_detector(state)
    state = detector_state(det)
    state["config"]["n_channels"] = 6  # network weights no longer fit
    with pytest.raises(CheckpointError, match="inconsistent"):
        restore_detector(state)


def test_dumps_is_deterministic_for_equal_state() -> None:
    a = AutoencoderDetector(config("default"))
    b = AutoencoderDetector(config("default"))
    assert dumps(a) == dumps(b)
