"""Replay throughput, and what per-device state costs.

    python bench/throughput.py [--events 200000] [--threads 1] [--key-events 300000] [--repeat 3]

Per width (8 and 32 features), in steady state (start-up and warm-up excluded), in one run:
``bare torch step``: a plain PyTorch training step (forward, MSE, backward, Adam) of the same
network on the same 256-event batches, nothing else: the speed of the model;
``detector``: AutoencoderDetector.process_many on 4096-event chunks (score, decide and learn every
event); ``replay``: the whole ``ae-worker replay`` from a CSV file to a JSON lines file (steady
state: the second half of the file, timed batch by batch within the replay); and replay as a
fraction of the bare step and of the detector (what reading and writing cost). The three take
turns for ``--repeat`` rounds; each figure is the fastest round's.

Then per number of device keys (1, 10,000, 100,000; each in a fresh process): events/s of the
detector on ``--key-events`` keyed events and the growth of the process's resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_core import AutoencoderDetector, DetectorConfig  # noqa: E402
from worker.cli import settled_garbage_collector  # noqa: E402
from worker.replay.pipeline import Replay  # noqa: E402
from worker.replay.simulate import simulate, write_recording  # noqa: E402
from worker.replay.sinks import JsonLinesSink  # noqa: E402
from worker.replay.sources import Recording, RowBatch  # noqa: E402
from worker.results import RunSummary  # noqa: E402
from worker.settings import DetectorSettings, InputSettings  # noqa: E402

CHUNK = 4096


def bare_step_rate(X: np.ndarray) -> float:
    """A plain training step per 256 events of the detector's network: forward, MSE, backward, Adam."""
    det = AutoencoderDetector(DetectorConfig(n_channels=X.shape[1]))
    module, batch = det.module, det.config.batch_size
    optimizer = torch.optim.Adam(module.parameters(), lr=det.config.learning_rate)
    scaled = torch.from_numpy(((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32))
    module.train()
    started = time.perf_counter()
    for start in range(0, len(X), batch):
        target = scaled[start:start + batch]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(module(target), target).backward()
        optimizer.step()
    return len(X) / (time.perf_counter() - started)


def detector_rate(warm: np.ndarray, X: np.ndarray, keys: np.ndarray | None = None) -> float:
    det = AutoencoderDetector(DetectorConfig(n_channels=X.shape[1]))
    det.process_many(warm)  # warm-up and warm-up fit: start-up, not measured
    started = time.perf_counter()
    for start in range(0, len(X), CHUNK):
        det.process_many(X[start:start + CHUNK], None if keys is None else keys[start:start + CHUNK])
    return len(X) / (time.perf_counter() - started)


class TimedReplay(Replay):
    """A replay that notes when each batch was done and how many rows it held."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.done: list[tuple[float, int]] = []

    def _process(self, batch: RowBatch, channels: tuple[str, ...], summary: RunSummary) -> None:
        super()._process(batch, channels, summary)
        self.done.append((time.perf_counter(), len(batch.index) + len(batch.bad)))


def replay_rate(X: np.ndarray, labels: np.ndarray, folder: Path) -> float:
    """Steady state, in one replay of the whole recording: the rows of the batches of its second
    half over the time from the end of the batch before them to the end of the last (reading
    included; start-up and the warm-up fit are in the first half)."""
    path = folder / f"rec{X.shape[1]}.csv"
    write_recording(path, X, labels)
    replay = TimedReplay(DetectorSettings(), JsonLinesSink(folder / "out.jsonl"), JsonLinesSink(folder / "err.jsonl"))
    replay.run(Recording(path, InputSettings()))
    ends = np.array([t for t, _ in replay.done])
    rows = np.cumsum([n for _, n in replay.done])
    mid = int(np.searchsorted(rows, rows[-1] // 2))
    return float((rows[-1] - rows[mid]) / (ends[-1] - ends[mid]))


def resident_bytes() -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def keys_child(n_keys: int, events: int) -> None:
    """In a fresh process: the detector on ``events`` events spread over ``n_keys`` keys."""
    X, _, _ = simulate(events + 20_000, 8, seed=0)
    keys = np.array([f"device-{i:06d}" for i in np.random.default_rng(0).integers(0, n_keys, size=events)])
    before = resident_bytes()
    rate = detector_rate(X[events:], X[:events], keys)
    print(json.dumps({"rate": rate, "grew": resident_bytes() - before}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--key-events", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure; the fastest is shown")
    parser.add_argument("--keys-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keys_child:
        keys_child(args.keys_child, args.key_events)
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, {args.events} events per run, "
          f"fastest of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        for width in (8, 32):
            X, labels, _ = simulate(args.events + 20_000, width, seed=0)
            # this machine's speed wanders: the three take turns for --repeat rounds, and each
            # figure is its fastest round's
            bare = d = r = 0.0
            for _ in range(args.repeat):
                bare = max(bare, bare_step_rate(X[: args.events]))
                d = max(d, detector_rate(X[args.events:], X[: args.events]))
                r = max(r, replay_rate(X[: args.events], labels[: args.events], Path(tmp)))
            print(f"{width:>3} features: bare torch step {bare:>9,.0f}   detector {d:>9,.0f}   "
                  f"replay CSV->JSONL {r:>9,.0f} events/s   replay / bare step {r / bare:.2f}   "
                  f"replay / detector {r / d:.2f}")
    print(f"device keys ({args.key_events} events, 8 channels, default settings, max_keys 100,000; "
          "memory: growth of the process's resident set beyond the one-key run's):")
    one = None
    for n_keys in (1, 10_000, 100_000):
        done = subprocess.run([sys.executable, __file__, "--keys-child", str(n_keys), "--key-events",
                               str(args.key_events), "--threads", str(args.threads)],
                              capture_output=True, text=True, check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        one = one or r
        extra = r["grew"] - one["grew"]
        print(f"  {n_keys:>7,} keys: detector {r['rate']:>9,.0f} events/s ({r['rate'] / one['rate']:.2f} of one key)"
              + (f"   memory +{extra / 2**20:.1f} MiB ({extra / n_keys:,.0f} bytes per key)" if n_keys > 1 else ""))


if __name__ == "__main__":
    with settled_garbage_collector():  # as the ae-worker command runs
        main()
