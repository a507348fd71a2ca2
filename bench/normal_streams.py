"""Normal streams of kinds not in ../shared/data: what the detector flags and pages where nothing is wrong.

    .venv/bin/python bench/normal_streams.py [--events 12000] [--seeds 0,1,2] [--set key=value ...]

Every stream holds four channels of normal operation and no fault, so every flag is a false one,
except the first change of the streams whose channel was constant through the warm-up (``toggle``,
``off-then-on``): that change is new to the detector and pages once, then it is a new normal to
accept. Kinds (channels beside the named ones are unit Gaussian noise):

* ``gauss``: every channel white noise (the baseline);
* ``student-t3``, ``lognormal``: heavy-tailed noise on every channel (latencies, flow spikes);
* ``sparse-count``: one channel counts rare events (Poisson, 0.05 an event: error counts);
* ``counts``: every channel a Poisson count with mean 3;
* ``quantised``: every channel rounded to 0.4 of its spread (a sensor of coarse resolution);
* ``walk``: noise around a slow random walk;
* ``seasonal``: a cycle of 288 events on one channel (a day at one event in five minutes);
* ``toggle``: one channel 0 through the warm-up, then 0 and 1 in turns every 700 events (a pump);
* ``off-then-on``: one channel 0 through the warm-up, from event 1,000 noise around 5;
* ``far-from-zero``: every channel at 1e6 varying by 1e-3 (a meter's running total);
* ``counter``: one channel a running total of Poisson counts (a byte counter that never resets);
* ``near-duplicate``: one channel twice another, to 1% (two sensors of one quantity).

Prints, per kind and as means over the seeds: the share of judged events flagged, alerts (pages)
per 10,000 judged events, new normals accepted, and the longest run of flagged events.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_core import AutoencoderDetector  # noqa: E402
from worker.replay.evaluation import longest_run  # noqa: E402
from worker.settings import DetectorSettings  # noqa: E402

CHANNELS = 4


def _with(first: Callable[[np.random.Generator, np.ndarray], np.ndarray]) -> Callable:
    """A stream of unit noise whose first channel ``first(rng, t)`` gives."""
    def make(rng: np.random.Generator, n: int) -> np.ndarray:
        X = rng.normal(size=(n, CHANNELS))
        X[:, 0] = first(rng, np.arange(n))
        return X
    return make


def _after(start: int, value: Callable[[np.random.Generator, np.ndarray], np.ndarray]) -> Callable:
    return lambda rng, t: np.where(t >= start, value(rng, t), 0.0)


def _near_duplicate(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    X[:, -1] = 2 * X[:, 0] + 0.01 * rng.normal(size=len(X))  # the last channel twice the first, to 1%
    return X


KINDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "gauss": lambda rng, n: rng.normal(size=(n, CHANNELS)),
    "student-t3": lambda rng, n: rng.standard_t(3, size=(n, CHANNELS)),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.5, size=(n, CHANNELS)),
    "sparse-count": _with(lambda rng, t: rng.poisson(0.05, len(t))),
    "counts": lambda rng, n: rng.poisson(3.0, size=(n, CHANNELS)).astype(float),
    "quantised": lambda rng, n: np.round(rng.normal(size=(n, CHANNELS)) * 2.5) * 0.4,
    "walk": lambda rng, n: rng.normal(size=(n, CHANNELS)) + np.cumsum(rng.normal(size=(n, CHANNELS)) * 0.05, axis=0),
    "seasonal": _with(lambda rng, t: 3.0 * np.sin(2 * np.pi * t / 288) + rng.normal(size=len(t))),
    "toggle": _with(lambda rng, t: (t // 700 % 2).astype(float)),
    "off-then-on": _with(_after(1000, lambda rng, t: 5.0 + rng.normal(size=len(t)))),
    "far-from-zero": lambda rng, n: 1e6 + 1e-3 * rng.normal(size=(n, CHANNELS)),
    "counter": _with(lambda rng, t: np.cumsum(rng.poisson(5.0, len(t))).astype(float)),
    "near-duplicate": lambda rng, n: _near_duplicate(rng.normal(size=(n, CHANNELS)), rng),
}


def measure(X: np.ndarray, settings: dict[str, str], seed: int) -> tuple[float, float, float, float]:
    det = AutoencoderDetector(DetectorSettings(**settings, seed=seed).to_config(X.shape[1]))
    res = det.process_many(X)
    judged = ~np.isnan(res.score)
    return (100 * float(res.is_anomaly[judged].mean()), 1e4 * float(res.alert[judged].sum()) / judged.sum(),
            float(res.regime_change.sum()), float(longest_run(res.is_anomaly)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=12_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default=",".join(KINDS), help="kinds, comma-separated")
    parser.add_argument("--set", action="append", default=[], help="detector setting key=value")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    settings = dict(kv.split("=", 1) for kv in args.set)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.events} events of {CHANNELS} channels, seeds {args.seeds}, means over seeds"
          + (f", {' '.join(args.set)}" if args.set else ", defaults"))
    print(f"{'stream':<16} {'flagged':>8} {'pages/10k':>10} {'accepted':>9} {'longest run':>12}")
    for kind in args.only.split(","):
        rows = [measure(KINDS[kind](np.random.default_rng(seed), args.events), settings, seed) for seed in seeds]
        flagged, pages, accepted, longest = np.mean(rows, axis=0)
        print(f"{kind:<16} {flagged:7.2f}% {pages:10.1f} {accepted:9.1f} {longest:12.0f}", flush=True)


if __name__ == "__main__":
    main()
