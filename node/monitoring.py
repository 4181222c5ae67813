"""Prometheus metrics and the health endpoint (HTTP, localhost by default)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LOGGER = logging.getLogger(__name__)


class Metrics:
    """The node's metrics, in a registry of its own (tests create several nodes)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances = Counter("medversa_instances_received", "Instances received and spooled", registry=r)
        self.bytes = Counter("medversa_bytes_received", "Bytes received and spooled", registry=r)
        self.associations = Counter("medversa_associations", "Associations by outcome", ["outcome"], registry=r)
        self.jobs = Gauge("medversa_jobs", "Jobs by state", ["state"], registry=r)
        self.job_failures = Counter("medversa_job_failures", "Jobs that failed", registry=r)
        self.processing = Histogram("medversa_processing_seconds", "Job processing time",
                                    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800), registry=r)
        self.export_latency = Histogram("medversa_export_seconds", "From job end to delivery",
                                        buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600), registry=r)
        self.export_failures = Counter("medversa_export_failures", "Failed export attempts", registry=r)
        self.dead_letters = Counter("medversa_exports_dead", "Exports moved to dead-letter", registry=r)


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    health: Callable[[], dict]

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.startswith("/metrics"):
            body = generate_latest(self.metrics.registry)
            self._send(200, CONTENT_TYPE_LATEST, body)
        elif self.path.startswith("/healthz"):
            report = self.health()
            self._send(200 if report.get("ok") else 503, "application/json", json.dumps(report).encode())
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args) -> None:  # quiet: no access log per scrape
        LOGGER.debug("http: " + fmt, *args)


def start_http(bind: str, port: int, metrics: Metrics, health: Callable[[], dict]) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": staticmethod(health)})
    server = ThreadingHTTPServer((bind, port), handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    LOGGER.info("metrics and health on http://%s:%d/metrics, /healthz", bind, server.server_address[1])
    return server
