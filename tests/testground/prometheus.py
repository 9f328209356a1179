"""A real Prometheus on the test ground, scraping Triton pods the API server lists.

``start_prometheus(cp)`` runs Debian's ``prometheus`` (``binaries.ensure_prometheus``)
on the host, listening on a free loopback port, with its TSDB and log in a temporary
folder of its own. Its configuration (``prometheus_config``, written through yaml)
discovers pods with ``kubernetes_sd_configs`` from the test ground's kube-apiserver,
as a user with a client certificate and a read-only ClusterRole (what Prometheus'
ServiceAccount gets in a cluster), and keeps, by relabelling, the containers' ports
named ``metrics`` of the operator's Triton pods: the same pods and port the chart's
PodMonitor selects. Optionally it also scrapes the operator's own metrics endpoint
(``--metrics-address``), which runs on the host here rather than in a pod.

Triton pods only have addresses on the pod network (``testground.clusternet``), whose
blackhole routes keep every packet to the pod range on this machine: start Prometheus
once that network is up, never before, so no scrape can leave the machine.

On exit the process is stopped by its PID and the folder removed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tritonresnet.api import names

from testground.binaries import ensure_prometheus
from testground.controlplane import (
    PORT_ATTEMPTS,
    Component,
    ControlPlane,
    PortTaken,
    _wait_ready,
    free_port,
    http_get,
)
from testground.pki import CertPair
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


def _meta_label(key: str) -> str:
    """The discovery label Prometheus gives a pod label (non-alphanumerics become ``_``)."""
    return "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in key)


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


def prometheus_config(
    api_server: str,
    ca_file: Path,
    client: CertPair,
    operator_metrics: str | None = None,
    namespaces: Sequence[str] = (),
    interval: str = SCRAPE_INTERVAL,
) -> dict[str, Any]:
    """Prometheus' configuration: Triton pods discovered at ``api_server`` (in ``namespaces``, or
    all), and the operator at ``operator_metrics`` (``host:port``) when given."""
    discovery: dict[str, Any] = {
        "role": "pod",
        "api_server": api_server,
        "tls_config": {"ca_file": str(ca_file), "cert_file": str(client.cert), "key_file": str(client.key)},
    }
    if namespaces:
        discovery["namespaces"] = {"names": list(namespaces)}
    scrape_configs: list[dict[str, Any]] = [
        {
            "job_name": TRITON_JOB,
            "kubernetes_sd_configs": [discovery],
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


def _grant_discovery(cp: ControlPlane) -> None:
    objects = {"apiVersion": "v1", "kind": "List", "items": [READER_ROLE, READER_BINDING]}
    cp.kubectl("apply", "-f", "-", input=json.dumps(objects))


def _start_on_a_free_port(binary: Path, config: Path, workdir: Path) -> tuple[Component, str]:
    """Prometheus running and ready; another port when one picked is taken before it binds."""
    for attempt in range(PORT_ATTEMPTS):
        address = f"127.0.0.1:{free_port()}"
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
) -> Iterator[Prometheus]:
    """Prometheus scraping the Triton pods of ``cp`` (and the operator at ``operator_metrics``);
    its folder is made under ``parent`` (default: the system's temporary folder)."""
    binary = ensure_prometheus()
    _grant_discovery(cp)
    client = cp.pki.issue_client("prometheus", USER)
    workdir = Path(tempfile.mkdtemp(prefix="testground-prometheus-", dir=parent))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        config = prometheus_config(cp.server, cp.ca_file, client, operator_metrics, namespaces)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        started = time.monotonic()
        component, url = _start_on_a_free_port(binary, config_path, workdir)
        stack.callback(component.stop)
        startup = time.monotonic() - started
        yield Prometheus(url, component, workdir, startup, config)


__all__ = [
    "OPERATOR_JOB",
    "TRITON_JOB",
    "TRITON_POD_LABELS",
    "Prometheus",
    "prometheus_config",
    "start_prometheus",
    "triton_relabelling",
]
