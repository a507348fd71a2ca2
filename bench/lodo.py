"""Choose detector defaults by leave-one-dataset-out, and report held-out beside in-sample numbers.

    python bench/lodo.py [--jobs 2] [--out lodo-runs] [--seeds 3] [--grid '{"threshold_k": [3, 4]}']

A grid is an object of setting -> values (every combination is a point) or a list of such objects
(the points of each): the threshold rules have different settings.

Runs ``bench/quality.py`` once per point and seed of a small grid of decision settings (each data set with
the same settings), then for each of SKAB, ASD and NAB picks the point that is best on the *other
two* and reports how that point does on the one left out (held-out), beside the best any point
does on it (in-sample, what tuning on that file would claim). A default whose held-out numbers
fall far below its in-sample ones was fitted to the files, not to the kind of data.

The default is the point whose worst data set comes closest to that data set's best (max-min of
objective / best), so no kind of data is given up for another, among the points whose SKAB
false-alarm rate stays within ``FAR_CEILING`` (10%): the objectives alone would buy F1 with
false alarms point for point.

Each point runs with ``--seeds`` detector seeds (0, 1, ...) and its numbers are their means: one
seed's numbers move a lot (the two-scale default chosen on seed 0 earlier on 2026-12-02, at
seeds 0, 1, 2: SKAB FAR 8.3%, 16.4%, 12.6%; NAB 52.0, 51.1, 46.7), and a choice made on one seed
follows its luck.

Only points that keep, at every seed, the guarantees the tests hold on the synthetic stress
streams are chosen (:func:`keeps_guarantees`: a constant stream silent, white noise quiet, one
extreme reading a few flags, a step that returns let go of soon and not taken for a new normal);
the others are listed.

Objectives, each about 0..1: SKAB ``F1 - FAR`` (pooled flags; flagging everything scores F1 0.70
at FAR 1.0), ASD mean of AUC-PR and own-flag F1 over omi-1..4, NAB normalised score / 100.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.summarise import summary  # noqa: E402

GRID = [  # the last decision's grid (2026-12-02): one time scale at two rates, and a second, slower scale
    {"threshold_k": [4.0, 4.5, 5.0, 5.5], "smoothing": [0.1, 0.3], "slow_smoothing": [None]},
    {"threshold_k": [4.0, 4.5, 5.0], "smoothing": [0.3], "slow_smoothing": [0.1, 0.05]},
]
DATASETS = ("skab", "asd", "nab")
# The rigs' false-alarm rate a default may not exceed (issue 19: SKAB F1 with FAR <= 10%).
FAR_CEILING = 0.10


def objective(s: dict[str, float]) -> dict[str, float]:
    return {"skab": s["skab_f1"] - s["skab_far"], "asd": (s["asd_auc_pr"] + s["asd_f1"]) / 2,
            "nab": s["nab_score"] / 100}


def keeps_guarantees(s: dict[str, float]) -> bool:
    """The stress-stream guarantees of ``tests/test_decisions.py``, read off the quality report."""
    return (s["flat_pct"] == 0 and s["noise_pct"] <= 0.2 and s["spike_after"] <= 5
            and s["return_recovery"] <= 50 and s["return_regime_changes"] == 0)


def mean_summary(runs: list[dict[str, float]]) -> dict[str, float]:
    """The numbers of a point's runs (one per seed) averaged; text fields are dropped."""
    return {k: sum(r[k] for r in runs) / len(runs) for k, v in runs[0].items() if isinstance(v, (int, float))}


def run_point(point: dict[str, object], out: Path) -> dict[str, float]:
    name = "_".join(f"{k}={v}" for k, v in point.items())
    path = out / f"{name}.json"
    if not path.exists():
        sets = [arg for k, v in point.items() for arg in ("--set", f"{k}={v}")]
        result = subprocess.run([sys.executable, str(Path(__file__).with_name("quality.py")), "--no-hst", *sets],
                                capture_output=True, text=True, check=True)
        path.write_text(result.stdout)
    return summary(json.loads(path.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="lodo-runs", help="folder caching one quality report per grid point")
    parser.add_argument("--grid", default=None, help="JSON object of setting -> list of values, or a list of them")
    parser.add_argument("--seeds", type=int, default=3, help="detector seeds per point (0, 1, ...); numbers are "
                                                               "their means")
    args = parser.parse_args()
    grids = json.loads(args.grid) if args.grid else GRID
    grids = [grids] if isinstance(grids, dict) else grids
    points = [dict(zip(grid, values)) for grid in grids for values in itertools.product(*grid.values())]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeded = [{**p, "seed": seed} if seed else p for p in points for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda p: run_point(p, out), seeded))
    per_point = [runs[i:i + args.seeds] for i in range(0, len(runs), args.seeds)]
    print(f"{len(points)} grid points over {', '.join(dict.fromkeys(k for grid in grids for k in grid))}, "
          f"{args.seeds} seed(s) each (numbers: means over seeds)")
    summaries = [mean_summary(r) for r in per_point]
    keeps = [all(keeps_guarantees(one) for one in r) for r in per_point]  # at every seed
    for point, s, ok in zip(points, summaries, keeps):
        if not ok:
            print(f"  breaks a guarantee, not chosen: {point} (flat {s['flat_pct']}%, noise {s['noise_pct']}%, "
                  f"{s['spike_after']} flags after a spike, a returning step let go after {s['return_recovery']} "
                  f"events with {s['return_regime_changes']} new normal(s))")
    kept = [i for i, ok in enumerate(keeps) if ok]
    points, summaries = [points[i] for i in kept], [summaries[i] for i in kept]
    scores = [objective(s) for s in summaries]
    for left_out in DATASETS:
        tuned = [d for d in DATASETS if d != left_out]
        chosen = max(range(len(points)), key=lambda i: sum(scores[i][d] for d in tuned))
        best = max(range(len(points)), key=lambda i: scores[i][left_out])
        print(f"\nleave out {left_out}: tuned on {' + '.join(tuned)} -> {points[chosen]}")
        print(f"  held-out {left_out} objective {scores[chosen][left_out]:.3f}   "
              f"in-sample best {scores[best][left_out]:.3f} at {points[best]}")
        print("  held-out numbers: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                               for k, v in summaries[chosen].items()))
    # The default: the point whose worst data set is closest to that data set's best (max-min of
    # objective / best objective), so no kind of data is given up for another; among the points
    # that keep the rigs' false-alarm rate within FAR_CEILING (F1 - FAR alone would trade a
    # point of F1 for a point of FAR, and page twice as often).
    best = {d: max(s[d] for s in scores) for d in DATASETS}
    calm = [i for i, s in enumerate(summaries) if s["skab_far"] <= FAR_CEILING]
    for i in sorted(set(range(len(points))) - set(calm)):
        print(f"\n  SKAB false-alarm rate {summaries[i]['skab_far']:.1%} above {FAR_CEILING:.0%}, not a default: "
              f"{points[i]}", end="")
    chosen = max(calm or range(len(points)), key=lambda i: min(scores[i][d] / best[d] for d in DATASETS))
    print(f"\ndefault (max over points of the worst objective / best objective): {points[chosen]}")
    print("  objectives " + "  ".join(f"{d}={scores[chosen][d]:.3f} ({scores[chosen][d] / best[d]:.0%} of best)"
                                      for d in DATASETS))
    print("  numbers: " + "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in summaries[chosen].items()))


if __name__ == "__main__":
    main()
