"""What each ``ae-worker`` sub-command does, given parsed flags and settings."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
from pathlib import Path

import orjson

from ae_core import load_detector, save_detector
from worker.errors import InputFormatError
from worker.replay.evaluation import evaluate as quality
from worker.replay.pipeline import Replay, Trace
from worker.replay.plotting import plot_replay
from worker.replay.simulate import recurring as recurring_faults
from worker.replay.simulate import simulate as make_recording
from worker.replay.simulate import stress as stress_stream
from worker.replay.simulate import write_recording
from worker.replay.sinks import JsonLinesSink, NullSink
from worker.replay.sources import CSV_SEPARATORS, LABEL_NAMES, TIME_NAMES, Recording
from worker.results import RunSummary
from worker.settings import Settings

logger = logging.getLogger(__name__)

DEMO_EVENTS = 20_000


def replay(args: argparse.Namespace, settings: Settings) -> int:
    with tempfile.TemporaryDirectory(prefix="ae-worker-demo-") as tmp:
        if args.input is None:
            args.input, settings = _demo_recording(Path(tmp), settings)
        recording = Recording(args.input, settings.input)
        print(recording.describe(), file=sys.stderr)
        check_enough_inputs(recording, settings)
        errors_path = args.errors or (f"{args.output}.errors.jsonl" if args.output != "-" else "-")
        errors = JsonLinesSink(errors_path, sys.stderr, lazy=True)  # made at the first invalid row
        pipeline = Replay(settings.detector, JsonLinesSink(args.output), errors,
                          emit_latent=args.emit_latent, progress=sys.stderr.isatty(),
                          initial=load_detector(args.load_checkpoint) if args.load_checkpoint else None)
        summary = pipeline.run(recording)
    check_mostly_valid(summary)
    text = summary.render()
    if args.save_checkpoint and pipeline.detector is not None:
        save_detector(pipeline.detector, args.save_checkpoint)
        text += f"\ncheckpoint: {args.save_checkpoint}"
    print(text, file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def _demo_recording(folder: Path, settings: Settings) -> tuple[str, Settings]:
    path = folder / "simulated.csv"
    X, labels, injected = make_recording(DEMO_EVENTS, 8, seed=0)
    write_recording(path, X, labels)
    print(f"no INPUT given: replaying a simulated recording of {DEMO_EVENTS} events, 8 channels, "
          f"{len(injected)} injected anomalies ({', '.join(sorted({i.kind for i in injected}))})",
          file=sys.stderr)
    return str(path), settings  # its time and label columns are found by name


def evaluate(args: argparse.Namespace, settings: Settings) -> int:
    recording = Recording(args.input, settings.input)
    print(recording.describe(), file=sys.stderr)
    check_enough_inputs(recording, settings)
    if not recording.options.label_column:
        raise InputFormatError(f"{recording.path.name}: no label column (none is named "
                               f"{', '.join(LABEL_NAMES)}): set --label-column")
    trace = Trace()
    summary = Replay(settings.detector, NullSink(), NullSink(), trace=trace).run(recording)
    check_mostly_valid(summary)
    t = trace.arrays()
    judged = t["index"] >= settings.detector.warmup
    metrics = quality(t["labels"][judged], t["flags"][judged], t["score"][judged], t["alerts"][judged])
    metrics.update(rows=summary.rows, invalid=summary.invalid, judged_from=settings.detector.warmup)
    if args.plot:
        plot_replay(args.plot, t["index"], t["score"], t["threshold"], t["flags"].astype(bool), t["labels"],
                    title=recording.name, alerts=t["alerts"].astype(bool),
                    regime_changes=t["regime_change"].astype(bool), times=t["times"] if len(t["times"]) else None)
    if args.json:
        print(orjson.dumps(metrics, option=orjson.OPT_SERIALIZE_NUMPY).decode())
        return 0
    print(f"{Path(args.input).name}: {metrics['events']} judged rows (from row {metrics['judged_from']}), "
          f"{metrics['positives']} labelled anomalous, {summary.invalid} invalid")
    for name in ("precision", "recall", "f1", "far", "mar", "auc_pr", "roc_auc"):
        print(f"  {name:<9} {metrics[name]:.4f}")
    print(f"  tp {metrics['tp']}  fp {metrics['fp']}  fn {metrics['fn']}  tn {metrics['tn']}")
    delay = metrics["median_alert_delay"]
    print(f"  alerts {metrics['alerts']}: {metrics['anomalies_alerted']} of {metrics['labelled_anomalies']} labelled "
          f"anomalies alerted (median delay {'-' if delay is None else f'{delay:g}'} events), "
          f"{metrics['false_alerts']} false alerts")
    print(f"  best single threshold on these scores: F1 {metrics['best_f1']:.4f}; {metrics['tail_rows']} flagged rows "
          f"carried on after labelled anomalies ended")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def check_enough_inputs(recording: Recording, settings: Settings) -> None:
    """An autoencoder needs two inputs or more: one reading column without a window is a wrong
    separator, or a univariate series that needs ``--window``."""
    if len(recording.channels) > 1 or (settings.detector.window or 1) > 1:
        return
    o = recording.options
    others = [other for other in CSV_SEPARATORS if other != o.sep and other in recording.channels[0]]
    if others and not recording.is_jsonl:
        raise InputFormatError(f"{recording.name}: the header splits into one reading column on {o.sep!r} but holds "
                               f"{others[0]!r}: is the separator right? --sep {others[0]!r}")
    raise InputFormatError(f"{recording.name}: one reading column ({recording.channels[0]!r}); the autoencoder needs "
                           "two inputs or more: --window W feeds each key's last W readings as one input "
                           "(e.g. --window 16)")


DECIMAL_COMMA = re.compile(r"not a number: '[-+]?\d*,\d+'")


def check_mostly_valid(summary: RunSummary) -> None:
    """Stop with a hint when most rows were refused for the same reason: a column that is not a
    reading (a time stamp, a device id, a text field) left in the readings is the usual cause."""
    if not summary.rows or summary.invalid * 2 < summary.rows:
        return
    reason, count = summary.invalid_reasons.most_common(1)[0]
    hint = ""
    if DECIMAL_COMMA.search(summary.invalid_examples.get(reason, "")):
        hint = (": decimal commas are not read; write the numbers with points (e.g. sed 's/,/./g' on a file "
                "separated by ';')")
    elif reason.startswith("column '"):
        name = reason.split("'")[1]
        hint = (f": is it the time column? --time-column {name}" if name.lower() in TIME_NAMES
                else f": is it a device id? --key-column {name}; or not a reading? --ignore-columns {name}")
    raise InputFormatError(f"{reason} is invalid in {count} of {summary.rows} rows{hint}")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import threading

    from worker.kafka.service import Worker

    stop = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("received %s: finishing the current batch", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    stats = Worker(settings, stop).run()
    print(f"events: {stats.events}  anomalies: {stats.anomalies}  dead letters: {stats.dead_letters}  "
          f"batches: {stats.batches}", file=sys.stderr)
    return 0


def produce(args: argparse.Namespace, settings: Settings) -> int:
    from worker.kafka.transfer import produce as send_recording

    recording = Recording(args.input, settings.input)
    print(recording.describe(), file=sys.stderr)
    key = args.key or Path(args.input).stem
    sent = send_recording(recording, settings.kafka, args.topic, key, args.speed, settings.kafka.create_topics,
                          settings.service.start_timeout)
    print(f"sent {sent} events from {args.input} to {args.topic}")
    return 0


def record(args: argparse.Namespace, settings: Settings) -> int:
    from worker.kafka.transfer import record as write_topic

    written = write_topic(settings.kafka, args.topic, Path(args.output), args.max_events, args.record_idle_timeout,
                          settings.service.start_timeout)
    print(f"wrote {written} events from {args.topic} to {args.output}")
    return 0


def simulate(args: argparse.Namespace, settings: Settings) -> int:
    if args.stress:
        X, labels = stress_stream(args.stress, args.events, args.features, seed=args.seed)
        write_recording(args.output, X, labels)
        print(f"wrote {args.output}: {args.stress} stress stream, {args.events} events, {args.features} channels, "
              f"{int(labels.sum())} anomalous rows")
        return 0
    make = recurring_faults if args.recurring else make_recording
    X, labels, injected = make(args.events, args.features, seed=args.seed)
    write_recording(args.output, X, labels)
    what = "fault occurrences" if args.recurring else "injected anomalies"
    print(f"wrote {args.output}: {args.events} events, {args.features} channels, "
          f"{int(labels.sum())} anomalous rows in {len(injected)} {what}")
    for item in injected:
        print(f"  {item.kind:<19} rows {item.start}-{item.stop - 1}  {item.channel}")
    return 0


__all__ = ["evaluate", "produce", "record", "replay", "run", "simulate"]
