"""Soak: many kill -9s and rebalances during a live stream, compared with an uninterrupted run.

    scripts/kafka/broker.sh up            # or make kafka-up
    python bench/soak.py [--bootstrap 127.0.0.1:9092] [--kills 20] [--at-least-once]
    python bench/soak.py --cluster [--kills 20] [--at-least-once]   # on scripts/kafka/cluster.sh's three nodes

A 4-partition topic gets a live stream of one device per partition. One worker starts, two more
join (1 -> 3 workers), then a random worker is killed with SIGKILL and restarted ``--kills``
times, then all three stop and one worker drains the rest (3 -> 1). The anomaly topic, read
``read_committed``, is compared record for record with one uninterrupted detector per partition:
missing, extra, duplicated records, Jaccard similarity, and the group's lag. Not part of the tests
(it runs for minutes); the tests run a short version of the same checks.

With ``--cluster`` it runs on the local three-node cluster (started when it is not running) and
the brokers fail too: every fourth worker kill comes with a ``kill -9`` of the node leading the
anomalies topic or an input partition, in turn (started again 5 s later), and halfway through, all
three nodes are restarted one after another (a rolling restart; no node is killed meanwhile). It
also prints the longest gap between consecutive anomaly records (their timestamps) and when it
began: what a failover costs the output.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from tests.conftest import ROOT  # noqa: E402
from tests.test_crash_equivalence import (  # noqa: E402
    create_input,
    expected_records,
    feed,
    published_records,
    stream,
)
from tests.test_kafka_worker import committed, read_topic  # noqa: E402
from worker.settings import load_settings  # noqa: E402

PARTITIONS = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--per-partition", type=int, default=6000)
    parser.add_argument("--seconds-between-kills", type=float, default=4.0, help="mean; uniform 0.5x..1.5x")
    parser.add_argument("--at-least-once", action="store_true", help="the default mode instead of exactly once")
    parser.add_argument("--cluster", action="store_true", help="on scripts/kafka/cluster.sh, with leader kills "
                        "and a rolling restart")
    args = parser.parse_args()
    if args.cluster:
        if subprocess.run([CLUSTER, "status"], capture_output=True).returncode != 0:
            subprocess.run([CLUSTER, "up"], check=True)
        args.bootstrap = cluster("bootstrap")
    prefix = f"soak-{uuid.uuid4().hex[:6]}"
    topic, group = f"{prefix}-in", f"{prefix}-group"
    create_input(args.bootstrap, topic, PARTITIONS)
    X = stream(PARTITIONS, args.per_partition, seed=31)
    rate = X.shape[0] * PARTITIONS / (args.kills * args.seconds_between_kills + 30)
    feeder = threading.Thread(target=feed, args=(args.bootstrap, topic, X, rate))
    feeder.start()
    base = ["run", "--bootstrap-servers", args.bootstrap, "--input-topic", topic, "--output-topic", f"{prefix}-out",
            "--dlq-topic", f"{prefix}-dlq", "--group-id", group, "--create-topics", "--metrics-port", "0",
            "--batch-max-events", "100", *([] if args.at_least_once else ["--exactly-once"])]
    logs = Path(tempfile.mkdtemp(prefix="ae-soak-"))
    env = {**os.environ, "AE_SERVICE__SNAPSHOT_INTERVAL": "2"}

    def start(name: str, *extra: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("a")  # a file, not a pipe: a full pipe would stall the worker
        return subprocess.Popen([sys.executable, "-m", "worker", *base, "--instance-id", name, *extra],
                                cwd=ROOT, env=env, stdout=log, stderr=log)

    rng = np.random.default_rng(31)
    restarting = threading.Thread(target=rolling_restart)
    started, began = time.monotonic(), time.time()
    workers = {"w0": start("w0")}
    time.sleep(8)
    for name in ("w1", "w2"):  # 1 -> 3 workers
        workers[name] = start(name)
    for kill in range(args.kills):
        time.sleep(float(rng.uniform(0.5, 1.5)) * args.seconds_between_kills)
        name = str(rng.choice(sorted(workers)))
        workers[name].kill()
        workers[name].wait(timeout=30)
        workers[name] = start(name)
        print(f"kill {kill + 1}/{args.kills}: {name} at {time.monotonic() - started:.0f} s", flush=True)
        if args.cluster and kill % 4 == 1 and not restarting.is_alive():  # one broker failure at a time
            # the anomalies topic (one partition, as --create-topics makes it) or an input partition
            which, partition = [(f"{prefix}-out", "0"), (topic, str(int(rng.integers(PARTITIONS))))][kill // 4 % 2]
            node = leader(which, partition)
            if node is None:
                print(f"  no leader for {which}-{partition} (an election under way): no node killed")
            else:
                cluster("kill", node)
                print(f"  kill -9 of node {node}, leading {which}-{partition}; started again in 5 s", flush=True)
                threading.Timer(5.0, cluster, args=("start", node)).start()
        if args.cluster and kill == args.kills // 2:
            print("  rolling restart of nodes 1, 2, 3", flush=True)
            restarting.start()
    feeder.join()
    for proc in workers.values():  # 3 -> 1
        proc.send_signal(signal.SIGTERM)
    for proc in workers.values():
        proc.wait(timeout=120)
    start("w0", "--idle-timeout", "15").wait(timeout=600)

    s = load_settings(kafka={"bootstrap_servers": args.bootstrap})
    expected = expected_records(X, s)
    published = published_records(args.bootstrap, f"{prefix}-out")
    want, got = set(expected), set(published)
    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap)
    ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.close()
    lag = sum(end - (committed(args.bootstrap, group, tp) or 0) for tp, end in ends.items())
    mode = "at least once" if args.at_least_once else "exactly once"
    print(f"{mode}: {X.shape[0] * PARTITIONS} events on {PARTITIONS} partitions, {args.kills} kills, "
          f"workers 1 -> 3 -> 1, {time.monotonic() - started:.0f} s")
    print(f"expected records {len(want)}  published {len(published)}  missing {len(want - got)}  "
          f"extra {len(got - want)}  duplicated {len(published) - len(got)}  "
          f"Jaccard {len(want & got) / max(1, len(want | got)):.3f}  lag {lag}  (worker logs in {logs})")
    gap, after = longest_gap(args.bootstrap, f"{prefix}-out", began)
    print(f"longest gap between anomaly records: {gap:.1f} s, from {after:.0f} s after the run began")


CLUSTER = str(ROOT / "scripts" / "kafka" / "cluster.sh")


def cluster(*args: str) -> str:
    return subprocess.run([CLUSTER, *args], check=True, capture_output=True, text=True, timeout=300).stdout.strip()


def leader(topic: str, partition: str) -> str | None:
    """The node leading the partition; None when none does for 10 s (an election under way)."""
    for _ in range(10):
        done = subprocess.run([CLUSTER, "leader", topic, partition], capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            return done.stdout.strip()
        time.sleep(1.0)
    return None


def rolling_restart() -> None:
    for node in ("1", "2", "3"):
        cluster("stop", node)
        cluster("start", node)


def longest_gap(bootstrap: str, topic: str, began: float) -> tuple[float, float]:
    """Seconds between the two consecutive records of ``topic`` (read_committed, by their
    timestamps) furthest apart, and when the gap began, in seconds after the run began."""
    stamps = sorted(m.timestamp for m in read_topic(bootstrap, topic, "read_committed"))
    if len(stamps) < 2:
        return 0.0, 0.0
    widest = int(np.argmax(np.diff(stamps)))
    return (stamps[widest + 1] - stamps[widest]) / 1000, stamps[widest] / 1000 - began


if __name__ == "__main__":
    main()
