"""Run the real operator against the test ground: install the CRD, start and kill the process.

Used by the end-to-end tests and the local demo. The operator runs as its
own process (``python -m tritonresnet operator``), exactly as in its
container, so a test can SIGKILL it and start it again.

The e2e tests run it as its own ServiceAccount (:func:`install_operator_identity`)
with exactly the RBAC the Helm chart installs by default, so a permission the
chart lacks fails a test with ``Forbidden``, and the apiserver's audit log
(``testground.audit``) records every request it makes.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tritonresnet.api.names as names
import yaml

from testground import audit
from testground.chart import render_chart, to_yaml
from testground.clusternet import ClusterNetwork, ready_endpoints
from testground.controlplane import ControlPlane, free_port, rss_of
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import GPU_TOLERATION, HOSTNAME_LABEL, POD_NETWORK_TOLERATION
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "tritonresnet.io_tritonresnets.yaml"


def install_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "crd/tritonresnets.tritonresnet.io", "--timeout=60s")
    # kubectl's discovery cache needs a moment to learn the new kind.
    wait_for(
        lambda: cp.kubectl("get", "trn", "-A", check=False).returncode == 0,
        "kubectl to know the TritonResNet kind",
        30,
        every=0.2,
    )
    # The apiserver publishes a new CRD's OpenAPI schema, which kubectl explain reads, a
    # little after discovery lists the kind ("couldn't find resource" until then).
    wait_for(
        lambda: cp.kubectl("explain", "tritonresnet.spec", check=False).returncode == 0,
        "the TritonResNet schema in the apiserver's OpenAPI",
        60,
        every=0.5,
    )


#: What of the chart makes the operator's identity: its account and what binds rights to it.
IDENTITY_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def operator_identity_objects() -> list[dict[str, Any]]:
    """The chart's default (cluster-wide) ServiceAccount, roles and bindings, named for the
    test ground's operator identity (``testground.audit.OPERATOR_USER``).

    Only names change (``fullnameOverride``); the rules are the chart's own.
    """
    objects = render_chart(
        {"fullnameOverride": audit.OPERATOR_ACCOUNT},
        namespace=audit.OPERATOR_NAMESPACE,
        release=audit.OPERATOR_RELEASE,
        include_crds=False,
    )
    chosen = [obj for obj in objects if obj["kind"] in IDENTITY_KINDS]
    accounts = [obj["metadata"]["name"] for obj in chosen if obj["kind"] == "ServiceAccount"]
    # The audit policy was written before the apiserver started, for this name.
    assert accounts == [audit.OPERATOR_ACCOUNT], accounts
    return chosen


def install_operator_identity(cp: ControlPlane, path: Path | None = None) -> Path:
    """Install the operator's ServiceAccount with the chart's RBAC (as admin); returns a
    kubeconfig that acts as that account (a TokenRequest token, valid for a day)."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": audit.OPERATOR_NAMESPACE}}
    cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml([namespace, *operator_identity_objects()]))
    return cp.service_account_kubeconfig(audit.OPERATOR_NAMESPACE, audit.OPERATOR_ACCOUNT, path=path)


class OperatorProcess:
    """The operator as a child process, with its log in a file."""

    def __init__(
        self,
        cp: ControlPlane,
        workdir: Path,
        kubeconfig: Path | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.cp = cp
        self.log_path = workdir / "operator.log"
        self.kubeconfig = kubeconfig or cp.kubeconfig
        self.env = {
            **cp.env(),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "TRITONRESNET_RESYNC_SECONDS": "20",
            "TRITONRESNET_VERIFY_TIMEOUT_SECONDS": "20",
            # Not by DNS (the machine's resolver is not the cluster's) nor by ClusterIP (nothing
            # routes one here unless a pod network is up: ``operator_on_network`` turns it on).
            "TRITONRESNET_VERIFY_SERVICE": "off",
            # Triton locked down as the chart installs it: a key made for this run only.
            "TRITONRESNET_TRITON_CONTROL_KEY": secrets.token_hex(32),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        #: Where the running operator serves its Prometheus metrics (``host:port``).
        self.metrics_address = ""

    def start(self) -> None:
        self.starts += 1
        # A port of its own on every start: a restart never waits for the last one's to close.
        self.metrics_address = f"127.0.0.1:{free_port()}"
        log = open(self.log_path, "ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "tritonresnet", "operator", "--all-namespaces", "--standalone"),
                f"--metrics-address={self.metrics_address}",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_bytes(self) -> int:
        """Resident memory of the operator process now; 0 when it is not running."""
        return rss_of(self.proc.pid) if self.proc is not None and self.proc.poll() is None else 0


# -- a sample resource and waiting for it -------------------------------------------

READY_TIMEOUT = 420.0


def get_trn(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", "trn", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def condition(trn: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (trn.get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_for_trn(
    cp: ControlPlane,
    namespace: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = READY_TIMEOUT,
    operator: OperatorProcess | None = None,
) -> dict[str, Any]:
    """The TritonResNet once ``predicate`` holds for it; on timeout the failure carries its
    last status and the operator's log tail, which is what tells why it never got there."""
    last: dict[str, Any] = {}

    def probe() -> dict[str, Any] | None:
        nonlocal last
        last = get_trn(cp, namespace, name)
        return last if predicate(last) else None

    try:
        # Each probe runs kubectl; once a second is plenty for a status that moves in seconds.
        return wait_for(probe, f"{name} to become {what}", timeout, every=1.0)
    except WaitTimeout as error:
        tail = operator.log_text()[-4000:] if operator else ""
        raise error.with_detail(
            f"status: {json.dumps(last.get('status'), indent=1)}\noperator log tail:\n{tail}"
        ) from None


def is_ready(gen: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(trn: dict[str, Any]) -> bool:
        ready = condition(trn, "Ready")
        want_gen = gen if gen is not None else trn["metadata"]["generation"]
        return ready.get("status") == "True" and ready.get("observedGeneration") == want_gen

    return check


def apply_sample(
    cp: ControlPlane,
    namespace: str,
    s3: S3Server,
    uri: str,
    name: str = "resnet50",
    replicas: int = 1,
    model_name: str = "resnet50",
    max_batch_size: int = 4,
    serving: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
) -> None:
    """The sample TritonResNet with its Secret and claim; ``serving`` and ``source``: more
    fields of spec.serving and spec.source."""
    secret = s3.credentials_secret(namespace)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    trn = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {
                "uri": uri,
                "endpoint": s3.endpoint,
                "credentialsSecret": "s3-credentials",
                **(source or {}),
            },
            "model": {"name": model_name, "format": "onnx"},
            "engine": {"maxBatchSize": max_batch_size},
            "serving": {"release": "25.01", "replicas": replicas, "instanceCount": 1, **(serving or {})},
            "repository": {"claimName": "models"},
        },
    }
    docs = yaml.safe_dump_all([secret, pvc, trn])
    cp.kubectl("apply", "-f", "-", input=docs)


def triton_pods(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Triton pods of the TritonResNet ``name``, by the operator's labels."""
    items: list[dict[str, Any]] = kube.get(
        f"/api/v1/namespaces/{namespace}/pods", labelSelector=names.selector(name)
    )["items"]
    return items


def network_placement(node: str, *, cpu_only: bool = False) -> dict[str, Any]:
    """spec.serving fields that put Triton's pods on the pod-network node ``node``, its taint
    tolerated; ``cpu_only`` pods (no GPU request) tolerate the GPU taint too, which the operator
    adds itself only to pods that request a GPU."""
    tolerations = [GPU_TOLERATION, POD_NETWORK_TOLERATION] if cpu_only else [POD_NETWORK_TOLERATION]
    return {"nodeSelector": {HOSTNAME_LABEL: node}, "tolerations": tolerations}


def serve_on_network(
    operator: OperatorProcess,
    network: ClusterNetwork,
    kube: Kube,
    s3: S3Server,
    uri: str,
    namespace: str,
    name: str,
    model: str,
    replicas: int,
    timeout: float = 360.0,
    node_selector: dict[str, str] | None = None,
) -> tuple[list[str], str]:
    """The sample TritonResNet Ready with ``replicas`` pods on the network's first node, all of
    them the Service's ready endpoints: the pods' addresses and the Service's ClusterIP.
    ``node_selector`` (default: that node) may allow more (the other kept cordoned meanwhile)."""
    cp = operator.cp
    # CPU only: the network's one node has two GPUs, three replicas and a surge need more;
    # without a GPU request the operator adds no GPU toleration, and the node has the taint.
    serving = {
        **network_placement(network.node.name, cpu_only=True),
        **({"nodeSelector": node_selector} if node_selector else {}),
        "resources": {"requests": {"cpu": "100m"}},
    }
    apply_sample(cp, namespace, s3, uri, name=name, replicas=replicas, model_name=model, serving=serving)
    wait_for_trn(
        cp,
        namespace,
        name,
        lambda t: is_ready()(t) and t["status"].get("readyReplicas") == replicas,
        f"Ready with {replicas} replicas",
        timeout=timeout,
        operator=operator,
    )
    pods = triton_pods(kube, namespace, name)
    assert {pod["spec"]["nodeName"] for pod in pods} == {network.node.name}
    pod_ips = sorted(pod["status"]["podIP"] for pod in pods)
    assert len(pod_ips) == replicas
    wait_for(
        lambda: ready_endpoints(kube, namespace, name) == pod_ips or None,
        "the Service's endpoints",
        timeout,
    )
    cluster_ip: str = kube.get(f"/api/v1/namespaces/{namespace}/services/{name}")["spec"]["clusterIP"]
    return pod_ips, cluster_ip
