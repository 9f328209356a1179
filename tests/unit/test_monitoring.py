"""The chart's opt-in monitoring: Service and ServiceMonitor for the operator, PodMonitor for
Triton, the Grafana dashboard's ConfigMap, and the dashboard's queries naming real metrics.

No cluster: the chart is rendered with ``helm template``. The API server validates the
rendered monitors against prometheus-operator's CRDs in tests/integration/test_helm.py;
the dashboard's queries run against a real Prometheus in tests/e2e/test_dashboard.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from testground.chart import CHART_DIR, of_kind, render_chart
from testground.prometheus import TRITON_POD_LABELS
from tritonresnet.api import names
from tritonresnet.controller.metrics import Metrics

DASHBOARD = CHART_DIR / "dashboards" / "tritonresnet.json"
MONITORING = {
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}, "interval": "30s"}},
    "triton": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}}},
    "grafana": {"dashboard": {"enabled": True}},
}


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query in the dashboard."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


def test_monitoring_is_off_by_default() -> None:
    objects = render_chart({}, include_crds=False)
    assert not of_kind(objects, "ServiceMonitor") and not of_kind(objects, "PodMonitor")
    assert not of_kind(objects, "Service")
    assert not [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]


def test_service_monitor_scrapes_the_operators_metrics_port_through_a_service() -> None:
    objects = render_chart(MONITORING, include_crds=False)
    (deployment,) = of_kind(objects, "Deployment")
    (service,) = of_kind(objects, "Service")
    (monitor,) = of_kind(objects, "ServiceMonitor")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


def test_service_monitor_needs_the_metrics_port() -> None:
    with pytest.raises(RuntimeError, match="metricsPort"):
        render_chart({**MONITORING, "metricsPort": 0}, include_crds=False)


def test_pod_monitor_selects_every_triton_pod_as_the_operator_labels_them() -> None:
    (monitor,) = of_kind(render_chart(MONITORING, include_crds=False), "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector == TRITON_POD_LABELS
    assert selector.items() <= names.labels("any", "triton").items()
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and "interval" not in endpoint
    # The label the dashboard filters by, named as the test ground's Prometheus names it.
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "tritonresnet",
        }
    ]


def test_pod_monitor_of_a_namespaced_operator_looks_in_its_namespaces_only() -> None:
    values = {**MONITORING, "watchNamespaces": ["a", "b"]}
    (monitor,) = of_kind(render_chart(values, include_crds=False), "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_dashboard_config_map_holds_the_dashboard_file_for_grafanas_sidecar() -> None:
    values = {**MONITORING, "grafana": {"dashboard": {"enabled": True, "namespace": "grafana"}}}
    objects = render_chart(values, include_crds=False)
    (config_map,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["tritonresnet.json"]) == json.loads(DASHBOARD.read_text())


def _operator_series() -> set[str]:
    """Every series name the operator's registry exposes (counters' _total, histograms' _bucket...)."""
    metrics = Metrics()
    metrics.pass_done("ok", 0.1)
    metrics.builds.labels("published").inc()
    metrics.verifications.labels("ok").inc()
    metrics.api_errors.labels("409").inc()
    text = metrics.text().decode()
    return {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")
    }


def test_dashboard_queries_name_only_metrics_the_operator_serves() -> None:
    served = _operator_series()
    used = {name for _, expr in dashboard_targets() for name in re.findall(r"\btritonresnet_[a-z_]+", expr)}
    assert used and used <= served, used - served


def test_every_dashboard_panel_queries_through_the_data_source_variable() -> None:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = [p for p in document["panels"] if p["type"] != "row"]
    assert {p["datasource"]["uid"] for p in panels} == {"${datasource}"}
    assert len({p["id"] for p in document["panels"]}) == len(document["panels"])
    variables = {v["name"] for v in document["templating"]["list"]}
    used = {
        v for _, expr in dashboard_targets() for v in re.findall(r"\$(\w+)", expr) if not v.startswith("__")
    }
    assert used <= variables
