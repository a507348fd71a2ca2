"""Horizontal scale: 1, 2 and 4 worker processes in one consumer group on a 4-partition topic.

    scripts/kafka/broker.sh up
    python bench/kafka_scale.py [--bootstrap 127.0.0.1:9092] [--events 120000] [--workers 1,2,4]

Fills a fresh 4-partition topic (one device per partition, simulated events with anomalies),
then, for each count, starts that many ``ae-worker run`` processes in a new group reading it from
the start, and watches the group's committed offsets: events/s from the first commit to the
commit that completes the topic (process start-up and the first rebalance are left out; later
rebalances, as workers join, are not). A partition is consumed by one worker of a group at a
time, so the partitions bound the useful workers; the machine's cores bound them too, since a
worker's scoring and learning run on one core (one torch thread each).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from bench.kafka_throughput import fill  # noqa: E402
from worker.kafka.kafka_io import ensure_topics  # noqa: E402
from worker.replay.simulate import simulate  # noqa: E402
from worker.settings import load_settings  # noqa: E402

PARTITIONS = 4


def committed_total(consumer: KafkaConsumer, tps: list[TopicPartition]) -> int:
    return sum(consumer.committed(tp) or 0 for tp in tps)


def run_group(bootstrap: str, topic: str, workers: int, events: int) -> tuple[float, float]:
    """(events/s from the first commit to the last, seconds from start to the last commit)."""
    group = f"{topic}-x{workers}-{uuid.uuid4().hex[:4]}"
    command = [sys.executable, "-m", "worker", "run", "--bootstrap-servers", bootstrap, "--input-topic", topic,
               "--output-topic", f"{topic}-out", "--dlq-topic", f"{topic}-dlq", "--group-id", group,
               "--metrics-port", "0", "--idle-timeout", "20", "--log-level", "WARNING", "--create-topics"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(workers)]
    watcher = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    first_at = first_done = None
    try:
        while True:
            done = committed_total(watcher, tps)
            now = time.perf_counter()
            if done and first_at is None:
                first_at, first_done = now, done
            if done >= events:
                break
            stopped = [p for p in procs if p.poll() is not None]
            if now - started > 1800 or stopped:
                why = stopped[0].stderr.read().decode()[-2000:] if stopped else "stalled"  # type: ignore[union-attr]
                raise SystemExit(f"workers stopped at {done} of {events} events: {why}")
            time.sleep(0.1)
    finally:
        watcher.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=120)
    return (events - (first_done or 0)) / (now - (first_at or started)), now - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=120_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    topic = f"scale-{uuid.uuid4().hex[:8]}"
    settings = load_settings(kafka={"bootstrap_servers": args.bootstrap, "input_topics": topic,
                                    "topic_partitions": PARTITIONS, "create_topics": True})
    ensure_topics(settings.kafka, [topic], create=True)
    fill(args.bootstrap, topic, simulate(args.events, args.features, seed=0)[0], PARTITIONS)
    print(f"events: {args.events} on {PARTITIONS} partitions, {args.features} features, {os.cpu_count()} cores, "
          "at least once, one torch thread per worker")
    base = None
    for count in (int(w) for w in args.workers.split(",")):
        rate, wall = run_group(args.bootstrap, topic, count, args.events)
        base = base or rate
        print(f"  {count} worker(s): {rate:>9,.0f} events/s   {rate / base:.2f}x one worker   "
              f"({wall:.1f} s from start to the last commit)")


if __name__ == "__main__":
    main()
