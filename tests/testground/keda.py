"""KEDA on the test ground: its operator and its external-metrics API server, served through the
apiserver's aggregation layer.

``start_keda(cp, network, workdir)`` applies what KEDA's own release manifests
(``config/`` in its Go module) hold that is not a container: the CRDs
(``config/crd/bases``), the ``keda`` namespace, the ``keda-operator``
ServiceAccount and its RBAC, the ``v1beta1.external.metrics.k8s.io``
APIService and its Service. It leaves out the two Deployments (their processes
run here instead) and the admission webhooks (they only validate ScaledObjects,
which the CRDs' schemas already do; ``binaries.py`` does not build them).

The two processes run as the ``keda-operator`` ServiceAccount (a TokenRequest
token), as in a cluster:

* the operator watches ScaledObjects, makes their HPAs and serves the metric
  values over gRPC on loopback;
* the adapter (``keda-adapter``) listens on the host's end of the pod network's
  link (``HOST_ADDRESS``), the address the apiserver reaches it on: the
  APIService's Service has no selector (no pod backs it) and an EndpointSlice
  naming that address, which the apiserver dials directly
  (``--enable-aggregator-routing``, see controlplane). This is how the
  ``kube-dns`` Service reaches CoreDNS (testground.clusternet).

Certificates: one pair from the test ground's CA, for both servers and as the
client certificate of their mutual TLS (what KEDA's own cert rotation would
write into its ``kedaorg-certs`` Secret, with rotation and patching turned
off), and the APIService's ``caBundle`` is the same CA.

Everything is stopped (processes by PID) and the objects deleted on exit.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testground.binaries import ensure_keda, keda_module_dir
from testground.clusternet import ClusterNetwork, host_endpoint_slice
from testground.controlplane import (
    Component,
    ControlPlane,
    _insecure_context,
    _wait_ready,
    free_port,
    http_get,
    log,
)
from testground.network import HOST_ADDRESS, resolv_conf
from testground.waiting import wait_for

NAMESPACE = "keda"
SERVICE_ACCOUNT = "keda-operator"
METRICS_SERVICE = "keda-metrics-apiserver"
API_SERVICE = "v1beta1.external.metrics.k8s.io"
EXTERNAL_METRICS_PATH = "/apis/external.metrics.k8s.io/v1beta1"
READY_TIMEOUT = 120.0

#: The release manifests applied, relative to the module's ``config/``.
_MANIFESTS = (
    "general/namespace.yaml",
    "service_account/service_account.yaml",
    "rbac/role.yaml",
    "rbac/role_binding.yaml",
    "rbac/aggregate_cluster_roles.yaml",
    "metrics-server/role.yaml",
    "metrics-server/role_binding.yaml",
    "metrics-server/service.yaml",
    "metrics-server/api_service.yaml",
)


@dataclass
class Keda:
    operator: Component
    adapter: Component
    startup_seconds: dict[str, float]


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def crds(module: Path) -> list[dict[str, Any]]:
    """KEDA's CRDs (ScaledObject, ScaledJob, TriggerAuthentication, ...), as its release ships them."""
    return [
        doc
        for path in sorted((module / "config" / "crd" / "bases").glob("*.yaml"))
        for doc in _load_all(path)
    ]


def release_objects(module: Path, ca_pem: bytes, adapter_port: int) -> list[dict[str, Any]]:
    """KEDA's release objects that are no container, the metrics Service pointed at the adapter.

    Pure: the Service loses its selector (no pod backs it) and gains an EndpointSlice
    for ``HOST_ADDRESS:adapter_port``; the APIService gets the CA that signed the
    adapter's certificate (KEDA's cert rotation would patch it in).
    """
    objects = [copy.deepcopy(doc) for name in _MANIFESTS for doc in _load_all(module / "config" / name)]
    for obj in objects:
        if obj["kind"] == "Service" and obj["metadata"]["name"] == METRICS_SERVICE:
            obj["spec"].pop("selector", None)
        if obj["kind"] == "APIService":
            obj["spec"]["caBundle"] = base64.b64encode(ca_pem).decode()
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == METRICS_SERVICE)
    https = next(port for port in service["spec"]["ports"] if port["name"] == "https")
    objects.append(
        host_endpoint_slice(
            NAMESPACE, METRICS_SERVICE, [{"name": https["name"], "protocol": "TCP", "port": adapter_port}]
        )
    )
    return objects


def with_cluster_dns(resolv: Path, *argv: str) -> list[str]:
    """``argv`` run with ``resolv`` as its /etc/resolv.conf (a mount namespace of its own, the
    file bound over), on the host's network: its loopback (the apiserver, its gRPC peer) stays
    as it is, and names go to CoreDNS, which forwards nothing. ``unshare`` and ``sh`` exec, so
    the process keeps the PID it was started with."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--", "sh", "-c", script, str(resolv), *argv]


def _api_service_available(cp: ControlPlane) -> bool:
    answer = cp.kubectl("get", "apiservice", API_SERVICE, "-o", "json", check=False)
    if answer.returncode != 0:
        return False
    conditions = json.loads(answer.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


def _cert_dir(cp: ControlPlane, workdir: Path) -> Path:
    """ca.crt, tls.crt and tls.key: the layout both KEDA processes read (``--cert-dir``)."""
    names = [
        f"{svc}.{NAMESPACE}.svc{suffix}"
        for svc in (SERVICE_ACCOUNT, METRICS_SERVICE)
        for suffix in ("", ".cluster.local")
    ]
    pair = cp.pki.issue_serving("keda", names, ["127.0.0.1", HOST_ADDRESS], client_auth=True)
    folder = workdir / "certs"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cp.ca_file, folder / "ca.crt")
    shutil.copyfile(pair.cert, folder / "tls.crt")
    shutil.copyfile(pair.key, folder / "tls.key")
    (folder / "tls.key").chmod(0o600)
    return folder


@contextlib.contextmanager
def start_keda(cp: ControlPlane, network: ClusterNetwork, workdir: Path) -> Iterator[Keda]:
    """KEDA's operator and metrics API server, with its CRDs and RBAC; all gone on exit.

    ``network`` gives the address the apiserver reaches the adapter on, and the cluster's DNS:
    the operator resolves a trigger's ``serverAddress`` (``<service>.<namespace>.svc``) as a
    pod in ``keda`` would, through a resolv.conf naming kube-dns (``with_cluster_dns``).
    """
    binaries = ensure_keda(log=log)
    module = keda_module_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    startup: dict[str, float] = {}
    adapter_port, grpc_port, probe_port, operator_metrics, adapter_metrics = (free_port() for _ in range(5))
    with contextlib.ExitStack() as stack:
        keda_crds = crds(module)
        stack.enter_context(cp.applied(keda_crds, server_side=True))
        cp.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(f"crd/{c['metadata']['name']}" for c in keda_crds),
        )
        stack.enter_context(cp.applied(release_objects(module, cp.ca_file.read_bytes(), adapter_port)))
        certs = _cert_dir(cp, workdir)
        kubeconfig = cp.service_account_kubeconfig(NAMESPACE, SERVICE_ACCOUNT, workdir / "keda.kubeconfig")
        env = dict(
            os.environ,
            KUBECONFIG=str(kubeconfig),
            POD_NAMESPACE=NAMESPACE,
            KEDA_CLUSTER_OBJECT_NAMESPACE=NAMESPACE,  # else read from a pod's mounted token folder
            WATCH_NAMESPACE="",
        )
        resolv = workdir / "resolv.conf"
        resolv.write_text(resolv_conf(network.net.spec, NAMESPACE))
        operator = Component(
            "keda-operator",
            with_cluster_dns(
                resolv,
                str(binaries / "keda"),
                "--leader-elect=false",
                f"--metrics-bind-address=127.0.0.1:{operator_metrics}",
                f"--health-probe-bind-address=127.0.0.1:{probe_port}",
                f"--metrics-service-bind-address=127.0.0.1:{grpc_port}",
                f"--cert-dir={certs}",
                f"--ca-dir={certs}",
                # The certificates above stand for what its rotation would make; nothing to patch.
                "--enable-cert-rotation=false",
                "--enable-webhook-patching=false",
                "--enable-apiservice-patching=false",
                "--zap-log-level=info",
                "--zap-encoder=console",
            ),
            workdir / "logs" / "keda-operator.log",
            env=env,
        )
        operator.start()
        stack.callback(operator.stop)
        startup["operator"] = _wait_ready(
            operator,
            lambda: (http_get(f"http://127.0.0.1:{probe_port}/readyz") or (0, ""))[0] == 200,
            READY_TIMEOUT,
        )
        adapter = Component(
            "keda-adapter",
            [
                str(binaries / "keda-adapter"),
                f"--bind-address={HOST_ADDRESS}",
                f"--secure-port={adapter_port}",
                f"--tls-cert-file={certs / 'tls.crt'}",
                f"--tls-private-key-file={certs / 'tls.key'}",
                f"--cert-dir={certs}",
                f"--client-ca-file={certs / 'ca.crt'}",
                f"--lister-kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--metrics-service-address=127.0.0.1:{grpc_port}",
                f"--port={adapter_metrics}",
                "--zap-log-level=info",
            ],
            workdir / "logs" / "keda-adapter.log",
            env=env,
        )
        adapter.start()
        stack.callback(adapter.stop)
        context = _insecure_context()  # liveness only; the apiserver checks the certificate below
        startup["adapter"] = _wait_ready(
            adapter,
            lambda: (http_get(f"https://{HOST_ADDRESS}:{adapter_port}/readyz", context) or (0, ""))[0] == 200,
            READY_TIMEOUT,
        )
        began = time.monotonic()
        wait_for(lambda: _api_service_available(cp), f"APIService {API_SERVICE} Available", READY_TIMEOUT)
        startup["apiservice"] = time.monotonic() - began
        startup["total"] = time.monotonic() - started
        log("KEDA ready (" + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()) + ")")
        yield Keda(operator=operator, adapter=adapter, startup_seconds=startup)
