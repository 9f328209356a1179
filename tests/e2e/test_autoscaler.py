"""From zero nodes to Ready: Karpenter adds the nodes a TritonResNet's pods wait for.

A cluster of its own (this module's control plane) that starts with no node
at all. Real: the control plane, Karpenter's core (``sigs.k8s.io/karpenter``,
built from its module) with its kwok cloud provider and its CRDs, the
operator (as its ServiceAccount), the builder and tritonserver processes.
Stand-ins: the cloud (the kwok provider "launches" an instance by creating
its Node object, from our instance-type file) and the machines' kubelets (the
node agent adopts those Nodes, ``testground.nodeagent_adopt``); serving runs
through the stand-in onnxruntime backend.

The resource is an ONNX model served on ``NVIDIA-L4``, a GPU kind no node has.
Its build is the operator's CPU build (an ONNX model needs no GPU to be
prepared; the test ground has no TensorRT for a GPU build), so its pod
waits for a node of the ``cpu`` pool; then Triton's pod waits for an L4 node
of the ``gpu`` pool, which Karpenter picks by the GPU feature discovery label
the pod selects (a cheaper T4 kind is on offer too).

The times printed (apply -> Ready, and how much of it went to waiting for
nodes) are measurements, never assertions.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from testground.binaries import KARPENTER_VERSION, ensure_karpenter
from testground.controlplane import ControlPlane, log, start_control_plane
from testground.karpenter import CPU_POOL, GPU_POOL, INSTANCE_TYPES_FILE, Karpenter, start_karpenter
from testground.models import OnnxModels
from testground.nodeagent import (
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    INSTANCE_TYPE_LABEL,
    start_node_agent,
)
from testground.nodeagent_adopt import NODEPOOL_LABEL
from testground.operator_run import (
    OperatorProcess,
    apply_sample,
    get_trn,
    install_crd,
    install_operator_identity,
    is_ready,
)
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "scaled-up"
NAMESPACE = "autoscaled"
PRODUCT = "NVIDIA-L4"
#: The kind Karpenter should pick for one L4: the cheapest GPU kind with that product.
L4_KIND = "g6.xlarge"
#: Build, two scale-ups and Triton's start on two shared cores, with room.
READY_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def autoscaled(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ControlPlane, Karpenter, OperatorProcess]]:
    """A control plane with no node, Karpenter, the adopting node agent and the operator."""
    if shutil.which("go") is None:
        pytest.skip("Karpenter is built from its Go module: no go toolchain here")
    try:
        ensure_karpenter(log=log)  # once per machine and version; cached after
    except (subprocess.CalledProcessError, OSError) as error:
        pytest.skip(f"Karpenter {KARPENTER_VERSION} could not be built from its Go module: {error}")
    workdir = tmp_path_factory.mktemp("autoscaler")
    with (
        start_control_plane(workdir / "control-plane") as cp,
        start_node_agent(cp, workdir / "nodes", nodes=(), adopt_instance_types=INSTANCE_TYPES_FILE),
        start_karpenter(cp, workdir / "karpenter") as karpenter,
    ):
        install_crd(cp)
        kubeconfig = install_operator_identity(cp, workdir / "operator.kubeconfig")
        operator = OperatorProcess(cp, workdir, kubeconfig=kubeconfig)
        operator.start()
        try:
            yield cp, karpenter, operator
        finally:
            operator.kill(signal.SIGTERM)


def _items(cp: ControlPlane, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(cp.kubectl("get", *args, "-o", "json").stdout)["items"])


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _scheduled_at(pod: dict[str, Any]) -> str | None:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond["type"] == "PodScheduled" and cond["status"] == "True":
            return str(cond["lastTransitionTime"])
    return None


def _component(pod: dict[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get(names.LABEL_COMPONENT, ""))


def test_karpenter_adds_a_cpu_node_for_the_build_and_an_l4_node_for_triton_kwok_provider_and_agent_stand_in(
    autoscaled: tuple[ControlPlane, Karpenter, OperatorProcess],
    s3: S3Server,
    onnx_models: OnnxModels,
) -> None:
    """Stand-ins: the kwok cloud provider (Nodes instead of machines), the node agent as their kubelet."""
    cp, karpenter, operator = autoscaled
    assert _items(cp, "nodes") == [], "the cluster starts with no node"
    cp.kubectl("create", "namespace", NAMESPACE)
    uri = s3.upload(onnx_models.path("resnet18"), f"{NAMESPACE}/resnet18/model.onnx")

    applied, applied_wall = time.monotonic(), datetime.now().astimezone()
    apply_sample(
        cp,
        NAMESPACE,
        s3,
        uri,
        name=NAME,
        model_name="resnet18",
        serving={
            "nodeSelector": {GPU_PRODUCT_LABEL: PRODUCT},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {GPU_RESOURCE: "1"}},
        },
    )
    # Every pod seen on the way, by name: the build pod may be gone once its Job is done.
    seen: dict[str, dict[str, Any]] = {}

    def ready() -> dict[str, Any] | None:
        for pod in _items(cp, "pods", "-n", NAMESPACE):
            seen[pod["metadata"]["name"]] = pod
        trn = get_trn(cp, NAMESPACE, NAME)
        return trn if is_ready()(trn) else None

    try:
        wait_for(ready, f"{NAME} to become Ready", READY_TIMEOUT, every=1.0)
    except WaitTimeout as error:
        tail = f"operator log tail:\n{operator.log_text()[-3000:]}\nKarpenter log tail:\n"
        raise error.with_detail(tail + karpenter.log_text()[-3000:]) from None
    took = time.monotonic() - applied

    nodes = {node["metadata"]["name"]: node for node in _items(cp, "nodes")}
    builds = [pod for pod in seen.values() if _component(pod) == "build" and pod["spec"].get("nodeName")]
    tritons = [pod for pod in seen.values() if _component(pod) == "triton" and pod["spec"].get("nodeName")]
    assert builds and tritons, sorted(seen)

    # The scheduler found no node for them first: Karpenter acted on real Pending pods.
    events = _items(cp, "events", "-n", NAMESPACE, "--field-selector=reason=FailedScheduling")
    unschedulable = {event["involvedObject"]["name"] for event in events}
    for pod in (builds[0], tritons[0]):
        assert pod["metadata"]["name"] in unschedulable, pod["metadata"]["name"]

    build_node = nodes[builds[0]["spec"]["nodeName"]]
    assert build_node["metadata"]["labels"][NODEPOOL_LABEL] == CPU_POOL
    for pod in tritons:
        node = nodes[pod["spec"]["nodeName"]]
        labels = node["metadata"]["labels"]
        assert labels[NODEPOOL_LABEL] == GPU_POOL
        assert labels[INSTANCE_TYPE_LABEL] == L4_KIND
        assert labels[GPU_PRODUCT_LABEL] == PRODUCT
        assert (labels["nvidia.com/gpu.compute.major"], labels["nvidia.com/gpu.compute.minor"]) == ("8", "9")
        assert node["status"]["capacity"][GPU_RESOURCE] == "1"
        assert GPU_TAINT in node["spec"].get("taints", [])
        assert _time(node["metadata"]["creationTimestamp"]) >= applied_wall.replace(microsecond=0)

    # Each NodeClaim Karpenter made has its node registered and initialized.
    claims = _items(cp, "nodeclaims")
    assert len(claims) == 2, [claim["metadata"]["name"] for claim in claims]
    for claim in claims:
        conditions = {cond["type"]: cond["status"] for cond in claim["status"].get("conditions") or ()}
        assert conditions.get("Registered") == "True" and conditions.get("Initialized") == "True", conditions

    waited = {
        kind: (_time(_scheduled_at(pod) or "") - _time(pod["metadata"]["creationTimestamp"])).total_seconds()
        for kind, pod in (("build", builds[0]), ("triton", tritons[0]))
    }
    print(
        f"\nautoscaler: apply -> Ready {took:.1f} s; waiting for nodes (pod created -> scheduled, "
        f"1 s resolution): build {waited['build']:.0f} s, triton {waited['triton']:.0f} s; "
        f"Karpenter pid {karpenter.pid}"
    )
