"""A mixed GPU fleet with ``gpuKinds: Auto``, on emulated nodes with GPU feature discovery's labels.

Real: the control plane, the scheduler's placement of the build pods, the operator (as its
ServiceAccount with the chart's RBAC, watching Nodes), S3, the builder's fetch, validation,
engine folders and publish (the config with ``cc_model_filenames``).
STAND-IN: TensorRT and the GPUs (``testground.standin_tensorrt``). The emulated nodes' builder
pods answer the CUDA query with the node's GPU kind and "build" with a stand-in ``tensorrt``
module, so each plan file is a stand-in, not a TensorRT plan. This test never waits for Ready:
its nodes are not on the pod network, so no client could reach a Triton pod of theirs through
a Service (the stand-in TensorRT backend would serve its plans).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.nodeagent import AGENT_LABEL, NodeAgent, claim_volume_path, gpu_node, start_node_agent
from testground.operator_run import OperatorProcess, wait_for_trn
from testground.s3 import S3Server
from testground.standin_tensorrt import PLAN_HEADER
from tritonresnet.api import names
from tritonresnet.controller import fleet

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

FLEET = "fleet-e2e"  #: the agent id of this test's nodes, which Triton's nodeSelector picks
THREE_KINDS = (
    gpu_node("fleet-a10g-0", "NVIDIA-A10G", 8, 6, "g5.xlarge", standin_tensorrt=True),
    gpu_node("fleet-a6000-0", "NVIDIA-RTX-A6000", 8, 6, "a6000.xlarge", standin_tensorrt=True),
    gpu_node("fleet-t4-0", "Tesla-T4", 7, 5, "g4dn.xlarge", standin_tensorrt=True),
    gpu_node("fleet-l4-0", "NVIDIA-L4", 8, 9, "g6.xlarge", standin_tensorrt=True),
)
JOINING = gpu_node("fleet-h100-0", "NVIDIA-H100-80GB-HBM3", 9, 0, "p5.48xlarge", standin_tensorrt=True)


@pytest.fixture
def three_kinds(cluster: ControlPlane, tmp_path: Path) -> Iterator[NodeAgent]:
    with start_node_agent(cluster, tmp_path / "fleet", THREE_KINDS, agent_id=FLEET) as agent:
        yield agent
    # The nodes stay registered but NotReady without their agent; gone, they cannot draw pods.
    for spec in (*THREE_KINDS, JOINING):
        cluster.kubectl("delete", "node", spec.name, "--ignore-not-found", "--wait=false")


def kubectl_json(cp: ControlPlane, *args: str) -> Any:
    return json.loads(cp.kubectl(*args, "-o", "json").stdout)


def build_jobs(cp: ControlPlane, namespace: str) -> dict[str, dict[str, Any]]:
    items = kubectl_json(cp, "get", "jobs", "-n", namespace, "-l", f"{names.LABEL_COMPONENT}=build")["items"]
    return {job["metadata"]["labels"][names.LABEL_TARGET]: job for job in items}


def build_nodes(cp: ControlPlane, namespace: str) -> dict[str, str]:
    """Build Job -> the node its pod ran on."""
    pods = kubectl_json(cp, "get", "pods", "-n", namespace, "-l", f"{names.LABEL_COMPONENT}=build")["items"]
    return {p["metadata"]["labels"]["job-name"]: p["spec"].get("nodeName", "") for p in pods}


def affinity(cp: ControlPlane, namespace: str) -> list[tuple[str, str]]:
    deployment = kubectl_json(cp, "get", "deployment", names.deployment_name("fleet"), "-n", namespace)
    node_affinity = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    out = []
    for term in terms:
        values = {e["key"]: e["values"][0] for e in term["matchExpressions"]}
        out.append((values[fleet.COMPUTE_MAJOR_LABEL], values[fleet.COMPUTE_MINOR_LABEL]))
    return out


def config_plans(volume: Path, version: int) -> dict[str, str]:
    """``cc_model_filenames`` of the published config of ``version``, read as Triton reads it."""
    from tritonresnet_builder import triton_config

    config = triton_config.parse((volume / "fleet" / "configs" / f"v{version}.pbtxt").read_text())
    return dict(config.cc_model_filenames)


def published(version: int) -> Any:
    return lambda trn: ((trn.get("status") or {}).get("published") or {}).get("version") == version


def test_three_gpu_kinds_build_three_pinned_plans_and_a_joining_kind_one_more_with_standin_tensorrt(
    operator: OperatorProcess,
    three_kinds: NodeAgent,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    tmp_path: Path,
) -> None:
    """STAND-IN TensorRT (see the module docstring). Three capabilities (8.6 on two products,
    7.5, 8.9) -> three build Jobs, each pinned to its capability and run on a node of it; one
    version whose config maps all three; Triton requires exactly those. An H100 (9.0) joining
    mid-test -> one more build, the three plans reused, version 2 with four; status says which
    node built each plan."""
    cp = operator.cp
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/fleet/model.onnx")
    secret = s3.credentials_secret(namespace)
    trn = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": "fleet", "namespace": namespace},
        "spec": {
            "source": {"uri": uri, "endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
            "model": {"format": "tensorrt"},
            "engine": {"gpuKinds": "Auto", "maxBatchSize": 4, "workspaceMiB": 1024},
            # Only this test's nodes: the session's own GPU nodes run the real builder (no TensorRT).
            "serving": {"release": "25.01", "replicas": 1, "nodeSelector": {AGENT_LABEL: FLEET}},
            "repository": {"create": {"size": "1Gi"}},
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, trn]))

    status = wait_for_trn(cp, namespace, "fleet", published(1), "published at version 1", operator=operator)[
        "status"
    ]
    jobs = build_jobs(cp, namespace)
    assert sorted(jobs) == ["sm75", "sm86", "sm89"]
    ran_on = build_nodes(cp, namespace)
    by_node = {spec.name: spec for spec in (*THREE_KINDS, JOINING)}
    for target, job in jobs.items():
        selector = job["spec"]["template"]["spec"]["nodeSelector"]
        assert (selector[fleet.COMPUTE_MAJOR_LABEL], selector[fleet.COMPUTE_MINOR_LABEL]) == (
            target[2],
            target[3],
        )
        node = by_node[ran_on[job["metadata"]["name"]]]
        assert node.compute_capability == f"{target[2]}.{target[3]}", "built on a node of its kind"

    volume = claim_volume_path(Path(cp.kubeconfig), namespace, names.pvc_name("fleet"))
    assert config_plans(volume, 1) == {
        "7.5": "model.sm75.plan",
        "8.6": "model.sm86.plan",
        "8.9": "model.sm89.plan",
    }
    assert (volume / "fleet" / "1" / "model.sm86.plan").read_bytes().startswith(PLAN_HEADER)
    assert affinity(cp, namespace) == [("7", "5"), ("8", "6"), ("8", "9")]
    targets = {t["name"]: t for t in status["targets"]}
    assert {n: t["node"] for n, t in targets.items()} == {n: ran_on[t["job"]] for n, t in targets.items()}
    keys = {n: t["engineKey"] for n, t in targets.items()}

    # A node of a new capability joins (another agent: a node group growing).
    with start_node_agent(cp, tmp_path / "joining", (JOINING,), agent_id=FLEET):
        status = wait_for_trn(
            cp, namespace, "fleet", published(2), "published at version 2", operator=operator
        )["status"]
        jobs_after = build_jobs(cp, namespace)
        assert sorted(jobs_after) == ["sm75", "sm86", "sm89", "sm90"], "one new build, none again"
        assert build_nodes(cp, namespace)[jobs_after["sm90"]["metadata"]["name"]] == JOINING.name
        after = {t["name"]: t["engineKey"] for t in status["targets"]}
        assert {n: k for n, k in after.items() if n != "sm90"} == keys, "the other plans are reused"
        assert set(config_plans(volume, 2)) == {"7.5", "8.6", "8.9", "9.0"}
        wait_for_trn(
            cp,
            namespace,
            "fleet",
            lambda t: affinity(cp, namespace) == [("7", "5"), ("8", "6"), ("8", "9"), ("9", "0")],
            "Triton pinned to the four capabilities",
            operator=operator,
        )
