"""A secured broker (scripts/kafka/secure.sh: SASL_SSL with SCRAM-SHA-512, a locally made CA, the
KRaft ACL authorizer, no plaintext listener for clients): the worker runs end to end with exactly
the ACLs the README lists, and a wrong password, an untrusted certificate or a missing ACL each
stop it within seconds with one line that names the cause. The password never reaches the log."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.conftest import ROOT
from tests.test_crash_equivalence import CHANNELS
from tests.test_kafka_worker import read_topic, run_cli
from worker.replay.simulate import simulate

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]
SCRIPT = str(ROOT / "scripts" / "kafka" / "secure.sh")
INPUT, OUTPUT, GROUP, PARTITIONS = "sensor-readings", "anomalies", "ae-worker", 4
# What the worker is granted, and nothing else (README "Securing" lists the same)
EXPECTED_ACLS = {
    ("TOPIC", "sensor-readings", "LITERAL"): {"READ", "DESCRIBE"},
    ("GROUP", "ae-worker", "LITERAL"): {"READ", "DESCRIBE"},
    ("TOPIC", "anomalies", "LITERAL"): {"WRITE", "DESCRIBE"},
    ("TOPIC", "sensor-readings-dlq", "LITERAL"): {"WRITE", "DESCRIBE"},
    ("TOPIC", "ae-worker-state", "LITERAL"): {"READ", "WRITE", "DESCRIBE"},
    ("TRANSACTIONAL_ID", "ae-worker-", "PREFIXED"): {"WRITE", "DESCRIBE"},
}


def two_free_ports() -> int:
    """A loopback port P with P and P + 1 free (the client and the controller listener)."""
    for port in range(41000, 60000, 7):
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free loopback ports in a row")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


class Secured:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "AE_KAFKA_SECURE_PORT": str(two_free_ports()), "AE_KAFKA_SECURE_HOME": str(home)}
        self.recording, self.fed = simulate(20_000, len(CHANNELS), seed=4)[0], 0

    def __call__(self, *args: str) -> str:
        done = subprocess.run([SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"secure.sh {' '.join(args)}: {done.stderr[-2000:]}"
        return done.stdout

    def acl(self, change: str, *resource: str) -> None:
        self("admin", "org.apache.kafka.tools.AclCommand", change, "--force", "--allow-principal", "User:ae-worker",
             *resource)

    @property
    def worker(self) -> dict[str, str]:
        return read_env(self.home / "worker.env")

    @property
    def admin(self) -> dict[str, Any]:
        """kafka-python settings of the admin user (a super user: reads everything)."""
        env = read_env(self.home / "admin.env")
        return {"bootstrap_servers": env["AE_KAFKA__BOOTSTRAP_SERVERS"], "security_protocol": "SASL_SSL",
                "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": env["AE_KAFKA__SASL_USERNAME"],
                "sasl_plain_password": env["AE_KAFKA__SASL_PASSWORD"], "ssl_cafile": env["AE_KAFKA__SSL_CAFILE"]}

    def feed(self, events: int) -> None:
        """The next ``events`` readings of one device (one recording, continued) to partition 0, as
        admin; the last 100 but 50 far off: anomalies to publish, whatever the detector has learned."""
        X = self.recording[self.fed:self.fed + events].copy()
        self.fed += events
        X[-100:-50, 0] += 50 * self.recording[:, 0].std()
        producer = KafkaProducer(**self.admin, acks="all")
        for row in X.tolist():
            producer.send(INPUT, partition=0, key=b"pump-1",
                          value=json.dumps({"key": "pump-1", "readings": dict(zip(CHANNELS, row))}).encode())
        producer.flush()
        producer.close()

    def outputs(self) -> list[dict[str, Any]]:
        admin = self.admin
        return [json.loads(m.value) for m in read_topic(admin.pop("bootstrap_servers"), OUTPUT, "read_committed",
                                                        **admin)]

    def lag(self) -> int:
        consumer = KafkaConsumer(**self.admin, group_id=GROUP, enable_auto_commit=False)
        tps = [TopicPartition(INPUT, p) for p in range(PARTITIONS)]
        ends = consumer.end_offsets(tps)
        lag = sum(ends[tp] - (consumer.committed(tp) or 0) for tp in tps)
        consumer.close()
        return lag


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, kafka: str) -> Iterator[Secured]:
    # (`kafka` first: the shared broker fetches the jars this one runs)
    s = Secured(tmp_path_factory.mktemp("secure"))
    s("up")
    try:
        yield s
    finally:
        subprocess.run([SCRIPT, "down"], env=s.env, capture_output=True, timeout=300)


def run_worker(secured: Secured, tmp_path: Path, *extra: str, timeout: float = 120,
               **env: str) -> tuple[int, str, float]:
    """``ae-worker run`` with worker.env (and ``env`` over it): exit code, stderr, seconds taken."""
    started = time.monotonic()
    proc = run_cli(["run", "--metrics-port", "0", "--idle-timeout", "4", "--batch-max-events", "200",
                    "--state-dir", str(tmp_path / "state"), *extra], env={**secured.worker, **env})
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err, time.monotonic() - started


def anomalies_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == "anomaly"]  # (episodes closed and new normals are published too)


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_the_worker_is_granted_exactly_what_it_needs(secured: Secured) -> None:
    granted: dict[tuple[str, str, str], set[str]] = {}
    resource = None
    for line in secured("acls").splitlines():
        found = re.search(r"resourceType=(\w+), name=(\S+), patternType=(\w+)\)", line)
        if found:
            resource = found.groups()
        op = re.search(r"principal=User:ae-worker, host=\*, operation=(\w+), permissionType=ALLOW", line)
        if op and resource:
            granted.setdefault(resource, set()).add(op.group(1))
    assert granted == EXPECTED_ACLS
    assert "PLAINTEXT" not in (secured.home / "server.properties").read_text().split("advertised.listeners=")[1] \
        .splitlines()[0]  # clients reach SASL_SSL only


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_the_worker_runs_end_to_end_with_exactly_its_acls(secured: Secured, tmp_path: Path, mode: str) -> None:
    before = len(anomalies_of(secured.outputs()))
    secured.feed(1200)
    extra = ("--exactly-once",) if mode == "exactly-once" else ()
    code, err, _ = run_worker(secured, tmp_path, *extra, AE_LOG_LEVEL="DEBUG")
    assert code == 0, err[-3000:]
    events, anomalies = (int(re.search(rf"{name}: (\d+)", err).group(1)) for name in ("events", "anomalies"))
    assert events == 1200 and anomalies > 0
    assert len(anomalies_of(secured.outputs())) - before == anomalies  # read by an outside client, read_committed
    assert secured.lag() == 0
    assert secured.worker["AE_KAFKA__SASL_PASSWORD"] not in err  # not even at DEBUG


def test_a_wrong_password_stops_the_worker_with_one_line(secured: Secured, tmp_path: Path) -> None:
    code, err, seconds = run_worker(secured, tmp_path, AE_KAFKA__SASL_PASSWORD="not-the-password-1234",
                                    AE_LOG_LEVEL="DEBUG")
    assert code == 2 and seconds < 60
    assert last_line(err).startswith("ae-worker: error: the broker at ") and "refused SASL SCRAM-SHA-512 " \
        "authentication as user 'ae-worker'" in last_line(err)
    assert "Traceback" not in err and "not-the-password-1234" not in err


def test_an_untrusted_certificate_stops_the_worker_with_one_line(secured: Secured, tmp_path: Path) -> None:
    other = str(secured.home / "tls" / "other-ca.pem")
    code, err, seconds = run_worker(secured, tmp_path, AE_KAFKA__SSL_CAFILE=other)
    assert code == 2 and seconds < 60
    assert f"presented a TLS certificate that the CA file {other} does not vouch for" in last_line(err)
    assert "Traceback" not in err


@pytest.mark.parametrize(("resource", "operations", "extra", "told"), [
    (("--group", GROUP), ("Read",), (), "it may not READ group 'ae-worker'"),
    (("--topic", OUTPUT), ("Write",), (), "it may not WRITE topic 'anomalies'"),
    (("--transactional-id", "ae-worker-", "--resource-pattern-type", "prefixed"), ("Write",), ("--exactly-once",),
     "it may not WRITE transactional ids prefixed 'ae-worker-'"),
    # (READ implies DESCRIBE: without both, the topic is out of the worker's sight)
    (("--topic", INPUT), ("Read", "Describe"), (), "user 'ae-worker' may not DESCRIBE it"),
], ids=["group-read", "output-write", "transactional-write", "input-describe"])
def test_a_missing_acl_is_named_with_user_operation_and_resource(
        secured: Secured, tmp_path: Path, resource: tuple[str, ...], operations: tuple[str, ...],
        extra: tuple[str, ...], told: str) -> None:
    secured.feed(800)
    ops = [arg for op in operations for arg in ("--operation", op)]
    secured.acl("--remove", *ops, *resource)
    try:
        code, err, seconds = run_worker(secured, tmp_path, *extra)
    finally:
        secured.acl("--add", *ops, *resource)
    assert code != 0 and seconds < 90, err[-3000:]
    line = last_line(err)
    assert line.startswith("ae-worker: error: ") and told in line, line
    assert "Traceback" not in err
    if "kafka-acls.sh" in line:  # the grant, ready to run
        assert f"--allow-principal User:ae-worker --operation {operations[0]}" in line
