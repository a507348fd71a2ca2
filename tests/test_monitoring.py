"""The deployment files: compose runs the Kafka the tests run, and every metric that the alert rules
and the Grafana dashboard name is one a real worker exports."""

from __future__ import annotations

import json
import re

import pytest
from kafka import KafkaProducer
from prometheus_client import generate_latest

from tests.conftest import ROOT
from tests.test_kafka_worker import settings
from worker.kafka.kafka_io import ensure_topics
from worker.kafka.service import Worker


def named_metrics() -> set[str]:
    texts = [(ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "ae-worker.json").read_text())
    texts += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return set(re.findall(r"\bae_[a-z_]+", "\n".join(texts)))


def test_compose_runs_the_kafka_version_the_tests_run() -> None:
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom).group(1)  # type: ignore[union-attr]
    images = re.findall(r"image: apache/kafka:(\S+)", (ROOT / "docker-compose.yml").read_text())
    assert images == [version]


def test_the_prometheus_config_names_its_rules_and_the_worker() -> None:
    config = (ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config and '"worker:9108"' in config
    assert {"ae_consumer_lag", "ae_dead_letters_total", "ae_failed_batches_total"} <= named_metrics()


@pytest.mark.kafka
def test_every_metric_the_rules_and_dashboard_name_is_exported(kafka: str, topic_prefix: str) -> None:
    s = settings(kafka, topic_prefix, detector={"warmup": 64, "batch_size": 32})
    s = s.model_copy(update={"events": s.events.model_copy(update={"channels": ("a", "b")})})
    ensure_topics(s.kafka, [f"{topic_prefix}-in"], create=True)
    producer = KafkaProducer(bootstrap_servers=kafka)
    for i in range(300):
        value = {"key": "d", "readings": {"a": float(i % 7), "b": float(2 * (i % 7))}}
        if i == 250:
            value["readings"] = {"a": 90.0, "b": -50.0}  # flagged
        producer.send(f"{topic_prefix}-in", key=b"d", value=json.dumps(value).encode())
    producer.send(f"{topic_prefix}-in", key=b"d", value=b"not json")  # a dead letter
    producer.flush()
    producer.close()
    worker = Worker(s)
    assert worker.run().events == 301
    exported = set(re.findall(r"^(ae_[a-z_]+)", generate_latest(worker.metrics.registry).decode(), re.MULTILINE))
    missing = named_metrics() - exported
    assert not missing, f"named by the rules or the dashboard but not exported: {sorted(missing)}"
