"""The ``ae-worker`` command line: settings are read here, once, and passed down."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import sys
from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

from kafka.errors import KafkaError

from ae_core import AECoreError
from worker.errors import SettingsError, WorkerError
from worker.kafka.access import explain
from worker.logs import configure_logging
from worker.replay.simulate import STRESS
from worker.settings import DetectorSettings, Settings, load_settings

logger = logging.getLogger(__name__)

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
INPUT_FLAGS = ("sep", "time_column", "key_column", "label_column", "ignore_columns")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to a flag's help when it has a default worth telling."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def setting_default(section: str, name: str) -> str:
    """A setting's default as its help shows it ('' when unset by default)."""
    model = Settings.model_fields[section].annotation
    default = model.model_fields[name].default  # type: ignore[union-attr]
    if default is None:
        return ""
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    return f" (default: {shown})"


def choices_of(annotation: object) -> tuple[str, ...] | None:
    """The values of a Literal setting (optional or not), for argparse to list and check."""
    for part in (annotation, *get_args(annotation)):
        if get_origin(part) is Literal:
            return tuple(str(value) for value in get_args(part))
    return None


def add_input_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the recording")
    group.add_argument("--sep", help="CSV separator (default: a comma, else the first of ';', tab, '|' in the header)")
    group.add_argument("--time-column", help="column with the event time (copied to the output; default: one "
                       "named timestamp, time, datetime, date or ts, or holding ISO-8601 date-times)")
    group.add_argument("--key-column", help="column with the device id (separate windows and smoothing)")
    group.add_argument("--label-column", help="column with 0/1 labels, never fed to the model (default: one "
                       "named anomaly, is_anomaly, label or changepoint)")
    group.add_argument("--ignore-columns", help="comma-separated columns to leave out (names may hold spaces)")


def add_detector_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per detector setting, generated from the settings model so the two never drift:
    its description, its default, and for settings with fixed values, those values."""
    group = parser.add_argument_group("detector (env AE_DETECTOR__<NAME>)")
    for name, info in DetectorSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = f"{info.description}{setting_default('detector', name)}"
        if info.annotation is bool:
            group.add_argument(flag, dest=f"detector_{name}", action=argparse.BooleanOptionalAction,
                               default=None, help=text)
        else:
            choices = choices_of(info.annotation)
            group.add_argument(flag, dest=f"detector_{name}", metavar=None if choices else name.upper(), help=text,
                               choices=choices)


KAFKA_FLAGS = {  # flag dest -> (settings section, field)
    "bootstrap_servers": ("kafka", "bootstrap_servers"), "input_topic": ("kafka", "input_topics"),
    "output_topic": ("kafka", "output_topic"), "dlq_topic": ("kafka", "dlq_topic"),
    "group_id": ("kafka", "group_id"), "create_topics": ("kafka", "create_topics"),
    "partitions": ("kafka", "topic_partitions"), "batch_max_events": ("kafka", "max_poll_records"),
    "batch_max_wait_ms": ("kafka", "poll_timeout_ms"), "channels": ("events", "channels"),
    "max_events": ("service", "max_events"), "idle_timeout": ("service", "idle_timeout"),
    "metrics_port": ("service", "metrics_port"), "state_dir": ("service", "state_dir"),
    "exactly_once": ("kafka", "exactly_once"), "instance_id": ("kafka", "instance_id"),
}


def add_kafka_flags(parser: argparse.ArgumentParser, run: bool, create: bool = True) -> None:
    def d(dest: str) -> str:
        return setting_default(*KAFKA_FLAGS[dest])

    group = parser.add_argument_group("Kafka (env AE_KAFKA__<NAME>)")
    group.add_argument("--bootstrap-servers", help="host:port[,host:port]" + d("bootstrap_servers"))
    if create:
        group.add_argument("--create-topics", action=argparse.BooleanOptionalAction, default=None,
                           help="create missing topics instead of failing" + d("create_topics"))
        group.add_argument("--partitions", help="partitions of created topics" + d("partitions"))
    if not run:
        return
    group.add_argument("--input-topic", help="topic(s) to consume, comma-separated" + d("input_topic"))
    group.add_argument("--output-topic", help="where anomalies go" + d("output_topic"))
    group.add_argument("--dlq-topic", help="where malformed events go" + d("dlq_topic"))
    group.add_argument("--group-id", help="consumer group" + d("group_id"))
    group.add_argument("--batch-max-events", help="most events per mini-batch (max_poll_records)"
                       + d("batch_max_events"))
    group.add_argument("--batch-max-wait-ms", help="longest wait for a mini-batch (poll timeout)"
                       + d("batch_max_wait_ms"))
    group.add_argument("--channels", help="channel names in model order (needed for list readings)")
    group.add_argument("--exactly-once", action=argparse.BooleanOptionalAction, default=None,
                       help="one transaction per batch; readers use isolation.level=read_committed"
                       + d("exactly_once"))
    group.add_argument("--instance-id", help="stable unique name of this worker (static membership, "
                       "transactional id)")
    svc = parser.add_argument_group("service (env AE_SERVICE__<NAME>)")
    svc.add_argument("--max-events", help="exit 0 after this many events")
    svc.add_argument("--idle-timeout", help="exit 0 after this many seconds without a new event")
    svc.add_argument("--metrics-port", help="Prometheus /metrics, /healthz, /readyz (0 = off)" + d("metrics_port"))
    svc.add_argument("--state-dir", help="keep each partition's detector here across restarts")


# (section, setting) -> the flag's dest, where it differs from the setting's name
FLAG_OF_SETTING = {setting: dest for dest, setting in KAFKA_FLAGS.items()}


def settings_from_args(args: argparse.Namespace) -> Settings:
    detector = {k.removeprefix("detector_"): v for k, v in vars(args).items()
                if k.startswith("detector_") and v is not None}
    inputs = {k: getattr(args, k) for k in INPUT_FLAGS if getattr(args, k, None) is not None}
    overrides: dict[str, Any] = {"detector": detector, "input": inputs, "kafka": {}, "events": {}, "service": {}}
    for dest, (section, name) in KAFKA_FLAGS.items():
        if getattr(args, dest, None) is not None:
            overrides[section][name] = getattr(args, dest)
    if getattr(args, "log_level", None):
        overrides["log_level"] = args.log_level
    try:
        return load_settings(**overrides)
    except SettingsError as exc:  # a flag's bad value is told by the flag's name
        if len(exc.location) >= 2 and exc.location[1] in overrides.get(exc.location[0], {}):
            flag = "--" + FLAG_OF_SETTING.get(exc.location[:2], exc.location[1]).replace("_", "-")
            raise SettingsError(f"invalid value for {flag}: {exc.problem}", exc.location, exc.problem) from exc
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ae-worker", description="Streaming autoencoder anomaly detection.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="log level (default: INFO; env AE_LOG_LEVEL)")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                        help="log level (default: INFO; env AE_LOG_LEVEL)")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=text, description=text,
                              formatter_class=DefaultsHelpFormatter)

    replay = command("replay", "replay a recording through a fresh detector")
    replay.add_argument("input", nargs="?", help="CSV or JSONL recording, '-' for stdin, gzipped or not "
                        "(default: a simulated one)")
    replay.add_argument("--output", "-o", default="-", help="JSON lines output ('-' = stdout)")
    replay.add_argument("--errors", help="where invalid rows go (default: OUTPUT.errors.jsonl, or stderr)")
    replay.add_argument("--emit-latent", action="store_true", help="add the bottleneck code to each line")
    replay.add_argument("--load-checkpoint", help="start from a saved detector instead of a fresh one")
    replay.add_argument("--save-checkpoint", help="save the detector after the replay")
    add_input_flags(replay)
    add_detector_flags(replay)

    evaluate = command("evaluate", "replay a labelled recording and report detection quality")
    evaluate.add_argument("input", help="CSV or JSONL recording with a label column, '-' for stdin, gzipped or not")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    evaluate.add_argument("--plot", help="draw score, threshold, labels and flags to this PNG")
    add_input_flags(evaluate)
    add_detector_flags(evaluate)

    run = command("run", "consume sensor events from Kafka and publish anomalies")
    add_kafka_flags(run, run=True)
    add_detector_flags(run)

    produce = command("produce", "send a recording to a Kafka topic, keyed")
    produce.add_argument("input", help="CSV or JSONL recording, '-' for stdin, gzipped or not")
    produce.add_argument("--topic", required=True, help="the topic to send the events to")
    produce.add_argument("--key", help="record key when there is no --key-column (default: file name)")
    produce.add_argument("--speed", type=float, default=0.0,
                         help="0: as fast as possible; F: the time column's pace times F")
    add_input_flags(produce)
    add_kafka_flags(produce, run=False)

    record = command("record", "write a topic's events to a JSONL file to replay later")
    record.add_argument("--topic", required=True, help="the topic to read, from its beginning to its current end")
    record.add_argument("--output", "-o", required=True, help="the JSON lines file to write")
    record.add_argument("--max-events", type=int, help="stop after this many events")
    record.add_argument("--idle-timeout", type=float, default=5.0, dest="record_idle_timeout",
                        help="give up (exit 2, keeping what was written) after this many seconds without an "
                        "event before the topic's end")
    add_kafka_flags(record, run=False, create=False)

    simulate = command("simulate", "write a simulated sensor recording with labelled anomalies")
    simulate.add_argument("--output", "-o", required=True, help="the CSV (or .jsonl) file to write")
    simulate.add_argument("--events", type=int, default=20_000, help="rows to write")
    simulate.add_argument("--features", type=int, default=8, help="reading channels")
    simulate.add_argument("--seed", type=int, default=0, help="seeds the recording: same seed, same file")
    kind = simulate.add_mutually_exclusive_group()
    kind.add_argument("--stress", choices=STRESS, help="a stress stream instead (an exactly constant line, "
                      "noise, one extreme spike, a step that stays, a step that returns)")
    kind.add_argument("--recurring", action="store_true", help="recurring faults instead: three rare operating "
                      "points that come back again and again (about 7%% of rows) among normal operation")
    return parser


@contextlib.contextmanager
def settled_garbage_collector() -> Iterator[None]:
    """While the run lasts, the ~200,000 objects the imports made (torch, river, kafka-python,
    pydantic) are out of the cyclic garbage collector's sight (``gc.freeze``): they live as long
    as the process, and every full collection walked them all while a run allocates its many
    short-lived records (a third of the time of parsing a poll of events, measured). Reference
    counting frees everything as before; at the end they are handed back (``gc.unfreeze``) so
    the interpreter's shutdown finalises them as usual."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def refused(exc: BaseException, settings: Settings | None) -> str | None:
    """A missing ACL behind ``exc``, told as who may not do what (:func:`worker.kafka.access.explain`)."""
    return None if settings is None else explain(exc, settings.kafka)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings = settings_from_args(args)
        configure_logging(settings.log_level, settings.log_json, settings.secrets())
        import torch

        torch.set_num_threads(settings.torch_threads)
        from worker import commands

        # a process of its own (argv None) settles the collector; a call from a test or a notebook does not
        with settled_garbage_collector() if argv is None else contextlib.nullcontext():
            return int(getattr(commands, args.command)(args, settings) or 0)
    except (WorkerError, AECoreError) as exc:
        print(f"ae-worker: error: {refused(exc, settings) or exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # the cluster refused something for good: one line, the trace at debug level
        logger.debug("Kafka error", exc_info=True)
        print(f"ae-worker: error: {refused(exc, settings) or f'Kafka: {exc}'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ae-worker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
