"""Prometheus metrics and the health/readiness endpoint of ``ae-worker run``."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

logger = logging.getLogger(__name__)


class Metrics:
    """All metrics of one worker, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.events = Counter("ae_events", "Events scored (dead letters are counted apart)", ["topic"],
                              registry=r)
        self.anomalies = Counter("ae_anomalies", "Anomalies published", ["topic"], registry=r)
        self.alerts = Counter("ae_alerts", "Pages: episodes opened (the first flagged event of a key after a quiet "
                              "period) and runs of flags that came back escalate times bigger inside one",
                              ["topic"], registry=r)
        self.episodes_closed = Counter("ae_episodes_closed", "Episodes closed after their quiet period", ["topic"],
                                       registry=r)
        self.regime_changes = Counter("ae_regime_changes", "Episodes accepted as a new normal after adapt_after "
                                      "events", ["topic"], registry=r)
        self.open_episodes = Gauge("ae_open_episodes", "Episodes open now", ["topic", "partition"], registry=r)
        self.keys = Gauge("ae_keys", "Keys (devices) a partition's detector keeps state for", ["topic", "partition"],
                          registry=r)
        self.keys_evicted = Counter("ae_keys_evicted", "Keys forgotten: not seen for key_ttl events, or the least "
                                    "recently seen beyond max_keys", ["topic"], registry=r)
        self.snapshot_bytes = Gauge("ae_snapshot_bytes", "Size of the last snapshot sent to the changelog",
                                    ["topic", "partition"], registry=r)
        self.snapshots_refused = Counter("ae_snapshots_refused", "Snapshots refused on assignment (the partition "
                                         "was rebuilt without them): reason corrupt, signature, foreign or offset",
                                         ["topic", "reason"], registry=r)
        self.rebuilt_events = Counter("ae_rebuilt_events", "Events re-processed after an assignment to rebuild "
                                      "a detector, without publishing", ["topic"], registry=r)
        self.dead_letters = Counter("ae_dead_letters", "Events sent to the dead-letter topic", ["topic", "kind"],
                                    registry=r)
        self.batch_seconds = Histogram("ae_batch_seconds", "Time to score, publish and commit one mini-batch",
                                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                       registry=r)
        self.stage_seconds = Counter("ae_stage_seconds", "Time spent per stage of the mini-batches: poll (fetching "
                                     "and decoding events), parse, detector, outputs (building and sending the "
                                     "records), publish (waiting for them to be acknowledged), commit (snapshots "
                                     "and the offsets)", ["stage"], registry=r)
        self.lag = Gauge("ae_consumer_lag", "High watermark minus committed position", ["topic", "partition"],
                         registry=r)
        self.threshold = Gauge("ae_threshold", "Current anomaly threshold", ["topic", "partition"], registry=r)
        self.loss = Gauge("ae_training_loss", "Reconstruction loss of the last learning step",
                          ["topic", "partition"], registry=r)
        self.assigned = Gauge("ae_assigned_partitions", "Partitions currently assigned", registry=r)
        self.broker_waits = Counter("ae_broker_waits", "Retries of a broker call that failed with a retriable "
                                    "error (an outage being ridden out)", ["operation"], registry=r)
        self.orphaned_joins = Counter("ae_orphaned_joins", "Group joins the Kafka client completed but never "
                                      "applied, joined again (see kafka_io.rejoin_if_orphaned)", registry=r)
        self.failed_batches = Counter("ae_failed_batches", "Batches aborted (or unsent) and processed again from "
                                      "the last committed state", registry=r)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` (the loop is alive) and ``/readyz`` (partitions assigned)."""

    def __init__(self, metrics: Metrics, host: str, port: int, stale_after: float) -> None:
        self.metrics = metrics
        self.stale_after = stale_after
        self.last_loop = time.monotonic()
        self.ready = False
        handler = self._handler()
        self.server = ThreadingHTTPServer((host, port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="ae-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def beat(self) -> None:
        self.last_loop = time.monotonic()

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("metrics and health on http://%s:%d/metrics", *self.server.server_address[:2])
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._send(200, generate_latest(outer.metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    alive = time.monotonic() - outer.last_loop < outer.stale_after
                    self._send(200 if alive else 503, b"ok\n" if alive else b"stalled\n")
                elif self.path == "/readyz":
                    self._send(200 if outer.ready else 503, b"ready\n" if outer.ready else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return None

        return Handler
