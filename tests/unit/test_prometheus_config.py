"""The test ground's Prometheus configuration: what it discovers and what it keeps."""

from __future__ import annotations

import re
from typing import Any

import yaml
from testground.prometheus import (
    OPERATOR_JOB,
    TRITON_JOB,
    TRITON_POD_LABELS,
    pod_target_groups,
    prometheus_config,
    triton_relabelling,
)
from tritonresnet.api import names
from tritonresnet.api.spec import parse_spec
from tritonresnet.controller import render
from tritonresnet.controller.children import Served
from tritonresnet.controller.render import METRICS_PORT
from tritonresnet.controller.settings import Settings

SPEC = {"source": {"uri": "s3://models/r50/model.onnx"}, "repository": {"claimName": "models"}}


def test_triton_pods_are_kept_by_the_operators_labels_and_the_metrics_port() -> None:
    rules = triton_relabelling()
    keeps = {tuple(rule["source_labels"]): rule["regex"] for rule in rules if rule.get("action") == "keep"}
    assert keeps == {
        ("__meta_kubernetes_pod_label_app_kubernetes_io_name",): names.APP_NAME,
        ("__meta_kubernetes_pod_label_app_kubernetes_io_component",): "triton",
        ("__meta_kubernetes_pod_container_port_name",): "metrics",
        ("__meta_kubernetes_pod_phase",): "Running",
    }
    assert set(TRITON_POD_LABELS) <= set(names.labels("x", "triton"))
    targets = {rule["target_label"] for rule in rules if "target_label" in rule}
    assert targets == {"namespace", "pod", "tritonresnet"}


def test_the_kept_labels_and_port_are_on_the_pods_the_operator_renders() -> None:
    spec = parse_spec({"metadata": {"name": "r50", "namespace": "v"}, "spec": SPEC})
    deployment = render.triton_deployment(
        {"name": "r50", "namespace": "v", "uid": "u"}, spec, Served(1, "k", (), (), "25.01"), Settings()
    )
    template = deployment["spec"]["template"]
    assert TRITON_POD_LABELS.items() <= template["metadata"]["labels"].items()
    (triton,) = template["spec"]["containers"]
    assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in triton["ports"]


def test_config_discovers_pods_over_http_and_scrapes_the_operator_only_when_given() -> None:
    config = prometheus_config("http://127.0.0.1:9/pods")
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    (job,) = config["scrape_configs"]
    assert job["job_name"] == TRITON_JOB
    assert job["http_sd_configs"] == [{"url": "http://127.0.0.1:9/pods", "refresh_interval": "2s"}]
    with_operator = prometheus_config("http://127.0.0.1:9/pods", operator_metrics="127.0.0.1:8081")
    jobs = {job["job_name"]: job for job in with_operator["scrape_configs"]}
    assert jobs[OPERATOR_JOB]["static_configs"] == [{"targets": ["127.0.0.1:8081"]}]


def pod(ip: str | None, phase: str = "Running") -> dict[str, Any]:
    ports = [
        {"name": "http", "containerPort": 8000},
        {"name": "metrics", "containerPort": 8002, "protocol": "TCP"},
    ]
    return {
        "metadata": {"name": "p", "namespace": "v", "uid": "u", "labels": names.labels("r50", "triton")},
        "spec": {"nodeName": "n", "containers": [{"name": "triton", "ports": ports}, {"name": "side"}]},
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True"}],
            **({"podIP": ip} if ip else {}),
        },
    }


def test_pod_targets_are_one_per_container_port_with_kubernetes_discoverys_labels() -> None:
    groups = pod_target_groups([pod("10.244.0.5"), pod(None, "Pending")])
    assert [g["targets"] for g in groups] == [["10.244.0.5:8000"], ["10.244.0.5:8002"]]
    labels = groups[1]["labels"]
    assert labels["__meta_kubernetes_pod_container_port_name"] == "metrics"
    assert labels["__meta_kubernetes_pod_container_port_number"] == "8002"
    assert labels["__meta_kubernetes_pod_label_app_kubernetes_io_instance"] == "r50"
    assert (labels["__meta_kubernetes_namespace"], labels["__meta_kubernetes_pod_name"]) == ("v", "p")
    assert (labels["__meta_kubernetes_pod_phase"], labels["__meta_kubernetes_pod_ready"]) == (
        "Running",
        "true",
    )


def _relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' keep and replace (the defaults: separator ``;``, regex anchored, ``$1``)."""
    out = dict(labels)
    for rule in rules:
        value = ";".join(out.get(name, "") for name in rule["source_labels"])
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if rule.get("action") == "keep":
            if not match:
                return None
        elif match:
            out[rule["target_label"]] = match.expand(rule.get("replacement", r"\1"))
    return {k: v for k, v in out.items() if not k.startswith("__")}


def test_relabelling_keeps_only_the_triton_metrics_port_and_names_the_resource() -> None:
    kept = [_relabel(triton_relabelling(), g["labels"]) for g in pod_target_groups([pod("10.244.0.5")])]
    assert kept == [None, {"namespace": "v", "pod": "p", "tritonresnet": "r50"}]
    other = pod("10.244.0.6")
    other["metadata"]["labels"] = {"app": "triton"}
    assert [_relabel(triton_relabelling(), g["labels"]) for g in pod_target_groups([other])] == [None, None]
