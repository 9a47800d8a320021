"""Prometheus metrics (fraudpipe_*) and /healthz, served on one port per worker.

Counters are per process; Prometheus sums them across pods. Nothing here is shared through the
volume, so nothing is lost or double counted when pods come and go.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, Protocol

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from fraudpipe.headers import NOTHING_POLICY, security_headers

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class BulkHistogram(Collector):
    """A histogram fed a whole batch at once (numpy), not one Python call per row."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # last: +Inf
        self.total = 0.0
        self._lock = threading.Lock()

    def observe_many(self, values: np.ndarray) -> None:
        idx = np.searchsorted(self.bounds, values, side="left")
        add = np.bincount(idx, minlength=len(self.counts))
        with self._lock:
            self.counts += add
            self.total += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self.counts)
            total = self.total
        buckets = [(repr(float(b)), int(c)) for b, c in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", int(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=total)


class Metrics:
    """The metric families every worker exports; labels say which stage and topic."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rows = Counter("fraudpipe_rows", "Rows processed.", ["stage"], registry=r)
        self.batches = Counter(
            "fraudpipe_batches", "Batches handled, by outcome.", ["stage", "outcome"], registry=r
        )
        self.errors = Counter("fraudpipe_errors", "Failed batch attempts.", ["stage"], registry=r)
        self.batch_seconds = Histogram(
            "fraudpipe_batch_seconds",
            "Time to process one batch.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "fraudpipe_queue_depth",
            "Messages per topic and state, as seen by this worker.",
            ["topic", "state"],
            registry=r,
        )
        self.lease_lost = Counter(
            "fraudpipe_lease_lost", "Claims lost to the reaper before ack.", ["stage"], registry=r
        )
        self.reaped = Counter(
            "fraudpipe_reaped",
            "Expired claims returned by this worker's reaper.",
            ["topic"],
            registry=r,
        )
        self.model_info = Gauge(
            "fraudpipe_model_info",
            "1 for the model version this worker uses.",
            ["version"],
            registry=r,
        )
        self.alerts = Counter("fraudpipe_alerts", "Transactions flagged as fraud.", registry=r)
        self.e2e_latency = BulkHistogram(
            "fraudpipe_e2e_latency_seconds",
            "Stream entry to score, per transaction.",
            LATENCY_BUCKETS,
        )
        r.register(self.e2e_latency)
        self.trainings = Counter(
            "fraudpipe_trainings", "Training runs, by outcome.", ["outcome"], registry=r
        )
        self.labels = Counter(
            "fraudpipe_labels",
            "Fraud labels arrived (logged by gather), by value.",
            ["is_fraud"],
            registry=r,
        )
        self.backpressure_seconds = Counter(
            "fraudpipe_backpressure_seconds",
            "Time spent waiting on a full output topic.",
            ["stage"],
            registry=r,
        )
        self.drift_psi = Gauge(
            "fraudpipe_drift_psi",
            "Population stability index of recent traffic vs the champion's training window: "
            'kind="score" (the model score, feature="") or kind="feature" (one per feature).',
            ["kind", "feature"],
            registry=r,
        )


class Exposed(Protocol):
    """Anything with a registry to expose: a worker's Metrics, the dashboard's own."""

    registry: CollectorRegistry


class _Handler(BaseHTTPRequestHandler):
    metrics: ClassVar[Exposed]
    health: ClassVar[Health]
    _headers: ClassVar[dict[str, str]] = {
        **security_headers(NOTHING_POLICY),
        "Cache-Control": "no-store",
    }

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body, ctype, code = generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST, 200
        elif self.path.startswith("/healthz"):
            ok, why = self.health.check()
            body, ctype, code = why.encode() + b"\n", "text/plain", 200 if ok else 503
        else:
            body, ctype, code = b"see /metrics and /healthz\n", "text/plain", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        # Here, not in do_GET: the server's own error answers (400, 501) carry them too.
        for name, value in self._headers.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


class Health:
    """Healthy while the worker loop has ticked recently."""

    def __init__(self, stale_after_s: float) -> None:
        self.stale_after_s = stale_after_s
        self.last_tick = time.monotonic()

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def check(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_tick
        if age > self.stale_after_s:
            return False, f"worker loop stalled for {age:.1f}s"
        return True, "ok"


def serve(metrics: Exposed, health: Health, host: str, port: int) -> int:
    """Serve /metrics and /healthz in a daemon thread; return the bound port."""
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_address[1])
