"""The test ground's Prometheus configuration: what it discovers and what it keeps."""

from __future__ import annotations

from pathlib import Path

import yaml
from testground.pki import CertPair
from testground.prometheus import (
    OPERATOR_JOB,
    TRITON_JOB,
    TRITON_POD_LABELS,
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
CLIENT = CertPair(cert=Path("client.crt"), key=Path("client.key"))


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


def test_config_discovers_pods_at_the_api_server_with_the_client_certificate() -> None:
    config = prometheus_config("https://127.0.0.1:6443", Path("ca.crt"), CLIENT, namespaces=["a"])
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    (job,) = config["scrape_configs"]
    assert job["job_name"] == TRITON_JOB
    (discovery,) = job["kubernetes_sd_configs"]
    assert discovery["role"] == "pod"
    assert discovery["api_server"] == "https://127.0.0.1:6443"
    assert discovery["tls_config"] == {
        "ca_file": "ca.crt",
        "cert_file": "client.crt",
        "key_file": "client.key",
    }
    assert discovery["namespaces"] == {"names": ["a"]}


def test_the_operator_is_scraped_only_when_its_address_is_given() -> None:
    config = prometheus_config("https://api", Path("ca"), CLIENT, operator_metrics="127.0.0.1:8081")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[OPERATOR_JOB]["static_configs"] == [{"targets": ["127.0.0.1:8081"]}]
    assert "namespaces" not in jobs[TRITON_JOB]["kubernetes_sd_configs"][0]
