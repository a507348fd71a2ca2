"""Starting without a broker: the worker waits in sight (health endpoint, a line per retry),
stops when asked, and gives up after its start timeout with one line, never a traceback."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request

from kafka.errors import KafkaConnectionError

from tests.conftest import free_port
from tests.test_kafka_worker import run_cli
from worker.kafka.service import Worker
from worker.settings import load_settings


def status(port: int, path: str) -> int | None:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=1).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_waiting_for_the_broker_serves_health_and_honours_sigterm() -> None:
    nowhere, port = free_port(), free_port()
    worker = run_cli(["run", "--bootstrap-servers", f"127.0.0.1:{nowhere}", "--metrics-port", str(port)],
                     env={"AE_SERVICE__START_TIMEOUT": "none"})
    try:
        deadline = time.monotonic() + 60
        while status(port, "healthz") != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status(port, "healthz") == 200 and status(port, "readyz") == 503
        time.sleep(3)  # at least one retry
        asked = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
        took = time.monotonic() - asked
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert took < 5, f"SIGTERM took {took:.1f} s"
    assert f"waiting for the broker at 127.0.0.1:{nowhere}" in err and "Traceback" not in err
    assert "ECONNREFUSED" in err or "bootstrap" in err.lower()  # the reason, in the worker's own line
    assert err.count("kafka.net") == 0  # kafka-python's connection errors stay out of normal logs


def test_no_broker_within_the_start_timeout_is_one_clear_error() -> None:
    nowhere = free_port()
    for args in (["run", "--metrics-port", "0"], ["produce", "-", "--topic", "t"], ["record", "--topic", "t",
                                                                                   "-o", "/dev/null"]):
        started = time.monotonic()
        proc = run_cli([*args, "--bootstrap-servers", f"127.0.0.1:{nowhere}"],
                       env={"AE_SERVICE__START_TIMEOUT": "2"}, stdin=None if args[0] != "produce" else -1)
        _, err = proc.communicate(input="a,b\n1,2\n" if args[0] == "produce" else None, timeout=60)
        assert proc.returncode == 2, err
        assert time.monotonic() - started < 30
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"ae-worker: error: no Kafka broker answered at 127.0.0.1:{nowhere} within 2 s"), err
        assert "Traceback" not in err


def test_idle_timeout_counts_from_the_brokers_return_not_from_the_last_failed_call() -> None:
    # seen in CI: the backoff before the broker's first answer after an outage (up to 8 s) counted
    # as idleness, so a worker with idle_timeout 10 exited before fetching what was fed meanwhile
    worker = Worker(load_settings(service={"metrics_port": 0, "idle_timeout": 10}))
    answered: list[float] = []

    def broker_back_on_the_second_try() -> str:
        if not answered:
            answered.append(0.0)
            raise KafkaConnectionError("the broker is away")
        answered.append(time.monotonic())
        return "end offsets"

    worker._idle_since = time.monotonic() - 60  # a minute since the last event
    assert worker._retry("checking the broker", broker_back_on_the_second_try) == "end offsets"
    assert worker._waiting_for is None and worker.ready is False  # (no partitions: not ready anyway)
    assert worker._idle_since >= answered[-1]
    assert worker.metrics.broker_waits.labels("checking the broker")._value.get() == 1
