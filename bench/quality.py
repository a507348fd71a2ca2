"""Detection quality on the labelled data in ../shared/data, beside river's HalfSpaceTrees.

    python bench/quality.py [--data ../shared/data] [--only skab,free,asd,nab,stress] [--set key=value ...]

Reports, per data set: flag metrics, AUC-PR of the scores, alerts (pages), false alarms
after a labelled anomaly has ended (recovery); SKAB's anomaly-free file (false alarms only); NAB's
standard-profile score on alerts; and synthetic stress streams (flat, noise, one extreme spike, a
step that stays, a step that returns).

Every data set runs with the same detector defaults (``--set`` changes one for all, for
experiments). Protocols follow ../shared/data/README.md.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ae_core import AutoencoderDetector  # noqa: E402
from worker.replay.evaluation import (  # noqa: E402
    alert_report,
    average_precision,
    best_f1,
    flag_metrics,
    longest_run,
)
from worker.replay.pipeline import Replay, Trace  # noqa: E402
from worker.replay.simulate import STRESS, stress  # noqa: E402
from worker.replay.sinks import NullSink  # noqa: E402
from worker.replay.sources import Recording  # noqa: E402
from worker.settings import (
    DetectorSettings,  # noqa: E402
    InputSettings,
)

SKAB_INPUT = InputSettings(sep=";", time_column="datetime", label_column="anomaly", ignore_columns=("changepoint",))


def replay(path: Path, options: InputSettings, detector: DetectorSettings) -> dict[str, np.ndarray]:
    trace = Trace()
    Replay(detector, NullSink(), NullSink(), trace=trace).run(Recording(path, options))
    return trace.arrays()


def hst_scores(path: Path, options: InputSettings, window: int, seed: int = 0) -> np.ndarray:
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


def after_anomalies(labels: np.ndarray, flags: np.ndarray) -> int:
    """Flagged rows after a labelled anomaly ended and before the next one began."""
    y = labels > 0.5
    ends = np.flatnonzero(y[:-1] & ~y[1:]) + 1
    count = 0
    for end in ends.tolist():
        nxt = np.flatnonzero(y[end:])
        stop = end + int(nxt[0]) if len(nxt) else len(y)
        count += int(flags[end:stop].sum())
    return count


def skab(data: Path, detector: DetectorSettings, with_hst: bool) -> dict[str, object]:
    opts = SKAB_INPUT
    det = detector.model_copy(update={"warmup": min(detector.warmup, 400)})
    labels, flags, scores, hst, alerts, post, parts = [], [], [], [], 0, 0, []
    for path in sorted((data / "skab" / "valve1").glob("*.csv"), key=lambda p: int(p.stem)):
        t = replay(path, opts, det)
        judged = t["index"] >= 400
        labels.append(t["labels"][judged])
        flags.append(t["flags"][judged])
        scores.append(t["score"][judged])
        alerts += int(t["alerts"][judged].sum())
        parts.append((labels[-1], flags[-1], scores[-1], t["alerts"][judged]))
        post += after_anomalies(t["labels"][judged], t["flags"][judged].astype(bool))
        if with_hst:
            hst.append(hst_scores(path, opts, 1)[judged])
    y, f = np.concatenate(labels), np.concatenate(flags)
    out = flag_metrics(y, f)
    out.update(alerts=alerts, files=len(labels), false_alarms_after_anomaly=post, alerting=alert_report(parts),
               f1_left=f1_left(labels, flags, out))
    out["auc_pr"] = float(np.mean([average_precision(a, b) for a, b in zip(labels, scores)]))  # mean per file
    out["auc_pr_pooled"] = average_precision(y, np.concatenate(scores))
    if with_hst:
        out["hst_auc_pr"] = float(np.mean([average_precision(a, b) for a, b in zip(labels, hst)]))
        out["hst_auc_pr_pooled"] = average_precision(y, np.concatenate(hst))
    return out


def f1_left(labels: list[np.ndarray], flags: list[np.ndarray], pooled: dict[str, Any]) -> dict[str, object]:
    """Where the pooled F1 is lost, one recording's labelled run each: the rows of runs barely
    flagged (under 30%: missed), and in the others the unflagged rows before the first flag
    (delay), between the first and last (holes) and after the last (the label runs on after the
    flags stop); with the F1 each fix would give, cumulatively, false rows dropped first.
    ``pooled``: :func:`flag_metrics` of all the recordings' rows."""
    rows = {"missed": 0, "delay": 0, "holes": 0, "after_last_flag": 0}
    for y, f in zip(labels, flags):
        hit = np.flatnonzero((y > 0.5) & f.astype(bool))
        run = np.flatnonzero(y > 0.5)
        if not len(run):
            continue
        if len(hit) < 0.3 * len(run):
            rows["missed"] += len(run) - len(hit)
            continue
        rows["delay"] += int(hit[0] - run[0])
        rows["holes"] += int(hit[-1] - hit[0] + 1 - len(hit))
        rows["after_last_flag"] += int(run[-1] - hit[-1])
    tp, fn, f1 = pooled["tp"], pooled["fn"], {}
    for fix in ("no false rows", "holes", "delay", "after_last_flag", "missed"):
        if fix != "no false rows":
            tp, fn = tp + rows[fix], fn - rows[fix]
        f1[fix] = round(tp / (tp + fn / 2), 3)
    return {"rows": rows, "f1_if_fixed": f1}


def skab_free(data: Path, detector: DetectorSettings) -> dict[str, object]:
    """SKAB's anomaly-free recording: every flag after row 400 is a false alarm."""
    det = detector.model_copy(update={"warmup": min(detector.warmup, 400)})
    out = {}
    for path in sorted((data / "skab" / "anomaly-free").glob("*.csv")):
        t = replay(path, InputSettings(sep=";", time_column="datetime"), det)
        judged = t["index"] >= 400
        out[path.stem] = {"rows": int(judged.sum()), "flagged_pct": 100 * float(t["flags"][judged].mean()),
                          "alerts": int(t["alerts"][judged].sum())}
    return out


def recovery(flags: np.ndarray, quiet: int = 50) -> int:
    """Events until the flags stop: the start of the first run of ``quiet`` unflagged events."""
    run = 0
    for i, flag in enumerate(flags.tolist()):
        run = 0 if flag else run + 1
        if run == quiet:
            return i - quiet + 1
    return len(flags)


def stress_streams(detector: DetectorSettings, events: int = 6000, features: int = 4) -> dict[str, object]:
    """Flagged share, alerts and recovery on the synthetic stress streams (seeded)."""
    out = {}
    middle = events // 2
    for kind in STRESS:
        X, labels = stress(kind, events, features, seed=0)
        det = AutoencoderDetector(detector.to_config(features))
        res = det.process_many(X)
        judged = np.arange(events) >= detector.warmup
        flags = res.is_anomaly
        normal = judged & (labels < 0.5)
        row: dict[str, object] = {"flagged_pct_normal": round(100 * float(flags[normal].mean()), 3),
                                  "alerts": int(res.alert.sum()), "regime_changes": int(res.regime_change.sum())}
        if kind in ("spike", "step-return"):
            end = middle + (1 if kind == "spike" else 100)
            row["flags_after_end"] = int(flags[end:].sum())
            row["recovery_events"] = recovery(flags[end:])
        if kind == "step":
            later = np.flatnonzero(flags[middle:])
            row["flagged_after_step"] = int(flags[middle:].sum())
            row["last_flag_after_step"] = int(later[-1]) if len(later) else None
            row["detected"] = bool(flags[middle:middle + 10].any())
        out[kind] = row
    return out


def asd(data: Path, detector: DetectorSettings, with_hst: bool) -> dict[str, object]:
    opts = InputSettings(label_column="label")
    rows: dict[str, object] = {}
    parts = []
    for path in sorted((data / "asd").glob("omi-*.csv")):
        t = replay(path, opts, detector)
        test = t["index"] >= 8640
        y, s, f = t["labels"][test], t["score"][test], t["flags"][test]
        parts.append((y, f, s, t["alerts"][test]))
        row = {"auc_pr": average_precision(y, s), "best_f1": best_f1(y, s), "f1": flag_metrics(y, f)["f1"],
               "far": flag_metrics(y, f)["far"], "alerts": int(t["alerts"][test].sum()),
               "false_alarms_after_anomaly": after_anomalies(y, f.astype(bool))}
        if with_hst:
            h = hst_scores(path, opts, 1)[test]
            row.update(hst_auc_pr=average_precision(y, h), hst_best_f1=best_f1(y, h))
        rows[path.stem] = row
    rows["mean"] = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("auc_pr", "best_f1", "f1")}  # type: ignore[index]
    rows["alerting"] = alert_report(parts)
    return rows


NAB_WINDOW = 12  # readings per model input for the univariate NAB series


def nab(data: Path, detector: DetectorSettings, with_hst: bool) -> dict[str, object]:
    """NAB's standard-profile score over the files at hand, with a sliding window of readings."""
    windows = json.loads((data / "nab" / "labels" / "combined_windows.json").read_text())
    opts = InputSettings(time_column="timestamp")
    det = detector.model_copy(update={"window": NAB_WINDOW})
    files, raw, null, perfect, parts = {}, 0.0, 0.0, 0.0, []
    for path in sorted((data / "nab" / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        stamps = [line.split(",")[0] for line in path.read_text().splitlines()[1:]]
        spans = [(_row_at(stamps, a), _row_at(stamps, b)) for a, b in windows.get(name, [])]
        probation = min(750, int(0.15 * len(stamps)))
        t = replay(path, opts, det)
        labels = np.zeros(len(stamps))
        for a, b in spans:
            labels[a:b + 1] = 1.0
        alerts = t["alerts"].astype(bool)  # the first event of an episode: what pages someone
        parts.append((labels[probation:], t["flags"][probation:], t["score"][probation:], alerts[probation:]))
        score = nab_file_score(alerts, spans, probation)
        row = {"windows": len(spans), "nab_raw": round(score, 3),
               "detected": sum(bool(t["flags"][max(a, probation):b + 1].any()) for a, b in spans),
               "false_alerts": int((alerts[probation:] & (labels[probation:] == 0)).sum()),
               "flagged_pct": round(100 * float(t["flags"][probation:].mean()), 2),
               "longest_run": longest_run(t["flags"].astype(bool))}
        if labels[probation:].any():
            row["auc_pr"] = average_precision(labels[probation:], t["score"][probation:])
            if with_hst:
                hst = hst_scores(path, opts, NAB_WINDOW)
                row["hst_auc_pr"] = average_precision(labels[probation:], hst[probation:])
        files[name] = row
        raw += score
        null -= len(spans)
        perfect += len(spans) * _scaled_sigmoid(-1.0)
    return {"normalised_score": 100 * (raw - null) / (perfect - null), "alerting": alert_report(parts),
            "files": files}


def nab_file_score(flags: np.ndarray, spans: list[tuple[int, int]], probation: int,
                   tp_weight: float = 1.0, fp_weight: float = 0.11, fn_weight: float = 1.0) -> float:
    """NAB's sweeper, standard profile: the first detection in a window earns up to +1 (earlier
    is better), a detection outside every window costs up to 0.11 (less just after a window),
    a window without detection costs 1; the probation period is not scored."""
    total, detected = 0.0, set()
    for i in np.flatnonzero(flags).tolist():
        if i < probation:
            continue
        inside = [k for k, (a, b) in enumerate(spans) if a <= i <= b]
        if inside:
            k = inside[0]
            if k not in detected:
                a, b = spans[k]
                detected.add(k)
                total += tp_weight * _scaled_sigmoid(-(b - i + 1) / (b - a + 1))
            continue
        before = [(a, b) for a, b in spans if b < i]
        if before:
            a, b = before[-1]
            total += fp_weight * _scaled_sigmoid(abs(b - i) / max(1, b - a))
        else:
            total -= fp_weight
    return total - fn_weight * (len(spans) - len(detected))


def _scaled_sigmoid(position: float) -> float:
    return -1.0 if position > 3.0 else 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def _row_at(stamps: list[str], stamp: str) -> int:
    return bisect.bisect_left(stamps, stamp[:19])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--only", default="skab,free,asd,nab,stress")
    parser.add_argument("--set", action="append", default=[], help="detector setting key=value")
    parser.add_argument("--no-hst", action="store_true", help="skip the HalfSpaceTrees baseline")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # small networks; and tuning runs several benches side by side
    detector = DetectorSettings(**dict(kv.split("=", 1) for kv in args.set))
    data = Path(args.data)
    report: dict[str, object] = {"settings": {kv.split("=")[0]: kv.split("=", 1)[1] for kv in args.set}}
    started = time.perf_counter()
    if "skab" in args.only:
        report["skab_valve1"] = skab(data, detector, not args.no_hst)
    if "free" in args.only:
        report["skab_anomaly_free"] = skab_free(data, detector)
    if "stress" in args.only:
        report["stress"] = stress_streams(detector)
    if "asd" in args.only:
        report["asd"] = asd(data, detector, not args.no_hst)
    if "nab" in args.only:
        report["nab"] = nab(data, detector, not args.no_hst)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
