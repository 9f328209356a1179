"""The emulated GPU nodes against the real control plane.

Real: kube-apiserver, controller-manager (Deployment, Job, EndpointSlice, PV
binder), scheduler, the builder from this checkout and pytriton's tritonserver.
Emulated: the kubelet (testground.nodeagent runs containers as local processes).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from testground.controlplane import ControlPlane
from testground.nodeagent import (
    A10G_PRODUCT,
    CPU_NODE,
    DEFAULT_NODES,
    GPU_COMPUTE_MAJOR_LABEL,
    GPU_COMPUTE_MINOR_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GPU_TOLERATION,
    STORAGE_CLASS,
    T4_PRODUCT,
    UNKNOWN_IMAGE_REASON,
    claim_volume_path,
)
from testground.nodeagent_kube import Kube
from testground.triton import TRITON_IMAGE, add_one_deployment, add_one_model, infer_add_one
from testground.waiting import wait_for
from tritonresnet_builder.contract import parse_result

pytestmark = pytest.mark.cluster

BUILDER_IMAGE = "registry.example/tritonresnet-builder:0.1.0"
TIMEOUT = 120.0


@pytest.fixture
def kube(cluster: ControlPlane) -> Iterator[Kube]:
    client = Kube(str(cluster.kubeconfig))
    yield client
    client.api.close()


def phase_is(kube: Kube, namespace: str, name: str, *phases: str) -> Callable[[], dict[str, Any] | None]:
    """A probe for wait_for: the pod once its phase is one of ``phases``."""

    def probe() -> dict[str, Any] | None:
        found = kube.get(pod_path(namespace, name))
        return found if found["status"].get("phase") in phases else None

    return probe


def apply(cluster: ControlPlane, *objects: dict[str, Any]) -> None:
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )


def pod_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}".rstrip("/")


def job_pods(kube: Kube, namespace: str, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get(pod_path(namespace), labelSelector=f"job-name={job}")["items"]
    return items


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def job(name: str, namespace: str, container: dict[str, Any], backoff_limit: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def pod(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def claim(name: str, namespace: str, storage_class: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def bound_claim(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    def bound() -> dict[str, Any] | None:
        found = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}")
        return found if found.get("status", {}).get("phase") == "Bound" else None

    return wait_for(bound, f"claim {name} to be bound", TIMEOUT)


def pid_of(status: dict[str, Any]) -> int:
    return int(status["containerID"].removeprefix("testground://"))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


# -- nodes ---------------------------------------------------------------------------


def test_nodes_are_ready_with_gpu_capacity_labels_taint_and_lease(kube: Kube) -> None:
    nodes = {node["metadata"]["name"]: node for node in kube.get("/api/v1/nodes")["items"]}
    for spec in DEFAULT_NODES:
        node = nodes[spec.name]
        assert condition(node, "Ready")["status"] == "True"
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{spec.name}")
        assert lease["spec"]["holderIdentity"] == spec.name
        taints = node["spec"].get("taints") or []
        if spec.has_gpu:
            assert node["status"]["allocatable"][GPU_RESOURCE] == "2"
            assert node["metadata"]["labels"][GPU_PRODUCT_LABEL] == spec.gpu_product
            assert taints == [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]
        else:
            assert GPU_RESOURCE not in node["status"]["allocatable"]
            assert taints == []
    a10g = [n for n in nodes.values() if n["metadata"]["labels"].get(GPU_PRODUCT_LABEL) == A10G_PRODUCT]
    t4 = [n for n in nodes.values() if n["metadata"]["labels"].get(GPU_PRODUCT_LABEL) == T4_PRODUCT]
    assert len(a10g) == 3 and len(t4) == 1
    assert {
        (n["metadata"]["labels"][GPU_COMPUTE_MAJOR_LABEL], n["metadata"]["labels"][GPU_COMPUTE_MINOR_LABEL])
        for n in t4
    } == {("7", "5")}


# -- scheduling ----------------------------------------------------------------------


def test_gpu_pod_lands_on_tolerated_gpu_node_and_plain_pod_on_cpu_node(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    """Images here are unknown on purpose: only placement is under test."""
    gpu_spec = {
        "tolerations": [GPU_TOLERATION],
        "nodeSelector": {GPU_PRODUCT_LABEL: T4_PRODUCT},
        "containers": [
            {"name": "c", "image": "example/anything:1", "resources": {"limits": {GPU_RESOURCE: "1"}}}
        ],
    }
    plain_spec = {"containers": [{"name": "c", "image": "example/anything:1"}]}
    apply(cluster, pod("gpu", namespace, gpu_spec), pod("plain", namespace, plain_spec))

    def node_of(name: str) -> Callable[[], str]:
        return lambda: str(kube.get(pod_path(namespace, name))["spec"].get("nodeName", ""))

    assert wait_for(node_of("gpu"), "gpu pod scheduled", TIMEOUT) == "gpu-t4-0"
    # The GPU nodes are tainted: a pod without the toleration can only go to the CPU node.
    assert wait_for(node_of("plain"), "plain pod scheduled", TIMEOUT) == CPU_NODE


def test_pod_wanting_three_gpus_stays_pending_unschedulable(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    spec = {
        "tolerations": [GPU_TOLERATION],
        "containers": [{"name": "c", "image": BUILDER_IMAGE, "resources": {"limits": {GPU_RESOURCE: "3"}}}],
    }
    apply(cluster, pod("greedy", namespace, spec))
    scheduled = wait_for(
        lambda: condition(kube.get(pod_path(namespace, "greedy")), "PodScheduled"),
        "the scheduler's verdict",
        TIMEOUT,
    )
    assert scheduled["status"] == "False"
    assert scheduled["reason"] == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in scheduled["message"]
    assert kube.get(pod_path(namespace, "greedy"))["status"]["phase"] == "Pending"


def test_unknown_image_stays_pending_with_clear_reason(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    apply(
        cluster,
        pod("mystery", namespace, {"containers": [{"name": "c", "image": "docker.io/library/busybox:1"}]}),
    )

    def waiting() -> dict[str, Any] | None:
        statuses = kube.get(pod_path(namespace, "mystery")).get("status", {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting") if statuses else None

    state = wait_for(waiting, "the container status", TIMEOUT)
    assert state["reason"] == UNKNOWN_IMAGE_REASON
    assert "docker.io/library/busybox:1" in state["message"]
    assert kube.get(pod_path(namespace, "mystery"))["status"]["phase"] == "Pending"


# -- jobs with the builder image -----------------------------------------------------


def test_job_with_builder_image_completes(cluster: ControlPlane, kube: Kube, namespace: str) -> None:
    apply(cluster, job("help", namespace, {"name": "builder", "image": BUILDER_IMAGE, "args": ["--help"]}))
    done = wait_for(
        lambda: (
            condition(kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/help"), "Complete")
            or condition(kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/help"), "Failed")
        ),
        "the Job to finish",
        TIMEOUT,
    )
    assert done["type"] == "Complete", done
    (only,) = job_pods(kube, namespace, "help")
    assert only["status"]["phase"] == "Succeeded"
    terminated = only["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")


def test_failing_builder_job_reports_exit_code_and_termination_message(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    """The builder writes its JSON result to --result-file=/dev/termination-log; the agent
    maps that path to a local file and reports it as the termination message. The source
    comes through $(SOURCE) from a ConfigMap key and lies under the mounted volume."""
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "source", "namespace": namespace},
        "data": {"uri": "/models/incoming/missing.onnx"},
    }
    container = {
        "name": "builder",
        "image": BUILDER_IMAGE,
        "args": [
            "build",
            "--repository=/models",
            "--engine-key=0123456789abcdef",
            "--source=$(SOURCE)",
            "--format=onnx",
            "--result-file=/dev/termination-log",
        ],
        "env": [{"name": "SOURCE", "valueFrom": {"configMapKeyRef": {"name": "source", "key": "uri"}}}],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    failing = job("broken", namespace, container)
    failing["spec"]["template"]["spec"]["volumes"] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": "m"}}
    ]
    apply(cluster, config_map, claim("m", namespace), failing)
    wait_for(
        lambda: condition(kube.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/broken"), "Failed"),
        "the Job to fail",
        TIMEOUT,
    )
    (only,) = job_pods(kube, namespace, "broken")
    assert only["status"]["phase"] == "Failed"
    terminated = only["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0
    assert terminated["reason"] == "Error"
    result = parse_result(terminated["message"])
    assert not result.ok
    assert result.exit_code == terminated["exitCode"]
    # The agent rewrote the mounted path: nothing of the container's /models leaked into the host's /.
    assert not Path("/models/incoming").exists()


def test_fallback_to_logs_on_error_gives_the_log_tail_as_message(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    spec = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "triton",
                "image": TRITON_IMAGE,
                "command": ["tritonserver"],
                "args": ["--model-repository=/no/such/repository"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
    }
    apply(cluster, pod("bad-flags", namespace, spec))
    terminal = wait_for(phase_is(kube, namespace, "bad-flags", "Failed"), "the pod to fail", TIMEOUT)
    terminated = terminal["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0
    assert "/no/such/repository" in terminated["message"]
    assert len(terminated["message"].encode()) <= 2048


# -- storage -------------------------------------------------------------------------


def test_claim_without_class_gets_testground_volume_bound(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    apply(cluster, claim("plain", namespace), claim("explicit", namespace, STORAGE_CLASS))
    for name in ("plain", "explicit"):
        found = bound_claim(kube, namespace, name)
        assert found["spec"]["storageClassName"] == STORAGE_CLASS
        volume = kube.get(f"/api/v1/persistentvolumes/{found['spec']['volumeName']}")
        assert volume["spec"]["claimRef"]["uid"] == found["metadata"]["uid"]
        assert volume["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim_volume_path(cluster.kubeconfig, namespace, name).is_dir()


# -- a Triton Deployment -------------------------------------------------------------


def triton_deployment(namespace: str, claim_name: str) -> dict[str, Any]:
    volume = {"persistentVolumeClaim": {"claimName": claim_name}}
    placement = {"tolerations": [GPU_TOLERATION], "nodeSelector": {GPU_PRODUCT_LABEL: A10G_PRODUCT}}
    return add_one_deployment(namespace, volume, placement)


@pytest.mark.triton
def test_triton_deployment_becomes_available_and_serves_from_its_volume(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    claim_name = f"models-{uuid.uuid4().hex[:6]}"
    apply(cluster, claim(claim_name, namespace))
    bound_claim(kube, namespace, claim_name)
    add_one_model(claim_volume_path(cluster.kubeconfig, namespace, claim_name))
    apply(cluster, triton_deployment(namespace, claim_name))

    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments/triton"
    available = wait_for(
        lambda: condition(kube.get(deployments), "Available").get("status") == "True",
        "the Deployment to be Available",
        TIMEOUT,
    )
    assert available
    (running,) = kube.get(pod_path(namespace), labelSelector="app=triton")["items"]
    status = running["status"]
    assert running["spec"]["nodeName"].startswith("gpu-a10g-")
    assert condition(running, "Ready")["status"] == "True"
    assert status["podIP"].startswith("127.0.") and status["podIP"] != "127.0.0.1"
    assert infer_add_one(f"http://{status['podIP']}:8000", 41.0) == 42.0

    # Deleting the Deployment stops the server process and removes the pod.
    pid = pid_of(status["containerStatuses"][0])
    assert process_alive(pid)
    kube.delete(deployments, {"propagationPolicy": "Foreground"})
    wait_for(
        lambda: not kube.get(pod_path(namespace), labelSelector="app=triton")["items"],
        "the pod to go away",
        TIMEOUT,
    )
    assert not process_alive(pid)


# -- the operator image runs as its pod's ServiceAccount -----------------------------


def test_operator_image_runs_with_its_service_account_not_admin(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    """The default ServiceAccount has no rights, so the API server refuses the call (403);
    with the agent's admin credentials the answer would be 404 (no such object)."""
    spec = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "operator",
                "image": "registry.example/tritonresnet-operator:0.1.0",
                # command replaces the image's ENTRYPOINT (tritonresnet operator).
                "command": ["tritonresnet"],
                "args": ["status", "anything", f"--namespace={namespace}"],
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
    }
    apply(cluster, pod("who-am-i", namespace, spec))
    terminal = wait_for(
        phase_is(kube, namespace, "who-am-i", "Succeeded", "Failed"), "the pod to finish", TIMEOUT
    )
    terminated = terminal["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0
    assert "403" in terminated["message"]


# -- restarts --------------------------------------------------------------------------


def test_on_failure_pod_is_restarted_and_counts_restarts(
    cluster: ControlPlane, kube: Kube, namespace: str
) -> None:
    spec = {
        "restartPolicy": "OnFailure",
        "containers": [{"name": "builder", "image": BUILDER_IMAGE, "args": ["no-such-command"]}],
    }
    apply(cluster, pod("crashy", namespace, spec))

    def restarted_twice() -> dict[str, Any] | None:
        statuses = kube.get(pod_path(namespace, "crashy"))["status"].get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    status = wait_for(restarted_twice, "two restarts", TIMEOUT)
    assert status["lastState"]["terminated"]["exitCode"] != 0
    assert kube.get(pod_path(namespace, "crashy"))["status"]["phase"] in ("Pending", "Running")


@pytest.mark.triton
def test_agent_restart_keeps_nodes_and_fails_never_pods_it_lost(
    cluster: ControlPlane, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """A second agent (own nodes, own workdir) is killed like a crash and started again:
    its node stays Ready and a restartPolicy=Never pod whose process died with it is Failed."""
    from testground.nodeagent import NodeSpec, start_node_agent

    node = NodeSpec(name=f"spare-{uuid.uuid4().hex[:6]}")
    spec = {
        "restartPolicy": "Never",
        "nodeName": node.name,
        "containers": [
            {
                "name": "triton",
                "image": TRITON_IMAGE,
                "command": ["tritonserver"],
                "args": ["--model-repository=/models"],
                "volumeMounts": [{"name": "models", "mountPath": "/models"}],
            }
        ],
        "volumes": [{"name": "models", "emptyDir": {}}],
    }
    with start_node_agent(cluster, tmp_path / "agent", nodes=[node]) as agent:
        apply(cluster, pod("lost", namespace, spec))
        running = wait_for(phase_is(kube, namespace, "lost", "Running"), "the pod to run", TIMEOUT)
        pid = pid_of(running["status"]["containerStatuses"][0])
        agent.kill()
        agent.start()  # kills the groups the crashed agent left, then takes the pod over
        failed = wait_for(phase_is(kube, namespace, "lost", "Failed"), "the pod to be marked Failed", TIMEOUT)
        terminated = failed["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["reason"] == "NodeAgentRestarted"
        assert not process_alive(pid)
        assert condition(kube.get(f"/api/v1/nodes/{node.name}"), "Ready")["status"] == "True"
    kube.delete(f"/api/v1/nodes/{node.name}")
