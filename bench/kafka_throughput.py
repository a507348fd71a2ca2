"""Worker throughput against bare kafka-python consumption, in one run on the local broker.

    scripts/kafka/broker.sh up
    python bench/kafka_throughput.py [--bootstrap 127.0.0.1:9092] [--events 200000] [--features 8] [--repeat 2]

For each share of flagged events (few: about 1.5%, the fewest this simulated stream gives; many:
about 9%), fills a fresh one-partition topic with simulated events, then measures on the same
events: a bare KafkaConsumer poll loop (no parsing); the detector alone (``process_many`` on
poll-sized chunks, its warm-up included as in the worker); and ``ae-worker run`` (parse,
validate, score, learn, publish anomalies, commit) at least once and exactly once (one
transaction per batch). The work of the two parts run one after the other allows at most
``1 / (1/consume + 1/detector)`` events/s (the two-part limit); the worker's rate is printed as a
fraction of it and of the bare consumer, with p50/p99 batch latency. The parts and the workers
take turns for ``--repeat`` rounds, each figure the fastest round's. Ends with the size and
serialisation time of one partition snapshot.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, KafkaProducer  # noqa: E402

from ae_core import AutoencoderDetector  # noqa: E402
from ae_core.checkpoint import dumps, loads_with_metadata  # noqa: E402
from worker.cli import settled_garbage_collector  # noqa: E402
from worker.kafka.kafka_io import ensure_topics  # noqa: E402
from worker.kafka.service import Worker  # noqa: E402
from worker.replay.simulate import channel_names, simulate  # noqa: E402
from worker.settings import Settings, load_settings  # noqa: E402


def fill(bootstrap: str, topic: str, X: np.ndarray, partitions: int = 1) -> None:
    """The rows as events of devices pump-1 ... pump-<partitions>, event i to partition i % partitions."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    names = channel_names(X.shape[1])
    for i, row in enumerate(X.tolist()):
        device = f"pump-{i % partitions + 1}"
        event = {"key": device, "timestamp": 1_700_000_000_000 + i * 1000, "readings": dict(zip(names, row))}
        producer.send(topic, key=device.encode(), value=orjson.dumps(event), partition=i % partitions)
    producer.flush()
    producer.close()


def bare_rate(bootstrap: str, topic: str, total: int, max_poll_records: int,
              on_batch: Callable[[list[Any]], None] | None = None) -> float:
    """Events/s of a plain poll loop from the first poll that brings events to the last one;
    ``on_batch`` (optional) sees each partition's records."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bare-{uuid.uuid4().hex[:6]}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             max_poll_records=max_poll_records)
    seen, started = 0, None
    while seen < total:
        records = consumer.poll(timeout_ms=500)
        if records and started is None:
            started = time.perf_counter()
        for messages in records.values():
            seen += len(messages)
            if on_batch is not None:
                on_batch(messages)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--max-poll-records", type=int, default=2000)
    parser.add_argument("--anomaly-every", default="30000,700",
                        help="events between injected anomalies, one run per value (30000: ~1.5%% flagged, "
                             "the fewest this stream gives; 700: ~9%%)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; each figure is the fastest round's")
    args = parser.parse_args()
    torch.set_num_threads(settings_for(args, "any").torch_threads)  # as the ae-worker command runs
    print(f"events: {args.events}  features: {args.features}  max_poll_records: {args.max_poll_records}  "
          f"cores: {os.cpu_count()}  fastest of {args.repeat} rounds")
    for every in (int(v) for v in args.anomaly_every.split(",")):
        X = one_stream(args, every)
    snapshot_cost(settings_for(args, "snapshot"), X)


def settings_for(args: argparse.Namespace, topic: str) -> Settings:
    return load_settings(
        kafka={"bootstrap_servers": args.bootstrap, "input_topics": topic, "output_topic": f"{topic}-out",
               "dlq_topic": f"{topic}-dlq", "group_id": f"{topic}-worker", "create_topics": True,
               "max_poll_records": args.max_poll_records},
        service={"metrics_port": 0, "max_events": args.events})


def one_stream(args: argparse.Namespace, every: int) -> np.ndarray:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    settings = settings_for(args, topic)
    ensure_topics(settings.kafka, [topic], create=True)
    X, _, _ = simulate(args.events, args.features, seed=0, anomaly_every=every)
    fill(args.bootstrap, topic, X)
    # this machine's speed wanders: the parts and the workers take turns for --repeat rounds, and
    # each one's fastest round is kept
    bare = detector = 0.0
    results: dict[str, tuple[float, str, float]] = {}
    for round_ in range(args.repeat):
        bare = max(bare, bare_rate(args.bootstrap, topic, args.events, args.max_poll_records))
        detector = max(detector, detector_rate(settings, X, args.max_poll_records))
        for mode in ("at least once", "exactly once"):
            kafka = settings.kafka.model_copy(update={"group_id": f"{topic}-{mode.replace(' ', '-')}-{round_}",
                                                      "exactly_once": mode == "exactly once"})
            rate, line, inside = run_worker(settings.model_copy(update={"kafka": kafka}))
            if rate > results.get(mode, (0.0, "", 0.0))[0]:
                results[mode] = rate, line, inside
    print(f"anomalies injected about every {every} events:")
    limit = 1 / (1 / bare + 1 / detector)
    print(f"  bare kafka-python consume : {bare:>10,.0f} events/s")
    print(f"  detector alone            : {detector:>10,.0f} events/s   two-part limit {limit:,.0f} events/s")
    for mode, (rate, line, inside) in results.items():
        print(f"  ae-worker run, {mode:<13}: {rate:>10,.0f} events/s   {rate / limit:.2f} of the two-part limit, "
              f"{rate / bare:.2f} of bare   {line}\n"
              f"      detector stage inside the worker {inside:.1f} us per event, the detector alone "
              f"{1e6 / detector:.1f}: {inside * detector / 1e6:.2f}x")
    print(f"  exactly once / at least once: {results['exactly once'][0] / results['at least once'][0]:.2f}")
    return X


def detector_rate(settings: Settings, X: np.ndarray, chunk: int) -> float:
    """The detector on the whole stream in poll-sized chunks, warm-up included as in the worker."""
    det = AutoencoderDetector(settings.detector.to_config(X.shape[1], channel_names(X.shape[1])))
    keys = np.full(chunk, "pump-1")
    started = time.perf_counter()
    for start in range(0, len(X), chunk):
        part = X[start:start + chunk]
        det.process_many(part, keys[:len(part)])
    return len(X) / (time.perf_counter() - started)


def run_worker(settings: Settings) -> tuple[float, str, float]:
    """Events/s; a line: anomalies, time in batches, batch latency; the detector stage's us per event."""
    worker = Worker(settings)
    stats = worker.run()
    # like the bare consumer's clock: from the first poll that brought events to the last commit
    span = (stats.last_commit_at or 0.0) - (stats.first_records_at or 0.0)
    rate = stats.events / span
    busy = sum(worker.batch_latencies)
    lat = np.array(worker.batch_latencies) * 1000
    stages = {sample.labels["stage"]: sample.value for metric in worker.metrics.stage_seconds.collect()
              for sample in metric.samples if sample.name.endswith("_total")}
    per_event = "  ".join(f"{stage} {1e6 * seconds / stats.events:.1f}" for stage, seconds in stages.items())
    line = (f"anomalies {stats.anomalies} ({100 * stats.anomalies / stats.events:.1f}%)\n"
            f"      time in batches (parse, score, learn, publish, commit): {100 * busy / span:.0f}%; "
            f"batch latency p50 {np.percentile(lat, 50):.1f} ms  p99 {np.percentile(lat, 99):.1f} ms  "
            f"({stats.batches} batches of {stats.events / stats.batches:.0f} events)\n"
            f"      us per event (ae_stage_seconds): {per_event}  other "
            f"{1e6 * span / stats.events - 1e6 * sum(stages.values()) / stats.events:.1f}")
    return rate, line, 1e6 * stages["detector"] / stats.events


def snapshot_cost(settings: Settings, X: np.ndarray) -> None:
    """Size and serialisation time of one partition's snapshot after the run's events."""
    det = AutoencoderDetector(settings.detector.to_config(X.shape[1], channel_names(X.shape[1])))
    det.process_many(X)
    started = time.perf_counter()
    blob = dumps(det, {"next_offset": len(X)})
    took = time.perf_counter() - started
    started = time.perf_counter()
    loads_with_metadata(blob)
    back = time.perf_counter() - started
    print(f"snapshot of one partition: {len(blob) / 1024:,.0f} KiB, written in {took * 1000:.1f} ms, "
          f"read in {back * 1000:.1f} ms")


if __name__ == "__main__":
    with settled_garbage_collector():  # as the ae-worker command runs
        main()
