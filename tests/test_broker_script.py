"""scripts/kafka/broker.sh: `stop` then `start` keeps the broker's topics and records."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.conftest import ROOT, broker_port
from tests.test_kafka_worker import read_topic

pytestmark = pytest.mark.kafka
SCRIPT = str(ROOT / "scripts" / "kafka" / "broker.sh")


def test_stop_and_start_keep_the_data(tmp_path: Path, kafka: str) -> None:
    # `kafka` only makes sure the jars are fetched (the shared broker fetched them); this test
    # runs a broker of its own on other ports and folders.
    port = broker_port()
    env = {**os.environ, "AE_KAFKA_PORT": str(port), "AE_KAFKA_HOME": str(tmp_path / "kafka")}

    def broker(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SCRIPT, command], env=env, capture_output=True, text=True, timeout=300)

    bootstrap = f"127.0.0.1:{port}"
    assert broker("up").returncode == 0
    try:
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_topics([NewTopic("kept", 1, 1)])
        admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        producer.send("kept", b"before the stop").get(timeout=30)
        producer.close()
        assert broker("stop").returncode == 0
        assert broker("status").returncode != 0
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()
        started = broker("start")
        assert started.returncode == 0, started.stderr
        assert [m.value for m in read_topic(bootstrap, "kept")] == [b"before the stop"]
    finally:
        broker("down")
    assert not (tmp_path / "kafka" / "data").exists()


def test_the_console_consumer_reads_only_committed_transactions(kafka: str, topic_prefix: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"{topic_prefix}-console"
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(topic, 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka, transactional_id=f"{topic_prefix}-tx")
    producer.init_transactions()
    for value, commit in ((b"kept", True), (b"aborted", False)):
        producer.begin_transaction()
        producer.send(topic, value)
        producer.commit_transaction() if commit else producer.abort_transaction()
    producer.close()
    env = {**os.environ, "AE_KAFKA_PORT": kafka.rsplit(":", 1)[1]}
    done = subprocess.run([SCRIPT, "consume", topic, "--from-beginning", "--isolation-level", "read_committed",
                           "--timeout-ms", "10000"], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["kept"], done.stderr[-2000:]
