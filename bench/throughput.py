"""Replay throughput: events per second scored and learned, at 8 and 32 features.

    python bench/throughput.py [--events 200000] [--threads 1]

Two numbers per width, both in steady state (the detector is warmed up first, start-up excluded):
``detector``: AutoencoderDetector.process_many on 4096-event chunks (score, decide and learn every
event); ``replay``: the whole ``ae-worker replay`` pipeline from a CSV file to a JSON lines file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_core import AutoencoderDetector, DetectorConfig  # noqa: E402
from worker.pipeline import Replay  # noqa: E402
from worker.settings import (
    DetectorSettings,  # noqa: E402
    InputSettings,
)
from worker.simulate import simulate, write_recording  # noqa: E402
from worker.sinks import JsonLinesSink  # noqa: E402
from worker.sources import Recording  # noqa: E402


def detector_rate(warm: np.ndarray, X: np.ndarray) -> float:
    det = AutoencoderDetector(DetectorConfig(n_channels=X.shape[1]))
    det.process_many(warm)  # warm-up and warm-up fit: start-up, not measured
    started = time.perf_counter()
    for start in range(0, len(X), 4096):
        det.process_many(X[start:start + 4096])
    return len(X) / (time.perf_counter() - started)


def replay_rate(X: np.ndarray, labels: np.ndarray, folder: Path) -> float:
    path = folder / f"rec{X.shape[1]}.csv"
    write_recording(path, X, labels)
    rec = Recording(path, InputSettings(time_column="timestamp", label_column="anomaly"))
    sinks = JsonLinesSink(folder / "out.jsonl"), JsonLinesSink(folder / "err.jsonl")
    summary = Replay(DetectorSettings(), *sinks).run(rec)
    return summary.rows / summary.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.events} events per run")
    with tempfile.TemporaryDirectory() as tmp:
        for width in (8, 32):
            X, labels, _ = simulate(args.events + 20_000, width, seed=0)
            d = detector_rate(X[args.events:], X[: args.events])
            r = replay_rate(X[: args.events], labels[: args.events], Path(tmp))
            print(f"{width:>3} features: detector {d:>9,.0f} events/s   replay CSV->JSONL {r:>9,.0f} events/s")


if __name__ == "__main__":
    main()
