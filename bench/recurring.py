"""Faults that recur: the detector beside river's HalfSpaceTrees on ``simulate --recurring`` streams.

    .venv/bin/python bench/recurring.py [--events 20000] [--seeds 1,2,3]

A few rare operating points come back again and again among normal operation (about 6% of rows,
see :func:`worker.replay.simulate.recurring`). Their readings stay consistent with each other, so a
network that has seen them reconstructs them: reconstruction error alone comes to score them as
normal, and the density signal (``density_weight``, :mod:`ae_core.density`) is what keeps them
rare. Prints the ROC-AUC and AUC-PR of the scores after warm-up, averaged over the seeds, for:

* the detector with ``density_weight=1`` (reconstruction error and the density signal);
* the same with its defaults (``density_weight=0``: reconstruction error alone);
* both again with ``learn_on_anomalies=true``: every event is learned, flagged or not, as in a
  river pipeline without a filter: the network sees every occurrence;
* the defaults with ``decorrelate`` (the channels' correlation taken out of the score);
* river's HalfSpaceTrees behind a MinMaxScaler, as its docs advise, event by event.

The last column is each model's ROC-AUC as a share of HalfSpaceTrees'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_core import AutoencoderDetector  # noqa: E402
from worker.replay.evaluation import average_precision, roc_auc  # noqa: E402
from worker.replay.simulate import recurring  # noqa: E402
from worker.settings import DetectorSettings  # noqa: E402

MODELS = {
    "ae-worker, density_weight=1": {"density_weight": 1.0},
    "ae-worker (defaults: error alone)": {},
    "ae-worker, learn_on_anomalies, density 1": {"learn_on_anomalies": True, "density_weight": 1.0},
    "ae-worker, learn_on_anomalies": {"learn_on_anomalies": True},
    "ae-worker, decorrelate": {"decorrelate": True},
}


def ours(X: np.ndarray, settings: dict[str, object]) -> np.ndarray:
    det = AutoencoderDetector(DetectorSettings(**settings).to_config(X.shape[1]))
    return det.process_many(X).score


def half_space_trees(X: np.ndarray, seed: int) -> np.ndarray:
    from river import anomaly, compose, preprocessing

    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=seed))
    scores = []
    for row in X.tolist():
        x = dict(enumerate(row))
        scores.append(model.score_one(x))
        model.learn_one(x)
    return np.asarray(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in [*MODELS, "HalfSpaceTrees"]}
    for seed in map(int, args.seeds.split(",")):
        X, labels, injected = recurring(args.events, args.features, seed)
        judged = np.arange(len(X)) >= DetectorSettings().warmup
        scores = {name: ours(X, settings) for name, settings in MODELS.items()}
        scores["HalfSpaceTrees"] = half_space_trees(X, seed)
        for name, s in scores.items():
            results[name].append((roc_auc(labels[judged], s[judged]), average_precision(labels[judged], s[judged])))
        print(f"seed {seed}: {len(injected)} occurrences of 3 patterns, {labels.mean():.1%} of rows", flush=True)
    hst = float(np.mean([r[0] for r in results["HalfSpaceTrees"]]))
    print(f"\n{'model':<44} {'ROC-AUC':>8} {'AUC-PR':>8} {'of HST':>7}")
    for name, rows in results.items():
        auc, ap = np.mean(rows, axis=0)
        print(f"{name:<44} {auc:8.3f} {ap:8.3f} {auc / hst:7.0%}")


if __name__ == "__main__":
    main()
