"""The operator's own Prometheus metrics, and the HTTP endpoint that serves them.

What a platform team watches an operator by: how long a reconcile pass takes and how
often it fails, how many resources wait for a worker, what came of builds and endpoint
checks, and which errors the API server answers. One registry per runtime (not the
library's global one), so a test or a second runtime in one process counts its own.

The runtime calls the ``Metrics`` methods from the event loop and its worker threads;
prometheus_client's metrics are thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import Thread
from wsgiref.simple_server import WSGIServer

from kubernetes.client.rest import ApiException
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

from tritonresnet.api import status as s

#: A pass is mostly API round trips: milliseconds when nothing changes, seconds under load.
PASS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Event reasons that end a build, and the outcome each counts as.
BUILD_OUTCOMES = {
    s.PUBLISHED.name: "published",
    s.BUILD_FAILED.name: "build_failed",
    s.PUBLISH_FAILED.name: "publish_failed",
}


class Metrics:
    """The operator's metrics in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pass_seconds = Histogram(
            "tritonresnet_reconcile_duration_seconds",
            "Wall time of one reconcile pass of one TritonResNet, by outcome "
            "(ok; refused: the API server refused a child; error: the pass raised).",
            ["outcome"],
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "tritonresnet_queue_depth",
            "TritonResNets waiting for a reconcile worker (not counting those in a pass).",
            registry=self.registry,
        )
        self.resources = Gauge(
            "tritonresnet_resources", "TritonResNets in the operator's cache.", registry=self.registry
        )
        self.builds = Counter(
            "tritonresnet_builds",
            "Builds that ended, by outcome (published, build_failed, publish_failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.verifications = Counter(
            "tritonresnet_verifications",
            "Endpoint checks that ended, by outcome (ok, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "tritonresnet_api_errors",
            "Errors the Kubernetes API server answered the operator, by HTTP status code "
            "(0: no answer at all).",
            ["code"],
            registry=self.registry,
        )

    def watch(self, queue_depth: Callable[[], float], resources: Callable[[], float]) -> None:
        """Gauges read when scraped, from the runtime's own counts."""
        self.queue_depth.set_function(queue_depth)
        self.resources.set_function(resources)

    def pass_done(self, outcome: str, seconds: float) -> None:
        self.pass_seconds.labels(outcome).observe(seconds)

    def event(self, reason: str) -> None:
        outcome = BUILD_OUTCOMES.get(reason)
        if outcome is not None:
            self.builds.labels(outcome).inc()

    def verified(self, ok: bool) -> None:
        self.verifications.labels("ok" if ok else "failed").inc()

    def api_error(self, error: BaseException) -> None:
        """Count ``error`` if it is the API server's answer (or its absence)."""
        if isinstance(error, ApiException):
            self.api_errors.labels(str(error.status or 0)).inc()

    def text(self) -> bytes:
        """The exposition format, as a scrape gets it."""
        return generate_latest(self.registry)


def serve(metrics: Metrics, address: str) -> tuple[WSGIServer, Thread]:
    """Serve ``metrics`` at ``http://<address>/metrics`` (``host:port``) on a thread of its own."""
    host, _, port = address.rpartition(":")
    server, thread = start_http_server(int(port), addr=host or "0.0.0.0", registry=metrics.registry)
    return server, thread


__all__ = ["BUILD_OUTCOMES", "Metrics", "serve"]
