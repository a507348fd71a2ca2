"""A real Apache Kafka broker for the tests that need one, started once per session.

Set AE_TEST_BOOTSTRAP=host:port to use a broker you already run; otherwise the first test that
asks for ``kafka`` starts scripts/kafka/broker.sh on a spare loopback port and the session
stops it at the end, leaving no process behind.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_port() -> int:
    """A free loopback port whose next port (the controller's) is free too."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("AE_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    port = broker_port()
    env = {**os.environ, "AE_KAFKA_PORT": str(port), "AE_KAFKA_HOME": str(tmp_path_factory.mktemp("kafka"))}
    script = str(ROOT / "scripts" / "kafka" / "broker.sh")
    subprocess.run([script, "up"], env=env, check=True, timeout=600)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([script, "down"], env=env, check=False, timeout=120)


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"
