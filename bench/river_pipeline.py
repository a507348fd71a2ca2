"""The detector inside a river pipeline, against deep-river's autoencoder and HalfSpaceTrees.

    .venv/bin/python bench/river_pipeline.py [--events 6000] [--rounds 3]
        [--deep-river-python bench/.venv-deep-river/bin/python]

Each model sees the same simulated stream (8 correlated channels, labelled faults) the river way,
event by event, in two set-ups: the bare pipeline (``score_one`` then ``learn_one``), and the
pipeline wrapped in ``anomaly.QuantileFilter(q=0.98)`` (``score_one``, ``classify``, ``learn_one``;
the filter scores again inside ``learn_one`` and keeps flagged events from the detector). Prints
events/s and the ROC-AUC of the scores after the first 1,000 events, and our speed as a multiple
of each other model's.

This machine's speed wanders by a factor of two from minute to minute, so the models take turns:
``--rounds`` rounds, each running every model once on a fresh copy, and each model's fastest
round is reported (as ``timeit`` does: the fastest run is the one least disturbed).

deep-river 0.3.4 (its latest release) pins torch < 2.6 and imports a module river has since
removed, so it cannot share this project's environment. ``bash bench/setup_deep_river.sh``
makes one for it (river 0.22, the torch of ``.venv`` reused through a ``.pth`` file, nothing
else downloaded but small wheels); its rounds run in a child process of that environment, which
runs one round each time it reads a line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.replay.evaluation import roc_auc  # noqa: E402
from worker.replay.simulate import channel_names, simulate  # noqa: E402

JUDGED_FROM = 1000
QUANTILE = 0.98
Stream = list[tuple[dict[str, float], bool]]


def stream(events: int) -> Stream:
    X, labels, _ = simulate(events, 8, seed=11)
    names = channel_names(8)
    return [(dict(zip(names, row)), bool(y)) for row, y in zip(X.tolist(), labels.tolist())]


def measure(model: Any, data: Stream, filtered: bool) -> dict[str, float]:
    scores = []
    started = time.perf_counter()
    if filtered:
        gate = model.steps[list(model.steps)[-1]]  # the QuantileFilter
        flagged = 0
        for x, _ in data:
            score = model.score_one(x)
            flagged += gate.classify(score)
            scores.append(score)
            model.learn_one(x)
    else:
        for x, _ in data:
            scores.append(model.score_one(x))
            model.learn_one(x)
    elapsed = time.perf_counter() - started
    labels = np.array([y for _, y in data])
    return {"events_per_s": len(data) / elapsed,
            "roc_auc": roc_auc(labels[JUDGED_FROM:], np.nan_to_num(np.array(scores[JUDGED_FROM:])))}


def pipelines(make_scaler: Callable[[], Any], make_detector: Callable[[], Any]) -> dict[str, Callable[[], Any]]:
    """The bare pipeline and the one wrapped in a QuantileFilter, as factories of fresh models."""
    from river import anomaly

    return {"bare": lambda: make_scaler() | make_detector(),
            "QuantileFilter": lambda: make_scaler() | anomaly.QuantileFilter(make_detector(), q=QUANTILE)}


FLOOR = "floor: StandardScaler | a detector that does nothing"


def ours_and_trees() -> dict[str, dict[str, Callable[[], Any]]]:
    from river import anomaly, preprocessing
    from river.base import AnomalyDetector

    from ae_core import AutoencoderDetector

    class Nothing(AnomalyDetector):
        """Scores 0 and learns nothing: what river's pipeline, scaler and filter cost alone."""

        def learn_one(self, x: dict[str, float]) -> None:
            return None

        def score_one(self, x: dict[str, float]) -> float:
            return 0.0

    return {
        "ae-worker AutoencoderDetector (StandardScaler | ...)":
            pipelines(preprocessing.StandardScaler, AutoencoderDetector),
        "river HalfSpaceTrees(seed=1) (MinMaxScaler | ...)":
            pipelines(preprocessing.MinMaxScaler, lambda: anomaly.HalfSpaceTrees(seed=1)),
        FLOOR: pipelines(preprocessing.StandardScaler, Nothing),
    }


def deep_river() -> dict[str, dict[str, Callable[[], Any]]]:
    """deep-river's documented set-up: min-max scaling, a small sigmoid autoencoder, one SGD step
    per event (its learn_one); its weights seeded so every round starts alike."""
    import torch
    from deep_river.anomaly import Autoencoder
    from river import preprocessing

    class Small(torch.nn.Module):
        def __init__(self, n_features: int, latent: int = 3) -> None:
            super().__init__()
            self.encode = torch.nn.Sequential(torch.nn.Linear(n_features, latent), torch.nn.LeakyReLU())
            self.decode = torch.nn.Sequential(torch.nn.Linear(latent, n_features), torch.nn.Sigmoid())

        def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            return self.decode(self.encode(x))

    def detector() -> Any:
        torch.manual_seed(0)
        return Autoencoder(module=Small(8), lr=0.005)

    name = "deep-river Autoencoder 0.3.4 (MinMaxScaler | ..., lr 0.005)"
    return {name: pipelines(preprocessing.MinMaxScaler, detector)}


def one_round(models: dict[str, dict[str, Callable[[], Any]]], data: Stream) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {setup: measure(make(), data, setup != "bare") for setup, make in setups.items()}
            for name, setups in models.items()}


def serve_deep_river(events: int) -> None:
    """Child process: one round of deep-river per line read, its results as one JSON line."""
    data, models = stream(events), deep_river()
    for _ in sys.stdin:
        print(json.dumps(one_round(models, data)), flush=True)


def keep_fastest(best: dict[str, dict[str, dict[str, float]]], results: dict[str, dict[str, dict[str, float]]]) -> None:
    for name, setups in results.items():
        for setup, r in setups.items():
            kept = best.setdefault(name, {}).get(setup)
            if kept is None or r["events_per_s"] > kept["events_per_s"]:
                best[name][setup] = r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--deep-river-python", default=str(ROOT / "bench" / ".venv-deep-river" / "bin" / "python"))
    parser.add_argument("--serve-deep-river", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch
    import torch._dynamo  # noqa: F401  (imported by torch.optim at the first step: seconds, for both)

    torch.set_num_threads(1)
    if args.serve_deep_river:
        serve_deep_river(args.events)
        return
    data, models = stream(args.events), ours_and_trees()
    child = None
    if Path(args.deep_river_python).exists():
        child = subprocess.Popen([args.deep_river_python, __file__, "--serve-deep-river", "--events", str(args.events)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        print(f"no deep-river environment at {args.deep_river_python} (bash bench/setup_deep_river.sh): "
              "compared with HalfSpaceTrees only", file=sys.stderr)
    best: dict[str, dict[str, dict[str, float]]] = {}
    for _ in range(args.rounds):
        keep_fastest(best, one_round(models, data))
        if child is not None:
            child.stdin.write("\n")  # type: ignore[union-attr]
            child.stdin.flush()  # type: ignore[union-attr]
            line = child.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit(f"deep-river run failed (exit {child.wait()})")
            keep_fastest(best, json.loads(line))
    if child is not None:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()
    ours = next(iter(best.values()))
    print(f"{args.events} events, 8 channels, one event at a time; ROC-AUC after event {JUDGED_FROM}; "
          f"fastest of {args.rounds} interleaved rounds; one torch thread; {os.cpu_count()} cores")
    for setup in ("bare", "QuantileFilter"):
        print(f"{setup}: " + ("score_one, learn_one" if setup == "bare"
                              else f"QuantileFilter(q={QUANTILE}): score_one, classify, learn_one"))
        for name, setups in best.items():
            r = setups[setup]
            if name == FLOOR:  # what is left of ours per event once the pipeline's own cost is taken out
                own = 1e6 / ours[setup]["events_per_s"] - 1e6 / r["events_per_s"]
                print(f"  {name:<62} {r['events_per_s']:>9,.0f} events/s   "
                      f"(ours spends {own:.1f} us/event of {1e6 / ours[setup]['events_per_s']:.1f} in the detector)")
                continue
            print(f"  {name:<62} {r['events_per_s']:>9,.0f} events/s   ROC-AUC {r['roc_auc']:.3f}   "
                  f"ours is {ours[setup]['events_per_s'] / r['events_per_s']:.1f}x as fast")


if __name__ == "__main__":
    main()
