"""The operator's Prometheus metrics: what each method counts, and the endpoint that serves them."""

from __future__ import annotations

import urllib.request

from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families
from tritonresnet.api import status as s
from tritonresnet.controller.metrics import Metrics, serve


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.text().decode())
        for sample in family.samples
    }


def test_build_outcomes_come_from_the_events_that_end_a_build_and_nothing_else() -> None:
    metrics = Metrics()
    for reason in (s.PUBLISHED.name, s.BUILD_FAILED.name, s.BUILD_FAILED.name, s.VERIFIED.name):
        metrics.event(reason)
    got = samples(metrics)
    assert got[("tritonresnet_builds_total", (("outcome", "published"),))] == 1
    assert got[("tritonresnet_builds_total", (("outcome", "build_failed"),))] == 2
    assert ("tritonresnet_builds_total", (("outcome", "publish_failed"),)) not in got


def test_api_errors_by_code_and_only_the_api_servers() -> None:
    metrics = Metrics()
    metrics.api_error(ApiException(status=409))
    metrics.api_error(ApiException(status=409))
    metrics.api_error(ApiException(status=None))  # no answer at all
    metrics.api_error(ValueError("a bug of ours, not the API server's"))
    got = samples(metrics)
    assert got[("tritonresnet_api_errors_total", (("code", "409"),))] == 2
    assert got[("tritonresnet_api_errors_total", (("code", "0"),))] == 1
    assert sum(v for (name, _), v in got.items() if name == "tritonresnet_api_errors_total") == 3


def test_gauges_read_the_runtime_when_scraped_and_registries_are_separate() -> None:
    one, two = Metrics(), Metrics()
    depth = [3]
    one.watch(lambda: depth[0], lambda: 7)
    depth[0] = 5
    assert samples(one)[("tritonresnet_queue_depth", ())] == 5
    assert samples(one)[("tritonresnet_resources", ())] == 7
    one.pass_done("ok", 0.02)
    assert samples(two)[("tritonresnet_queue_depth", ())] == 0
    assert ("tritonresnet_reconcile_duration_seconds_count", (("outcome", "ok"),)) not in samples(two)


def test_the_endpoint_serves_the_exposition_format_on_loopback() -> None:
    metrics = Metrics()
    metrics.pass_done("error", 0.3)
    server, thread = serve(metrics, "127.0.0.1:0")
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            body = answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert 'tritonresnet_reconcile_duration_seconds_bucket{le="0.5",outcome="error"} 1.0' in body
