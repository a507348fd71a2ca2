"""A replicated cluster (scripts/kafka/cluster.sh: three KRaft nodes, replication factor 3,
min.insync.replicas 2) losing nodes under a live stream: the worker's read_committed output must
equal an uninterrupted worker's, record for record, and every event must be committed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.test_crash_equivalence import (
    create_input,
    expected_records,
    feed,
    lagging,
    published_records,
    stream,
    total_committed,
)
from tests.test_kafka_worker import run_cli, settings

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]
SCRIPT = str(ROOT / "scripts" / "kafka" / "cluster.sh")
PARTITIONS, PER_PARTITION = 4, 1500


def cluster_base_port() -> int:
    """A loopback port P with P .. P+5 free (three nodes, each a client and a controller port)."""
    for base in range(21000, 40000, 17):
        try:
            for port in range(base, base + 6):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no six free loopback ports in a row")


class Cluster:
    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, "AE_KAFKA_CLUSTER_PORT": str(cluster_base_port()),
                    "AE_KAFKA_CLUSTER_HOME": str(home)}

    def __call__(self, *args: str) -> str:
        done = subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"cluster.sh {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout.strip()

    @property
    def bootstrap(self) -> str:
        return self("bootstrap")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, kafka: str) -> Iterator[Cluster]:
    # (`kafka` first: the shared broker fetches the jars the cluster runs)
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c("up")
    try:
        yield c
    finally:
        subprocess.run([SCRIPT, "down"], env=c.env, capture_output=True, timeout=300)


class Probes:
    """/healthz and /readyz asked every half second in a thread, the answers kept in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.health: list[int] = []
        self.ready: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _ask(self, path: str) -> int | None:
        try:
            return int(urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2).status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None  # not listening (a worker being restarted)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for path, answers in (("/healthz", self.health), ("/readyz", self.ready)):
                status = self._ask(path)
                if status is not None:
                    answers.append(status)


def run_through(cluster: Cluster, prefix: str, exactly_once: bool, disrupt: Callable[[], None],
                kill_worker: bool = False) -> None:
    """Feed a paced stream to 4 partitions, run a worker, call ``disrupt`` once a quarter of the
    events are committed, then check the output against uninterrupted detectors."""
    bootstrap = cluster.bootstrap
    create_input(bootstrap, f"{prefix}-in", PARTITIONS)  # replication: the cluster's default, 3
    X = stream(PARTITIONS, PER_PARTITION, seed=31)
    feeder = threading.Thread(target=feed, args=(bootstrap, f"{prefix}-in", X, 400.0))  # about 15 s
    feeder.start()
    port = free_port()
    args = ["run", "--bootstrap-servers", bootstrap, "--input-topic", f"{prefix}-in", "--output-topic",
            f"{prefix}-out", "--dlq-topic", f"{prefix}-dlq", "--group-id", f"{prefix}-group", "--create-topics",
            "--metrics-port", str(port), "--batch-max-events", "40", "--instance-id", "w1",
            *(["--exactly-once"] if exactly_once else [])]
    group, topic = f"{prefix}-group", f"{prefix}-in"
    worker = run_cli(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probes = Probes(port)
    logs = ""
    try:
        deadline = time.monotonic() + 120
        while total_committed(bootstrap, group, topic, PARTITIONS) < PARTITIONS * PER_PARTITION // 4:
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                pytest.fail(f"the worker did not get going: {worker.communicate(timeout=60)[1][-4000:]}")
            time.sleep(0.2)
        probes.start()
        disrupt()
        if kill_worker:
            worker.kill()
            logs += worker.communicate(timeout=60)[1]
            worker = run_cli(args, env={"AE_LOG_LEVEL": os.environ.get("CLUSTER_TEST_LOG_LEVEL", "INFO")},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        feeder.join(timeout=180)
        behind = lagging(bootstrap, group, topic, PARTITIONS, timeout=240)
        probes.stop()
        worker.send_signal(signal.SIGTERM)
        logs += worker.communicate(timeout=120)[1]
    finally:
        probes.stop()
        worker.kill()
        feeder.join(timeout=60)
    # /healthz: 200 on every answer (a restarted worker is not yet listening for a moment);
    # /readyz: answered all along, and ready again once the cluster has recovered and the lag is 0
    assert probes.health and set(probes.health) == {200}, probes.health
    assert probes.ready and probes.ready[-1] == 200, probes.ready[-20:]
    assert behind == [], logs[-4000:]
    assert worker.returncode == 0, logs[-4000:]
    published = published_records(bootstrap, f"{prefix}-out")
    assert len(published) == len(set(published)), "a record published twice"
    assert published == expected_records(X, settings(bootstrap, prefix)) and published, logs[-4000:]


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_killing_the_leader_of_the_output_mid_stream_changes_nothing(
        cluster: Cluster, topic_prefix: str, exactly_once: bool) -> None:
    def kill_the_leader() -> None:
        node = cluster("leader", f"{topic_prefix}-out", "0")
        cluster("kill", node)  # kill -9: no controlled shutdown, leadership moves on the session timeout
        time.sleep(5)
        cluster("start", node)

    run_through(cluster, topic_prefix, exactly_once, kill_the_leader)


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
def test_a_rolling_restart_of_every_node_mid_stream_changes_nothing(
        cluster: Cluster, topic_prefix: str, exactly_once: bool) -> None:
    def roll() -> None:
        for node in ("1", "2", "3"):
            cluster("stop", node)  # controlled shutdown: leadership moves first
            cluster("start", node)

    run_through(cluster, topic_prefix, exactly_once, roll)


def test_a_worker_killed_while_a_leader_is_being_elected_resumes_exactly(
        cluster: Cluster, topic_prefix: str) -> None:
    killed: list[str] = []

    def kill_the_leader() -> None:
        killed.append(cluster("leader", f"{topic_prefix}-in", "0"))
        cluster("kill", killed[0])  # the worker dies next, while the election is pending

    try:
        run_through(cluster, topic_prefix, True, kill_the_leader, kill_worker=True)
    finally:
        if killed:
            cluster("start", killed[0])


def test_the_cluster_script_reports_leaders_and_survives_a_node(cluster: Cluster, topic_prefix: str) -> None:
    bootstrap = cluster.bootstrap
    assert bootstrap.count(",") == 2
    create_input(bootstrap, f"{topic_prefix}-t", 2)
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        partitions = admin.describe_topics([f"{topic_prefix}-t"])[0]["partitions"]
    finally:
        admin.close()
    assert all(sorted(p["replica_nodes"]) == [1, 2, 3] for p in partitions)
    leader = cluster("leader", f"{topic_prefix}-t", "1")
    assert leader == str(next(p["leader_id"] for p in partitions if p["partition_index"] == 1))
    cluster("kill", leader)
    try:
        deadline = time.monotonic() + 60
        while cluster("leader", f"{topic_prefix}-t", "1") == leader:
            assert time.monotonic() < deadline, "no new leader within 60 s"
            time.sleep(1)
    finally:
        cluster("start", leader)
    assert "not running" not in cluster("status")
