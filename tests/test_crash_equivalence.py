"""Crashes, restarts, rebalances and broker outages give the output of one uninterrupted worker.

Each test streams events on a real broker, disturbs the workers, and compares what reached the
output topic (read as a ``read_committed`` consumer would) with what one detector per partition
decides on the same events without interruption.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from ae_core import AutoencoderDetector
from tests.conftest import ROOT, broker_port, free_port
from tests.test_kafka_worker import committed, read_topic, run_cli, settings, wait_for_partitions
from worker.kafka.service import Worker
from worker.settings import Settings

pytestmark = pytest.mark.kafka
CHANNELS = ("a", "b", "c")


def stream(partitions: int, per_partition: int, seed: int) -> np.ndarray:
    """Readings of one device per partition: correlated channels with a few injected faults.
    Shape (per_partition, partitions, 3)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(per_partition, partitions, 1))
    X = np.concatenate([base, -base + 0.1 * rng.normal(size=base.shape), 0.5 * base], axis=2)
    for start in range(900, per_partition - 10, 1100):
        X[start:start + 6, :, 0] += 9.0  # a fault on channel a, in every device
    return np.round(X, 6)


def feed(bootstrap: str, topic: str, X: np.ndarray, rate: float) -> None:
    """Send event i of device p to partition p, ``rate`` events per second in all (0 = at once)."""
    # acks=all and idempotence: no event lost or doubled when a partition leader is lost meanwhile
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", enable_idempotence=True)
    started = time.monotonic()
    sent = 0
    for row in X:
        for p, values in enumerate(row):
            producer.send(topic, partition=p, key=f"dev-{p}".encode(),
                          value=json.dumps({"key": f"dev-{p}", "readings": dict(zip(CHANNELS, values.tolist()))})
                          .encode())
            sent += 1
        if rate:
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set as the CLI sets them (the sums of a matrix product, and so the
    last bits of a score, depend on how many threads share it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def expected_records(X: np.ndarray, s: Settings) -> list[tuple[int, int, str, float, float]]:
    """(partition, offset, type, score, threshold) of every output record of uninterrupted
    detectors, one per partition: a restored detector must publish these to the bit."""
    out = []
    with torch_threads(s.torch_threads):
        for p in range(X.shape[1]):
            det = AutoencoderDetector(s.detector.to_config(len(CHANNELS), CHANNELS))
            res = det.process_many(X[:, p, :], np.array([f"dev-{p}"] * len(X)))
            for i in range(len(X)):
                kind = ("anomaly" if res.is_anomaly[i] else "episode_closed" if i in res.closed
                        else "regime_change" if res.regime_change[i] else None)
                if kind is not None:
                    out.append((p, i, kind, float(res.score[i]), float(res.threshold[i])))
    return sorted(out)


def published_records(bootstrap: str, topic: str) -> list[tuple[int, int, str, float, float]]:
    records = [json.loads(m.value) for m in read_topic(bootstrap, topic, isolation_level="read_committed")]
    return sorted((r["source"]["partition"], r["source"]["offset"], r["type"], r["score"], r["threshold"])
                  for r in records)


def total_committed(bootstrap: str, group: str, topic: str, partitions: int) -> int:
    return sum(committed(bootstrap, group, TopicPartition(topic, p)) or 0 for p in range(partitions))


def lagging(bootstrap: str, group: str, topic: str, partitions: int, timeout: float = 0.0) -> list[TopicPartition]:
    """The partitions whose committed offset is still short of the end after waiting up to ``timeout``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
    finally:
        consumer.close()
    deadline = time.monotonic() + timeout
    while True:
        behind = [tp for tp, end in ends.items() if committed(bootstrap, group, tp) != end]
        if not behind or time.monotonic() >= deadline:
            return behind
        time.sleep(0.5)


def create_input(bootstrap: str, topic: str, partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, -1)])  # the broker's default replication
    admin.close()
    wait_for_partitions(bootstrap, topic, partitions)


def cli_args(kafka: str, prefix: str, *extra: str) -> list[str]:
    return ["run", "--bootstrap-servers", kafka, "--input-topic", f"{prefix}-in", "--output-topic", f"{prefix}-out",
            "--dlq-topic", f"{prefix}-dlq", "--group-id", f"{prefix}-group", "--create-topics", "--metrics-port", "0",
            "--batch-max-events", "40", "--exactly-once", *extra]


def kill_repeatedly(kafka: str, prefix: str, args: list[str], kills: int, partitions: int, seed: int,
                    env: dict[str, str]) -> str:
    """Start a worker, let it commit some batches, SIGKILL it at a random moment; ``kills`` times.
    Returns the workers' logs."""
    rng = np.random.default_rng(seed)
    logs = ""
    for _ in range(kills):
        before = total_committed(kafka, f"{prefix}-group", f"{prefix}-in", partitions)
        proc = run_cli(args, env=env)
        deadline = time.monotonic() + 90
        while (total_committed(kafka, f"{prefix}-group", f"{prefix}-in", partitions) < before + 300
               and time.monotonic() < deadline and proc.poll() is None):
            time.sleep(0.1)
        time.sleep(float(rng.uniform(0.0, 1.0)))
        proc.kill()  # SIGKILL: no shutdown, an open transaction, no final snapshot
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -9, err[-3000:]
        logs += err
    return logs


def test_kill_9_in_exactly_once_mode_publishes_each_record_of_an_uninterrupted_run_once(
        kafka: str, topic_prefix: str) -> None:
    partitions, per_partition = 4, 2500
    create_input(kafka, f"{topic_prefix}-in", partitions)
    X = stream(partitions, per_partition, seed=21)
    feeder = threading.Thread(target=feed, args=(kafka, f"{topic_prefix}-in", X, 1000.0))
    feeder.start()  # a live stream of about 10 s
    env = {"AE_SERVICE__SNAPSHOT_INTERVAL": "1"}
    args = cli_args(kafka, topic_prefix, "--instance-id", "w1")  # no --state-dir: state in the changelog only
    logs = kill_repeatedly(kafka, topic_prefix, args, kills=4, partitions=partitions, seed=21, env=env)
    assert "restored detector" in logs  # a restart took its state from the changelog
    feeder.join(timeout=120)
    final = run_cli([*args, "--idle-timeout", "5"], env=env)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-3000:]
    assert "exactly once" in err
    assert lagging(kafka, f"{topic_prefix}-group", f"{topic_prefix}-in", partitions) == []
    s = settings(kafka, topic_prefix)
    published = published_records(kafka, f"{topic_prefix}-out")
    assert len(published) == len(set(published))  # no record twice
    assert published == expected_records(X, s) and published  # none missing, none extra


def test_two_workers_one_killed_repeatedly_publish_each_record_once(kafka: str, topic_prefix: str,
                                                                      tmp_path: Path) -> None:
    partitions, per_partition = 4, 2000
    create_input(kafka, f"{topic_prefix}-in", partitions)
    X = stream(partitions, per_partition, seed=22)
    feeder = threading.Thread(target=feed, args=(kafka, f"{topic_prefix}-in", X, 500.0))
    feeder.start()  # about 16 s: the kills land mid-stream
    env = {"AE_SERVICE__SNAPSHOT_INTERVAL": "1"}
    log = (tmp_path / "steady.log").open("w")  # a file: a pipe nobody reads for a minute could fill and stall it
    steady = run_cli(cli_args(kafka, topic_prefix, "--instance-id", "steady", "--state-dir", str(tmp_path / "s")),
                     env=env, stderr=log)
    try:
        # the other worker, with no state dir, joins and dies repeatedly: partitions move between them
        kill_repeatedly(kafka, topic_prefix, cli_args(kafka, topic_prefix, "--instance-id", "flaky"), kills=3,
                        partitions=partitions, seed=22, env=env)
        feeder.join(timeout=120)
        # the dead static member's partitions reach the steady worker after the session timeout
        lagging(kafka, f"{topic_prefix}-group", f"{topic_prefix}-in", partitions, timeout=180)
        steady.send_signal(signal.SIGTERM)
        steady.communicate(timeout=120)
    finally:
        steady.kill()
        log.close()
    assert steady.returncode == 0, (tmp_path / "steady.log").read_text()[-3000:]
    assert lagging(kafka, f"{topic_prefix}-group", f"{topic_prefix}-in", partitions) == []
    published = published_records(kafka, f"{topic_prefix}-out")
    assert len(published) == len(set(published))
    assert published == expected_records(X, settings(kafka, topic_prefix)) and published


@pytest.mark.timeout(600)  # a broker of its own, a 20 s outage and 6,000 events: minutes on a busy machine
@pytest.mark.parametrize(("exactly_once", "stop_at"), [(False, 4000), (True, 1000)],
                         ids=["at-least-once-idle", "exactly-once-busy"])
def test_a_broker_outage_of_20_seconds_is_ridden_out_with_the_same_output(
        tmp_path: Path, kafka: str, topic_prefix: str, exactly_once: bool, stop_at: int) -> None:
    # stop_at 4000: the broker goes while the worker is idle (all fed events done), so only its
    # idle check can notice; 1000: while it is busy publishing and committing
    # a broker of its own (the jars come with the shared one), stopped and started keeping its data
    port = broker_port()
    env = {**os.environ, "AE_KAFKA_PORT": str(port), "AE_KAFKA_HOME": str(tmp_path / "kafka")}
    script = str(ROOT / "scripts" / "kafka" / "broker.sh")

    def broker(command: str) -> None:
        done = subprocess.run([script, command], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    bootstrap = f"127.0.0.1:{port}"
    broker("up")
    worker_thread = None
    # what the group coordinator client did, shown if the worker never gets its partition
    coordinator_log = tmp_path / "coordinator.log"
    handler = logging.FileHandler(coordinator_log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s"))
    coordinator_logger = logging.getLogger("kafka.coordinator")
    coordinator_logger.addHandler(handler)
    level = coordinator_logger.level
    coordinator_logger.setLevel(logging.DEBUG)
    try:
        create_input(bootstrap, f"{topic_prefix}-in", 1)
        X = stream(1, 6000, seed=23)
        feed(bootstrap, f"{topic_prefix}-in", X[:4000], rate=0)
        metrics_port = free_port()
        s = settings(bootstrap, topic_prefix, max_poll_records=10, exactly_once=exactly_once, instance_id="w1",
                     # idle_timeout shorter than the outage: waiting for the broker must not count as idle
                     service={"idle_timeout": 10, "metrics_port": metrics_port, "snapshot_interval": 1})
        worker = Worker(s)

        def run_as_the_cli_does() -> None:
            with torch_threads(s.torch_threads):
                worker.run()

        worker_thread = threading.Thread(target=run_as_the_cli_does)
        worker_thread.start()
        group, topic = f"{topic_prefix}-group", f"{topic_prefix}-in"
        deadline = time.monotonic() + 120
        while total_committed(bootstrap, group, topic, 1) < stop_at and time.monotonic() < deadline:
            time.sleep(0.05)
        assert total_committed(bootstrap, group, topic, 1) >= stop_at, coordinator_log.read_text()[-6000:]
        broker("stop")
        stopped = time.monotonic()
        answers: list[int] = []
        while time.monotonic() - stopped < 20:
            try:
                answers.append(urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2).status)
            except urllib.error.HTTPError as exc:
                answers.append(exc.code)
            except OSError:
                pass
            time.sleep(0.5)
        assert worker_thread.is_alive()  # it waits for the broker
        assert 503 in answers
        broker("start")
        feed(bootstrap, f"{topic_prefix}-in", X[4000:], rate=0)
        worker_thread.join(timeout=240)
        assert not worker_thread.is_alive()
        assert lagging(bootstrap, group, topic, 1) == []
        waits = sum(sample.value for metric in worker.metrics.registry.collect() if metric.name == "ae_broker_waits"
                    for sample in metric.samples if sample.name == "ae_broker_waits_total")
        assert waits > 0
        published = published_records(bootstrap, f"{topic_prefix}-out")
        assert published == expected_records(X, s) and published  # the same, once each
    finally:
        if worker_thread is not None and worker_thread.is_alive():
            worker.stop.set()
            worker_thread.join(timeout=60)
        subprocess.run([script, "down"], env=env, capture_output=True, timeout=120)
        coordinator_logger.removeHandler(handler)
        coordinator_logger.setLevel(level)
        handler.close()


def test_a_malformed_first_event_does_not_decide_the_channels(kafka: str, topic_prefix: str) -> None:
    create_input(kafka, f"{topic_prefix}-in", 1)
    producer = KafkaProducer(bootstrap_servers=kafka)
    first = [{"key": "d", "readings": {"a": 1.0, "b": 2.0}},  # one channel short
             {"key": "d", "readings": {"a": 1.0}}]  # a single channel: no model could be built on it
    for event in first:
        producer.send(f"{topic_prefix}-in", json.dumps(event).encode())
    X = stream(1, 300, seed=24)
    for row in X:
        producer.send(f"{topic_prefix}-in", json.dumps({"key": "d", "readings": dict(zip(CHANNELS, row[0].tolist()))})
                      .encode())
    producer.flush()
    producer.close()
    stats = Worker(settings(kafka, topic_prefix)).run()
    assert stats.events == 302 and stats.dead_letters == 2  # every valid event scored
    dead = read_topic(kafka, f"{topic_prefix}-dlq")
    assert sorted(int(dict(m.headers)["ae-source-offset"]) for m in dead) == [0, 1]
    assert {dict(m.headers)["ae-error"] for m in dead} == {b"missing channel 'c'", b"missing channel 'b'"}
    assert committed(kafka, f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-in", 0)) == 302


def test_events_waiting_for_their_channels_are_not_committed(kafka: str, topic_prefix: str) -> None:
    create_input(kafka, f"{topic_prefix}-in", 1)
    producer = KafkaProducer(bootstrap_servers=kafka)
    for i in range(5):  # fewer than schema_sample (16) valid events: held, not scored, not committed
        producer.send(f"{topic_prefix}-in", json.dumps({"key": "d", "readings": {"a": i, "b": -i}}).encode())
    producer.flush()
    producer.close()
    stats = Worker(settings(kafka, topic_prefix, service={"idle_timeout": 2})).run()
    assert stats.events == 0
    assert committed(kafka, f"{topic_prefix}-group", TopicPartition(f"{topic_prefix}-in", 0)) is None
    configured = settings(kafka, topic_prefix, service={"idle_timeout": 2})
    configured = configured.model_copy(update={"events": configured.events.model_copy(update={"channels": ("a", "b")})})
    assert Worker(configured).run().events == 5  # with the channels set, nothing waits
