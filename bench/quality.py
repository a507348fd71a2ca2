"""Detection quality on the labelled data in ../shared/data, beside river's HalfSpaceTrees.

    python bench/quality.py [--data ../shared/data] [--only skab,asd,nab] [--set key=value ...]

Every data set runs with the same detector defaults (``--set`` changes one for all, for
experiments). Protocols follow ../shared/data/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.evaluation import average_precision, flag_metrics  # noqa: E402
from worker.pipeline import Replay, Trace  # noqa: E402
from worker.settings import DetectorSettings  # noqa: E402
from worker.sinks import NullSink  # noqa: E402
from worker.sources import InputOptions, Recording  # noqa: E402


def replay(path: Path, options: InputOptions, detector: DetectorSettings) -> dict[str, np.ndarray]:
    trace = Trace()
    Replay(detector, NullSink(), NullSink(), trace=trace).run(Recording(path, options))
    return trace.arrays()


def hst_scores(path: Path, options: InputOptions, window: int, seed: int = 0) -> np.ndarray:
    """river HalfSpaceTrees on the same rows, min-max scaled online as its docs advise."""
    from river import anomaly, compose, preprocessing

    model = compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=seed))
    rec = Recording(path, options)
    scores, history = [], []
    for batch in rec.batches():
        for row in batch.values:
            history.append(row)
            history = history[-window:]
            while len(history) < window:
                history.insert(0, history[0])
            x = {f"f{i}": v for i, v in enumerate(np.concatenate(history))}
            scores.append(model.score_one(x))
            model.learn_one(x)
    return np.asarray(scores)


def skab(data: Path, detector: DetectorSettings, with_hst: bool) -> dict[str, object]:
    opts = InputOptions(sep=";", time_column="datetime", label_column="anomaly", ignore_columns=("changepoint",))
    det = detector.model_copy(update={"warmup": 400})
    labels, flags, scores, hst = [], [], [], []
    for path in sorted((data / "skab" / "valve1").glob("*.csv"), key=lambda p: int(p.stem)):
        t = replay(path, opts, det)
        judged = t["index"] >= 400
        labels.append(t["labels"][judged])
        flags.append(t["flags"][judged])
        scores.append(t["score"][judged])
        if with_hst:
            hst.append(hst_scores(path, opts, 1)[judged])
    y, f = np.concatenate(labels), np.concatenate(flags)
    out = flag_metrics(y, f)
    out["auc_pr"] = float(np.mean([average_precision(a, b) for a, b in zip(labels, scores)]))
    if with_hst:
        out["hst_auc_pr"] = float(np.mean([average_precision(a, b) for a, b in zip(labels, hst)]))
    return out


def asd(data: Path, detector: DetectorSettings, with_hst: bool) -> dict[str, object]:
    opts = InputOptions(label_column="label")
    rows = {}
    for path in sorted((data / "asd").glob("omi-*.csv")):
        t = replay(path, opts, detector)
        test = t["index"] >= 8640
        y, s, f = t["labels"][test], t["score"][test], t["flags"][test]
        row = {"auc_pr": average_precision(y, s), "best_f1": best_f1(y, s), "f1": flag_metrics(y, f)["f1"],
               "far": flag_metrics(y, f)["far"]}
        if with_hst:
            h = hst_scores(path, opts, 1)[test]
            row.update(hst_auc_pr=average_precision(y, h), hst_best_f1=best_f1(y, h))
        rows[path.stem] = row
    return rows


def best_f1(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s)
    tp = np.cumsum(y[order] > 0.5)
    k = np.arange(1, len(y) + 1)
    pos = max(1, int((y > 0.5).sum()))
    return float(np.max(2 * tp / (k + pos)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--only", default="skab,asd")
    parser.add_argument("--set", action="append", default=[], help="detector setting key=value")
    parser.add_argument("--no-hst", action="store_true", help="skip the HalfSpaceTrees baseline")
    args = parser.parse_args()
    detector = DetectorSettings(**dict(kv.split("=", 1) for kv in args.set))
    data = Path(args.data)
    report: dict[str, object] = {"settings": {kv.split("=")[0]: kv.split("=", 1)[1] for kv in args.set}}
    started = time.perf_counter()
    if "skab" in args.only:
        report["skab_valve1"] = skab(data, detector, not args.no_hst)
    if "asd" in args.only:
        report["asd"] = asd(data, detector, not args.no_hst)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
