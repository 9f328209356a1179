"""A real Prometheus on the test ground, scraping Triton pods the API server lists.

``start_prometheus(cp)`` runs Debian's ``prometheus`` (``binaries.ensure_prometheus``)
on the host, listening on a free loopback port, with its TSDB and log in a temporary
folder of its own. Its configuration (``prometheus_config``, written through yaml)
keeps, by relabelling, the containers' ports named ``metrics`` of the operator's Triton
pods (the same pods, port and ``tritonresnet`` label the chart's PodMonitor gives) and
optionally scrapes the operator's own metrics endpoint (``--metrics-address``), which
runs on the host here rather than in a pod.

Debian builds Prometheus without its Kubernetes service discovery (no client-go in the
binary: ``kubernetes_sd_configs`` is refused as an unknown field), so pod discovery is a
**stand-in**: ``PodDiscovery`` answers Prometheus' HTTP service discovery
(``http_sd_configs``) with the API server's pod list, read as a client-certificate user
with a read-only ClusterRole (what Prometheus' ServiceAccount gets in a cluster), one
target per container port, labelled with the ``__meta_kubernetes_pod_*`` names
Kubernetes discovery gives (``pod_target_groups``). Relabelling, scraping, storage and
queries are Prometheus' own.

Triton pods only have addresses on the pod network (``testground.clusternet``), whose
blackhole routes keep every packet to the pod range on this machine: start Prometheus
once that network is up, never before, so no scrape can leave the machine.

On exit the processes and the discovery server are stopped and the folder removed.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import yaml
from tritonresnet.api import names

from testground.binaries import ensure_prometheus, prometheus_operator_module_dir
from testground.clusternet import host_endpoint_slice
from testground.controlplane import (
    PORT_ATTEMPTS,
    Component,
    ControlPlane,
    PortTaken,
    _wait_ready,
    free_port,
    http_get,
)
from testground.network import HOST_ADDRESS
from testground.nodeagent_kube import Kube
from testground.waiting import wait_for

SCRAPE_INTERVAL = "2s"  #: short, so a test sees a rate after a few seconds
SCRAPE_TIMEOUT = "1s"
TRITON_JOB = "triton"
OPERATOR_JOB = "tritonresnet-operator"
METRICS_PORT_NAME = "metrics"  #: the Triton container's port the operator renders
USER = "testground:prometheus"
QUERY_TIMEOUT = 10.0  # seconds, each HTTP call to Prometheus

#: What Prometheus needs of the API server for pod discovery, nothing more.
READER_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "testground-prometheus"},
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
}
READER_BINDING = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "testground-prometheus"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "testground-prometheus",
    },
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
}


#: prometheus-operator's CRDs the chart's monitors need, in its module.
MONITOR_CRD_FILES = (
    "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
    "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
)


def install_monitor_crds(cp: ControlPlane) -> list[str]:
    """ServiceMonitor and PodMonitor as prometheus-operator defines them (its own CRD files, real
    schemas), so the API server validates monitors; no prometheus-operator controller runs."""
    root = prometheus_operator_module_dir()
    return cp.install_crds([root / name for name in MONITOR_CRD_FILES])


def _meta_label(key: str) -> str:
    """The discovery label Prometheus gives a pod label (anything but ``[a-zA-Z0-9_]`` becomes ``_``)."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


#: The operator's Triton pods, by the labels every one of them carries.
TRITON_POD_LABELS = {names.LABEL_NAME: names.APP_NAME, names.LABEL_COMPONENT: "triton"}


def triton_relabelling(pod_labels: Mapping[str, str] = TRITON_POD_LABELS) -> list[dict[str, Any]]:
    """Keep the ``metrics`` port of running pods carrying ``pod_labels``; name them as kube-prometheus
    does (``namespace``, ``pod``) plus the TritonResNet they serve (``tritonresnet``)."""
    keep = [
        {"source_labels": [_meta_label(key)], "regex": value, "action": "keep"}
        for key, value in sorted(pod_labels.items())
    ]
    return [
        *keep,
        {
            "source_labels": ["__meta_kubernetes_pod_container_port_name"],
            "regex": METRICS_PORT_NAME,
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": [_meta_label(names.LABEL_INSTANCE)], "target_label": "tritonresnet"},
    ]


def pod_target_groups(pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """HTTP discovery's target groups for ``pods``: one per declared container port of a pod
    with an address, labelled as Prometheus' Kubernetes discovery (role pod) labels it."""
    groups = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if not status.get("podIP"):
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
        pod_labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_uid": meta.get("uid", ""),
            "__meta_kubernetes_pod_ip": status["podIP"],
            "__meta_kubernetes_pod_node_name": pod["spec"].get("nodeName", ""),
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_ready": str(ready).lower(),
            **{_meta_label(key): value for key, value in (meta.get("labels") or {}).items()},
        }
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                labels = pod_labels | {
                    "__meta_kubernetes_pod_container_name": container["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                }
                groups.append({"targets": [f"{status['podIP']}:{port['containerPort']}"], "labels": labels})
    return groups


class PodDiscovery:
    """Serves ``pod_target_groups`` of the pods the API server lists (in ``namespaces``, or all)
    on a loopback port, for Prometheus' ``http_sd_configs``; each request lists them anew."""

    def __init__(self, kubeconfig: Path, namespaces: Sequence[str] = ()) -> None:
        self.kube = Kube(str(kubeconfig))
        self.namespaces = list(namespaces)
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps(pod_target_groups(discovery.pods())).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per refresh would drown the test's output

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/pods"
        self.thread = threading.Thread(target=self.server.serve_forever, name="pod-discovery", daemon=True)
        self.thread.start()

    def pods(self) -> list[dict[str, Any]]:
        paths = [f"/api/v1/namespaces/{ns}/pods" for ns in self.namespaces] or ["/api/v1/pods"]
        return [pod for path in paths for pod in self.kube.get(path)["items"]]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
        self.kube.api.close()


def prometheus_config(
    discovery_url: str, operator_metrics: str | None = None, interval: str = SCRAPE_INTERVAL
) -> dict[str, Any]:
    """Prometheus' configuration: Triton pods from the HTTP discovery at ``discovery_url``, and
    the operator at ``operator_metrics`` (``host:port``) when given."""
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": TRITON_JOB,
            "http_sd_configs": [{"url": discovery_url, "refresh_interval": interval}],
            "relabel_configs": triton_relabelling(),
        }
    ]
    if operator_metrics:
        scrape_configs.append({"job_name": OPERATOR_JOB, "static_configs": [{"targets": [operator_metrics]}]})
    return {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": SCRAPE_TIMEOUT,
            "evaluation_interval": interval,
        },
        "scrape_configs": scrape_configs,
    }


@dataclass
class Prometheus:
    """A running Prometheus: its URL and its HTTP API."""

    url: str
    component: Component
    workdir: Path
    startup_seconds: float
    config: dict[str, Any] = field(repr=False)

    def _api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        answer = http_get(f"{self.url}{path}{query}", timeout=QUERY_TIMEOUT)
        if answer is None:
            raise RuntimeError(f"Prometheus at {self.url} does not answer; log:\n{self.component.log_tail()}")
        status, body = answer
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} answered {status}: {document.get('error', body)}")
        return document["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result: its series, each ``{"metric": {...}, "value": [time, "text"]}``
        (a scalar answer comes as one such entry without labels)."""
        data = self._api("/api/v1/query", {"query": promql})
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def targets(self) -> list[dict[str, Any]]:
        """The active targets, as ``/api/v1/targets`` lists them."""
        return list(self._api("/api/v1/targets", {"state": "active"})["activeTargets"])

    def wait_for_targets(
        self, job: str = TRITON_JOB, count: int = 1, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """At least ``count`` targets of ``job`` scraped successfully (health ``up``); returns them."""

        def up() -> list[dict[str, Any]] | None:
            found = [t for t in self.targets() if t["labels"].get("job") == job and t["health"] == "up"]
            return found if len(found) >= count else None

        return wait_for(up, f"{count} healthy target(s) of job {job} in Prometheus", timeout, every=0.5)


#: Where prometheus-operator's Service for a Prometheus in ``monitoring`` puts it, the address
#: the README's KEDA recipe names (``http://prometheus-operated.monitoring.svc:9090``).
IN_CLUSTER_NAMESPACE = "monitoring"
IN_CLUSTER_SERVICE = "prometheus-operated"
IN_CLUSTER_PORT = 9090


def in_cluster_service(prometheus: Prometheus) -> list[dict[str, Any]]:
    """The ``prometheus-operated`` Service in ``monitoring`` (and its namespace), reaching this
    Prometheus where it listens on the pod network's host address, as kube-dns reaches CoreDNS:
    no selector, an EndpointSlice at ``HOST_ADDRESS``."""
    listening = urllib.parse.urlsplit(prometheus.url)
    assert listening.hostname == HOST_ADDRESS, (
        f"Prometheus listens on {listening.hostname}, not {HOST_ADDRESS}"
    )
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": IN_CLUSTER_NAMESPACE}}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": IN_CLUSTER_SERVICE, "namespace": IN_CLUSTER_NAMESPACE},
        "spec": {
            "ports": [
                {"name": "web", "protocol": "TCP", "port": IN_CLUSTER_PORT, "targetPort": listening.port}
            ]
        },
    }
    web = [{"name": "web", "protocol": "TCP", "port": listening.port}]
    return [namespace, service, host_endpoint_slice(IN_CLUSTER_NAMESPACE, IN_CLUSTER_SERVICE, web)]


def _grant_discovery(cp: ControlPlane) -> None:
    objects = {"apiVersion": "v1", "kind": "List", "items": [READER_ROLE, READER_BINDING]}
    cp.kubectl("apply", "-f", "-", input=json.dumps(objects))


def _start_on_a_free_port(binary: Path, config: Path, workdir: Path, host: str) -> tuple[Component, str]:
    """Prometheus running and ready; another port when one picked is taken before it binds."""
    for attempt in range(PORT_ATTEMPTS):
        address = f"{host}:{free_port()}"
        component = Component(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=info",
            ],
            workdir / "prometheus.log",
        )
        component.start()
        ready = f"http://{address}/-/ready"
        try:
            _wait_ready(component, lambda: (http_get(ready) or (0, ""))[0] == 200)  # noqa: B023 (called here)
        except BaseException as error:
            component.stop()
            if isinstance(error, PortTaken) and attempt < PORT_ATTEMPTS - 1:
                continue
            raise
        return component, f"http://{address}"
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.contextmanager
def start_prometheus(
    cp: ControlPlane,
    parent: Path | None = None,
    operator_metrics: str | None = None,
    namespaces: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> Iterator[Prometheus]:
    """Prometheus scraping the Triton pods of ``cp`` (and the operator at ``operator_metrics``),
    listening on ``host`` (a pod network's ``HOST_ADDRESS``, for ``in_cluster_service``); its
    folder is made under ``parent`` (default: the system's temporary folder)."""
    binary = ensure_prometheus()
    _grant_discovery(cp)
    workdir = Path(tempfile.mkdtemp(prefix="testground-prometheus-", dir=parent))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        kubeconfig = cp.client_kubeconfig(USER, path=workdir / "discovery.kubeconfig")
        discovery = PodDiscovery(kubeconfig, namespaces)
        stack.callback(discovery.stop)
        config = prometheus_config(discovery.url, operator_metrics)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        started = time.monotonic()
        component, url = _start_on_a_free_port(binary, config_path, workdir, host)
        stack.callback(component.stop)
        startup = time.monotonic() - started
        yield Prometheus(url, component, workdir, startup, config)


__all__ = [
    "OPERATOR_JOB",
    "TRITON_JOB",
    "TRITON_POD_LABELS",
    "PodDiscovery",
    "Prometheus",
    "install_monitor_crds",
    "pod_target_groups",
    "prometheus_config",
    "start_prometheus",
    "triton_relabelling",
]
