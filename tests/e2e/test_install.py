"""Install as the README says, then let the operator, as the installed ServiceAccount, serve a sample.

For the Helm chart (cluster-wide, and restricted to one namespace) and for
the kustomize base, the test runs the README's install command
(``INSTALL_COMMANDS``) against the real test apiserver, reads the operator
Deployment that was installed, and runs the operator the way that
Deployment's container would: the image's entry point (``ENTRYPOINT`` of
operator/Dockerfile) with the container's args and env, authenticated with a
token of the Deployment's ServiceAccount, never as admin. A sample then goes
from apply to Ready, and the operator's log must hold no ``Forbidden``.

Why the operator runs as a local process and not as the Deployment's pod:
the test reads every line of the operator's log and kills it between
installs at known moments; a local process started from the installed
Deployment's container (entry point, args, env, ServiceAccount token) is the
same program with the same rights, and its log is the test's. The installs
therefore keep the Deployment at zero replicas (``--set replicas=0`` for
Helm, ``kubectl scale --replicas=0`` after ``apply -k``), so no second copy
can ever start next to the one under test.

One operator at a time: a standalone kopf operator per namespace is the
design, and the session-wide ``operator`` fixture (admin, all namespaces)
would reconcile the sample too. This module's autouse fixture takes that
fixture (pytest may have started it for an earlier module, or starts it
now), stops it for the module's duration and starts it again afterwards,
and checks that no pod of an operator image is running in the cluster.
Each test also keeps its operator to its own namespaces: the namespaced
install only ever sees the test's namespace.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testground.chart import (
    MANIFESTS_DIR,
    REPO_ROOT,
    helm_uninstall,
    render_kustomize,
    run_documented,
    to_yaml,
)
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.nodeagent_pods import image_kind
from testground.operator_run import OperatorProcess, apply_sample, condition, is_ready, wait_for_trn
from testground.s3 import S3Server
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

#: The README's install section, as these tests run it (``{...}`` are the README's
#: defaults below; the tests use their own names and add ``--kubeconfig`` and replicas=0).
_HELM_INSTALL = "helm install {release} helm/tritonresnet-operator --namespace {operator_namespace}"
INSTALL_COMMANDS: dict[str, str] = {
    "helm": f"{_HELM_INSTALL} --create-namespace",
    "helm-namespaced": f"{_HELM_INSTALL} --create-namespace --set watchNamespaces={{{{{{namespace}}}}}}",
    "kustomize": "kubectl apply --server-side -k manifests/base",
    "wait": "kubectl -n {namespace} wait trn/{name} --for=condition=Ready --timeout=15m",
}
README_DEFAULTS = {
    "release": "tritonresnet-operator",
    "operator_namespace": "tritonresnet-system",
    "namespace": "vision",
    "name": "resnet50",
}

KUSTOMIZE_NAMESPACE = "tritonresnet-system"
KUSTOMIZE_DEPLOYMENT = "tritonresnet-operator"
SAMPLE = "resnet50"
DOCKERFILE = REPO_ROOT / "operator" / "Dockerfile"
#: What the API server answers when RBAC refuses, in kopf's, the client's and our own log lines.
REFUSED = re.compile(r"forbidden|\(403\)|not enough permissions", re.IGNORECASE)


def image_entrypoint() -> list[str]:
    """``ENTRYPOINT`` of the operator's Dockerfile (exec form)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENTRYPOINT "):
            return list(json.loads(line.removeprefix("ENTRYPOINT ")))
    raise AssertionError(f"{DOCKERFILE} has no ENTRYPOINT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class DeploymentOperator(OperatorProcess):
    """The operator Deployment's container as a local process: entry point + args + env,
    with the ServiceAccount's kubeconfig. The liveness endpoint moves to a free local port
    (a pod has its own network namespace; a local process shares the machine's)."""

    def __init__(self, cp: ControlPlane, workdir: Path, kubeconfig: Path, container: dict[str, Any]) -> None:
        env = {item["name"]: item["value"] for item in container.get("env") or [] if "value" in item}
        super().__init__(cp, workdir, kubeconfig=kubeconfig, extra_env=env)
        self.liveness_port = free_port()
        liveness = f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"
        args = container.get("args") or []
        self.args = [liveness if arg.startswith("--liveness=") else arg for arg in args]
        program, *leading = image_entrypoint()
        assert program == "tritonresnet", program  # the console script of `python -m tritonresnet`
        self.argv = [sys.executable, "-m", "tritonresnet", *leading, *self.args]

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def healthz(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}{path}", timeout=2) as answer:
                return int(answer.status)
        except OSError:
            return 0


# -- one operator at a time --------------------------------------------------------


def running_operator_pods(cp: ControlPlane) -> list[str]:
    pods = json.loads(cp.kubectl("get", "pods", "--all-namespaces", "-o", "json").stdout)["items"]
    return [
        f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        for pod in pods
        if pod.get("status", {}).get("phase") == "Running"
        and any(image_kind(c.get("image", "")) == "operator" for c in pod["spec"]["containers"])
    ]


@pytest.fixture(scope="module", autouse=True)
def sole_operator(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """Stop the session's admin operator while this module runs; start it again after."""
    session_operator: OperatorProcess = request.getfixturevalue("operator")
    session_operator.kill(signal.SIGTERM)
    cp = session_operator.cp
    try:
        assert not running_operator_pods(cp), "another operator is running in the cluster"
        yield cp
    finally:
        session_operator.start()


# -- the shared flow ----------------------------------------------------------------


def installed_deployment(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    found = json.loads(cp.kubectl("get", "deployments", "-n", namespace, "-o", "json").stdout)
    (deployment,) = found["items"]
    return dict(deployment)


def serve_sample_as_installed_operator(
    cp: ControlPlane,
    operator_namespace: str,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    workdir: Path,
) -> str:
    """Run the installed Deployment's operator as its ServiceAccount until a sample is Ready;
    returns the operator's log."""
    deployment = installed_deployment(cp, operator_namespace)
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert image_kind(container["image"]) == "operator", container["image"]  # the agent knows the image
    account = pod_spec["serviceAccountName"]
    kubeconfig = cp.service_account_kubeconfig(operator_namespace, account, path=workdir / "sa.kubeconfig")
    whoami = cp.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kubeconfig)
    assert whoami.stdout == f"system:serviceaccount:{operator_namespace}:{account}"
    secrets = cp.kubectl(
        "auth", "can-i", "get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert secrets.stdout.strip() == "no"  # not admin

    # A cluster-wide operator would also act on earlier tests' resources in namespaces still
    # being deleted, where the API server refuses every create (403, "being terminated").
    wait_for(
        lambda: not cp.kubectl("get", "trn", "--all-namespaces", "-o", "name").stdout.strip(),
        "earlier tests' TritonResNets to be gone",
        180,
        every=0.5,
    )
    operator = DeploymentOperator(cp, workdir, kubeconfig, container)
    operator.start()
    try:
        probe_path = container["livenessProbe"]["httpGet"]["path"]
        wait_for(lambda: operator.healthz(probe_path) == 200, "the liveness endpoint", 60, every=0.5)
        uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
        apply_sample(cp, namespace, s3, uri, name=SAMPLE)
        trn = wait_for_trn(cp, namespace, SAMPLE, is_ready(), "Ready", operator=operator)
        run_documented(
            INSTALL_COMMANDS["wait"].format(namespace=namespace, name=SAMPLE), f"--kubeconfig={cp.kubeconfig}"
        )
    finally:
        operator.kill(signal.SIGTERM)
    status = trn["status"]
    assert status["phase"] == "Ready" and status["modelVersion"] == 1
    assert status["readyReplicas"] == 1 and status["endpoints"]
    assert condition(trn, "Available")["status"] == "True"
    return operator.log_text()


def refusals(log: str) -> list[str]:
    """Lines where the API server refused the operator; the log must be kopf's own to count."""
    assert "Initial authentication has finished" in log, log[-2000:]
    return [line for line in log.splitlines() if REFUSED.search(line)]


#: What a namespaced install may still grant cluster-wide: kopf's read-only discovery.
DISCOVERY_GRANTS = {
    (group, resource, verb)
    # Nodes: gpuKinds Auto reads the fleet's GPU kinds, cluster-scoped in both install modes.
    for group, resource in (
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
        ("", "nodes"),
    )
    for verb in ("list", "watch")
}


def cluster_grants(cp: ControlPlane, release: str) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every rule in the release's ClusterRoles."""
    found = cp.kubectl("get", "clusterroles", "-l", f"app.kubernetes.io/instance={release}", "-o", "json")
    return {
        (group, resource, verb)
        for role in json.loads(found.stdout)["items"]
        for rule in role.get("rules") or ()
        for group in rule.get("apiGroups") or ()
        for resource in rule.get("resources") or ()
        for verb in rule.get("verbs") or ()
    }


# -- Helm ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["helm", "helm-namespaced"])
def test_helm_chart_operator_as_its_service_account_takes_a_sample_to_ready(
    scope: str,
    sole_operator: ControlPlane,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    tmp_path: Path,
) -> None:
    cp = sole_operator
    unique = uuid.uuid4().hex[:6]
    release, operator_namespace = f"trn-{unique}", f"trn-op-{unique}"
    command = INSTALL_COMMANDS[scope].format(
        release=release, operator_namespace=operator_namespace, namespace=namespace
    )
    notes = run_documented(command, f"--kubeconfig={cp.kubeconfig}", "--set", "replicas=0")
    try:
        assert "kubectl -n vision get trn" in notes  # NOTES.txt says what to apply next
        if scope == "helm-namespaced":
            # A Role in the one watched namespace; cluster-wide only read-only discovery and Nodes.
            roles = json.loads(cp.kubectl("get", "roles", "-n", namespace, "-o", "json").stdout)["items"]
            assert roles
            assert cluster_grants(cp, release) <= DISCOVERY_GRANTS
        log = serve_sample_as_installed_operator(cp, operator_namespace, namespace, s3, onnx_models, tmp_path)
        assert not refusals(log), "\n".join(refusals(log))
    finally:
        helm_uninstall(cp.kubeconfig, namespace=operator_namespace, release=release)
        cp.delete_namespace(operator_namespace)


# -- kustomize ---------------------------------------------------------------------------


@pytest.fixture
def kustomize_base(sole_operator: ControlPlane) -> Iterator[ControlPlane]:
    """The base applied as the README says, its Deployment held at zero replicas; removed after
    (all but the CRD, which the session shares)."""
    cp = sole_operator
    # An earlier test may have left the fixed namespace terminating; apply would then be refused.
    if namespace_terminating(cp):
        cp.delete_namespace(KUSTOMIZE_NAMESPACE, wait=True)
    run_documented(INSTALL_COMMANDS["kustomize"], f"--kubeconfig={cp.kubeconfig}")
    try:
        cp.kubectl("scale", f"deployment/{KUSTOMIZE_DEPLOYMENT}", "-n", KUSTOMIZE_NAMESPACE, "--replicas=0")
        selector = ",".join(
            f"{k}={v}"
            for k, v in installed_deployment(cp, KUSTOMIZE_NAMESPACE)["spec"]["selector"][
                "matchLabels"
            ].items()
        )
        wait_for(
            lambda: (
                not cp.kubectl(
                    "get", "pods", "-n", KUSTOMIZE_NAMESPACE, "-l", selector, "-o", "name"
                ).stdout.strip()
            ),
            "the operator pod to go away",
            60,
            every=0.5,
        )
        yield cp
    finally:
        rest = [
            obj
            for obj in render_kustomize(MANIFESTS_DIR / "base")
            if obj["kind"] != "CustomResourceDefinition"
        ]
        cp.kubectl("delete", "--ignore-not-found", "-f", "-", input=to_yaml(rest), check=False)
        cp.delete_namespace(KUSTOMIZE_NAMESPACE, wait=True)


def namespace_terminating(cp: ControlPlane) -> bool:
    found = cp.kubectl("get", "namespace", KUSTOMIZE_NAMESPACE, "-o", "jsonpath={.status.phase}", check=False)
    return found.returncode == 0 and found.stdout == "Terminating"


def test_kustomize_base_operator_as_its_service_account_takes_a_sample_to_ready(
    kustomize_base: ControlPlane,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    tmp_path: Path,
) -> None:
    cp = kustomize_base
    log = serve_sample_as_installed_operator(cp, KUSTOMIZE_NAMESPACE, namespace, s3, onnx_models, tmp_path)
    assert not refusals(log), "\n".join(refusals(log))
