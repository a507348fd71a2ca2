"""The detector inside a river pipeline, against deep-river's autoencoder and HalfSpaceTrees.

    .venv/bin/python bench/river_pipeline.py [--events 6000] [--deep-river-python bench/.venv-deep-river/bin/python]

Each model sees the same simulated stream (8 correlated channels, labelled faults) the river way:
``score_one`` then ``learn_one``, event by event. Prints events/s and the ROC-AUC of the scores
after the first 1,000 events, and our speed as a multiple of each other model's.

deep-river 0.3.4 (its latest release) pins torch < 2.6 and imports a module river has since
removed, so it cannot share this project's environment. ``bash bench/setup_deep_river.sh``
makes one for it (river 0.22, the torch of ``.venv`` reused through a ``.pth`` file, nothing
else downloaded but small wheels); this script runs the deep-river part there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.evaluation import roc_auc  # noqa: E402
from worker.simulate import channel_names, simulate  # noqa: E402

JUDGED_FROM = 1000


def stream(events: int) -> list[tuple[dict[str, float], bool]]:
    X, labels, _ = simulate(events, 8, seed=11)
    names = channel_names(8)
    return [(dict(zip(names, row)), bool(y)) for row, y in zip(X.tolist(), labels.tolist())]


def measure(model: Any, data: list[tuple[dict[str, float], bool]]) -> dict[str, float]:
    scores = []
    started = time.perf_counter()
    for x, _ in data:
        scores.append(model.score_one(x))
        model.learn_one(x)
    elapsed = time.perf_counter() - started
    labels = np.array([y for _, y in data])
    return {"events_per_s": len(data) / elapsed,
            "roc_auc": roc_auc(labels[JUDGED_FROM:], np.nan_to_num(np.array(scores[JUDGED_FROM:])))}


def ours_and_trees(data: list[tuple[dict[str, float], bool]]) -> dict[str, dict[str, float]]:
    from river import anomaly, preprocessing

    from ae_core import AutoencoderDetector

    return {
        "ae-worker AutoencoderDetector (StandardScaler | AutoencoderDetector())":
            measure(preprocessing.StandardScaler() | AutoencoderDetector(), data),
        "river HalfSpaceTrees (MinMaxScaler | HalfSpaceTrees(seed=1))":
            measure(preprocessing.MinMaxScaler() | anomaly.HalfSpaceTrees(seed=1), data),
    }


def deep_river(data: list[tuple[dict[str, float], bool]]) -> dict[str, dict[str, float]]:
    """deep-river's documented set-up: min-max scaling, a small sigmoid autoencoder, one SGD step
    per event (its learn_one)."""
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

    model = preprocessing.MinMaxScaler() | Autoencoder(module=Small(8), lr=0.005)
    return {"deep-river Autoencoder 0.3.4 (MinMaxScaler | Autoencoder, lr 0.005)": measure(model, data)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--deep-river-python", default=str(ROOT / "bench" / ".venv-deep-river" / "bin" / "python"))
    parser.add_argument("--only", choices=["deep-river"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch
    import torch._dynamo  # noqa: F401  (imported by torch.optim at the first step: seconds, for both)

    torch.set_num_threads(1)
    data = stream(args.events)
    if args.only == "deep-river":
        print(json.dumps(deep_river(data)))
        return
    results = ours_and_trees(data)
    if Path(args.deep_river_python).exists():
        done = subprocess.run([args.deep_river_python, __file__, "--only", "deep-river", "--events", str(args.events)],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode == 0:
            results.update(json.loads(done.stdout.strip().splitlines()[-1]))
        else:
            print(f"deep-river run failed:\n{done.stderr[-2000:]}", file=sys.stderr)
    else:
        print(f"no deep-river environment at {args.deep_river_python} (bash bench/setup_deep_river.sh): "
              "compared with HalfSpaceTrees only", file=sys.stderr)
    ours = next(iter(results.values()))
    print(f"{args.events} events, 8 channels, score_one then learn_one per event; ROC-AUC after event "
          f"{JUDGED_FROM}; one torch thread; {os.cpu_count()} cores")
    for name, r in results.items():
        print(f"  {name:<72} {r['events_per_s']:>9,.0f} events/s   ROC-AUC {r['roc_auc']:.3f}   "
              f"ours is {ours['events_per_s'] / r['events_per_s']:.1f}x as fast")


if __name__ == "__main__":
    main()
