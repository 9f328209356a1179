"""From zero nodes to Ready: Karpenter adds the nodes a TritonResNet's pods wait for.

A cluster of its own (this module's control plane) that starts with no node
at all. Real: the control plane, Karpenter's core (``sigs.k8s.io/karpenter``,
built from its module) with its kwok cloud provider and its CRDs, run as its
ServiceAccount with its chart's RBAC, the operator (as its ServiceAccount),
the builder and tritonserver processes.
Stand-ins: the cloud (the kwok provider "launches" an instance by creating
its Node object, from our instance-type file) and the machines' kubelets (the
node agent adopts those Nodes, ``testground.nodeagent_adopt``); serving runs
through the stand-in onnxruntime backend; builder pods on the adopted GPU nodes
run with the STAND-IN TensorRT (only the fleet test has GPU builds).

The resource is an ONNX model served on ``NVIDIA-L4``, a GPU kind no node has.
Its build is the operator's CPU build (an ONNX model needs no GPU to be
prepared; the test ground has no TensorRT for a GPU build), so its pod
waits for a node of the ``cpu`` pool; then Triton's pod waits for an L4 node
of the ``gpu`` pool, which Karpenter picks by the GPU feature discovery label
the pod selects (a cheaper T4 kind is on offer too).

Then back down: Triton scales to 3 replicas (two more L4 nodes), then to 1,
and the nodes that hold nothing go. The GPU NodePool is the README's
("Cluster autoscaler / Karpenter"), read from it and applied with only its
``nodeClassRef`` replaced by the kwok provider's class.

The times printed (apply -> Ready, how much of it went to waiting for nodes,
scale to 1 -> extra nodes gone) are measurements, never assertions.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.binaries import KARPENTER_VERSION, ensure_karpenter
from testground.controlplane import ControlPlane, log, start_control_plane
from testground.following_client import FollowingClient
from testground.karpenter import (
    CPU_POOL,
    GPU_POOL,
    INSTANCE_TYPES_FILE,
    Karpenter,
    gpu_kinds,
    node_class_ref,
    start_karpenter,
)
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
    wait_for_trn,
)
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for
from tritonresnet.api import names
from tritonresnet.controller import fleet

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow, pytest.mark.builds("karpenter")]

NAME = "scaled-up"
NAMESPACE = "autoscaled"
PRODUCT = "NVIDIA-L4"
#: The kind Karpenter should pick for one L4: the cheapest GPU kind with that product.
L4_KIND = "g6.xlarge"
#: Build, two scale-ups and Triton's start on two shared cores, with room.
READY_TIMEOUT = 600.0
#: Replicas before the scale-down: two more L4 nodes.
PEAK_REPLICAS = 3
#: The GPU pool's consolidateAfter (the README's, 1 min), Karpenter's disruption passes
#: (every 10 s) and its default budget (10 % of the pool's nodes, so one at a time), with room.
SCALE_DOWN_TIMEOUT = 480.0
#: Seconds of traffic on the one replica left once the extra nodes are gone.
TRAFFIC_AFTER = 5.0

README = Path(__file__).resolve().parents[2] / "README.md"
#: The marker before the README's GPU NodePool block.
NODEPOOL_MARKER = "<!-- karpenter-nodepool -->"


def readme_gpu_pool(text: str) -> dict[str, Any]:
    """The README's GPU NodePool, with the test ground's node class in its ``nodeClassRef``."""
    found = re.search(re.escape(NODEPOOL_MARKER) + r"\s*```yaml\n(?P<body>.*?)\n```", text, re.DOTALL)
    if found is None:
        raise ValueError(f"README.md has no ```yaml block after {NODEPOOL_MARKER}")
    pool = yaml.safe_load(found.group("body"))
    pool["spec"]["template"]["spec"]["nodeClassRef"] = node_class_ref()
    return dict(pool)


def test_readme_gpu_pool_is_the_pool_the_test_ground_needs() -> None:
    """The README's block: the GPU pool name, our GPU kinds, the GPU taint, WhenEmpty."""
    pool = readme_gpu_pool(README.read_text())
    template = pool["spec"]["template"]["spec"]
    assert pool["metadata"]["name"] == GPU_POOL
    assert template["taints"] == [GPU_TAINT]
    (requirement,) = template["requirements"]
    assert requirement["key"] == INSTANCE_TYPE_LABEL and sorted(requirement["values"]) == sorted(gpu_kinds())
    assert pool["spec"]["disruption"]["consolidationPolicy"] == "WhenEmpty"
    assert template["nodeClassRef"] == node_class_ref()


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
        start_node_agent(
            cp,
            workdir / "nodes",
            nodes=(),
            adopt_instance_types=INSTANCE_TYPES_FILE,
            adopt_standin_tensorrt=True,
        ),
        start_karpenter(cp, workdir / "karpenter", gpu_pool=readme_gpu_pool(README.read_text())) as karpenter,
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


def _initialized(claim: dict[str, Any]) -> bool:
    conditions = {
        cond["type"]: cond["status"] for cond in (claim.get("status") or {}).get("conditions") or ()
    }
    return conditions.get("Registered") == "True" and conditions.get("Initialized") == "True"


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
    # Every pod, node and NodeClaim seen on the way, by name: the build pod may be gone once
    # its Job is done, and the CPU node with it (its pool consolidates it once it is empty).
    seen: dict[str, dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    claims: dict[str, dict[str, Any]] = {}

    def ready() -> dict[str, Any] | None:
        for pod in _items(cp, "pods", "-n", NAMESPACE):
            seen[pod["metadata"]["name"]] = pod
        nodes.update((node["metadata"]["name"], node) for node in _items(cp, "nodes"))
        for claim in _items(cp, "nodeclaims"):
            known = claims.setdefault(claim["metadata"]["name"], claim)
            if _initialized(claim) or not _initialized(known):
                claims[claim["metadata"]["name"]] = claim
        trn = get_trn(cp, NAMESPACE, NAME)
        return trn if is_ready()(trn) else None

    try:
        wait_for(ready, f"{NAME} to become Ready", READY_TIMEOUT, every=1.0)
    except WaitTimeout as error:
        tail = f"operator log tail:\n{operator.log_text()[-3000:]}\nKarpenter log tail:\n"
        raise error.with_detail(tail + karpenter.log_text()[-3000:]) from None
    took = time.monotonic() - applied

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

    # Each NodeClaim Karpenter made had its node registered and initialized.
    assert len(claims) == 2, sorted(claims)
    for claim in claims.values():
        assert _initialized(claim), claim.get("status")

    # Karpenter ran as its ServiceAccount with its chart's RBAC: nothing it asked for was refused.
    refused = [line for line in karpenter.log_text().splitlines() if "forbidden" in line.lower()]
    assert not refused, refused[:5]

    waited = {
        kind: (_time(_scheduled_at(pod) or "") - _time(pod["metadata"]["creationTimestamp"])).total_seconds()
        for kind, pod in (("build", builds[0]), ("triton", tritons[0]))
    }
    print(
        f"\nautoscaler: apply -> Ready {took:.1f} s; waiting for nodes (pod created -> scheduled, "
        f"1 s resolution): build {waited['build']:.0f} s, triton {waited['triton']:.0f} s; "
        f"Karpenter pid {karpenter.pid}"
    )


def _triton_pods(cp: ControlPlane) -> list[dict[str, Any]]:
    return _items(cp, "pods", "-n", NAMESPACE, "-l", names.selector(NAME))


def _is_ready_pod(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or ()}
    return conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")


def test_scale_to_one_frees_the_empty_nodes_and_the_last_replica_serves_kwok_provider_and_agent_stand_in(
    autoscaled: tuple[ControlPlane, Karpenter, OperatorProcess],
) -> None:
    """Stand-ins: the kwok cloud provider, the node agent as the nodes' kubelet, and kube-proxy:
    these nodes are not on the pod network (their pods have loopback addresses), so the client
    follows the ready Triton pods itself, as endpoints would (``testground.following_client``);
    the lag of a real Service's endpoints is not in what it sees (tests/e2e/test_drain.py has it).

    After the build, Triton scales to 3 (two more L4 nodes), then to 1: the two nodes left
    empty and the CPU node of the build are removed by Karpenter's consolidation (the README's
    ``WhenEmpty`` pool); the finished build pod and the PDB keep no node; the last replica is
    never evicted and answers every request throughout.
    """
    cp, karpenter, _ = autoscaled
    cp.kubectl("scale", "trn", NAME, "-n", NAMESPACE, f"--replicas={PEAK_REPLICAS}")

    def at_peak() -> list[dict[str, Any]] | None:
        pods = [pod for pod in _triton_pods(cp) if _is_ready_pod(pod)]
        trn = get_trn(cp, NAMESPACE, NAME)
        ready = is_ready()(trn) and trn["status"].get("readyReplicas") == PEAK_REPLICAS
        return pods if ready and len(pods) == PEAK_REPLICAS else None

    try:
        peak = wait_for(at_peak, f"{PEAK_REPLICAS} ready replicas", READY_TIMEOUT, every=1.0)
    except WaitTimeout as error:
        raise error.with_detail(f"Karpenter log tail:\n{karpenter.log_text()[-3000:]}") from None
    peak_nodes = {pod["spec"]["nodeName"] for pod in peak}
    gpu_nodes = [n for n in _items(cp, "nodes") if n["metadata"]["labels"].get(NODEPOOL_LABEL) == GPU_POOL]
    assert {n["metadata"]["name"] for n in gpu_nodes} == peak_nodes, "GPU nodes hold Triton only"
    # Triton's preferred anti-affinity, which Karpenter honours while it can: a node per replica.
    assert len(peak_nodes) == PEAK_REPLICAS, sorted(peak_nodes)

    # What the builds left: Jobs complete (kept for jobTtlSeconds), their pods Completed or,
    # once the CPU node has gone, garbage-collected with it.
    jobs = _items(cp, "jobs", "-n", NAMESPACE)
    assert jobs and all(job["status"].get("succeeded") for job in jobs), [j["status"] for j in jobs]
    finished = [
        f"{pod['metadata']['name']}={pod['status'].get('phase')}@{pod['spec'].get('nodeName')}"
        for pod in _items(cp, "pods", "-n", NAMESPACE)
        if _component(pod) in ("build", "publish")
    ]

    live: list[dict[str, Any]] = []
    with FollowingClient(cp, NAMESPACE, NAME, model_name="resnet18") as client:
        time.sleep(4.0)  # traffic on three replicas first
        scaled = time.monotonic()
        cp.kubectl("scale", "trn", NAME, "-n", NAMESPACE, "--replicas=1")

        def scaled_down() -> bool:
            live[:] = [pod for pod in _triton_pods(cp) if not pod["metadata"].get("deletionTimestamp")]
            node_names = {node["metadata"]["name"] for node in _items(cp, "nodes")}
            claims = _items(cp, "nodeclaims")
            return len(live) == 1 and node_names == {live[0]["spec"]["nodeName"]} and len(claims) == 1

        try:
            wait_for(scaled_down, "the extra nodes to be removed", SCALE_DOWN_TIMEOUT, every=1.0)
        except WaitTimeout as error:
            raise error.with_detail(f"Karpenter log tail:\n{karpenter.log_text()[-4000:]}") from None
        gone = time.monotonic() - scaled
        (survivor,) = live
        served_before = client.served_by[survivor["metadata"]["name"]]
        time.sleep(TRAFFIC_AFTER)
    # The last replica is one of the three at the peak: it was never evicted or replaced.
    assert survivor["metadata"]["uid"] in {pod["metadata"]["uid"] for pod in peak}
    (now,) = _triton_pods(cp)
    assert now["metadata"]["uid"] == survivor["metadata"]["uid"] and _is_ready_pod(now)
    assert client.failures == [], client.failures[:5]
    assert not client.capped
    assert client.served_by[survivor["metadata"]["name"]] > served_before, "it answered after the scale-down"
    assert len(client.served_by) == PEAK_REPLICAS, dict(client.served_by)
    assert is_ready()(get_trn(cp, NAMESPACE, NAME))
    # The PDB the operator made allows one disruption even at one replica: it can be met, so it
    # keeps no node from being drained; consolidation (WhenEmpty) still left the last replica be.
    pdb = json.loads(cp.kubectl("get", "pdb", names.pdb_name(NAME), "-n", NAMESPACE, "-o", "json").stdout)
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["status"]["disruptionsAllowed"] == 1, pdb["status"]
    print(
        f"\nautoscaler scale-down: scale {PEAK_REPLICAS} -> 1 -> extra nodes gone {gone:.1f} s "
        f"(nodes at the peak: {len(peak_nodes)} GPU); requests {client.ok} ok, "
        f"{len(client.failures)} failed; by pod {dict(client.served_by)}; build/publish pods at the "
        f"peak: {finished or 'none left'}"
    )


FLEET = "fleet"
#: A GPU kind no node has when the fleet's first version is out: another workload asks for it.
T4_PRODUCT, T4_KIND, T4_TARGET = "Tesla-T4", "g4dn.xlarge", "sm75"
OTHER_WORKLOAD = "another-gpu-workload"


def _published(version: int) -> Any:
    return lambda trn: ((trn.get("status") or {}).get("published") or {}).get("version") == version


def _gpu_capabilities(cp: ControlPlane) -> set[str]:
    return {
        f"{labels[fleet.COMPUTE_MAJOR_LABEL]}.{labels[fleet.COMPUTE_MINOR_LABEL]}"
        for labels in (node["metadata"]["labels"] for node in _items(cp, "nodes"))
        if fleet.COMPUTE_MAJOR_LABEL in labels
    }


def test_a_gpu_kind_karpenter_adds_for_another_workload_gets_its_plan_in_version_two_standin_tensorrt(
    autoscaled: tuple[ControlPlane, Karpenter, OperatorProcess],
    s3: S3Server,
    onnx_models: OnnxModels,
) -> None:
    """STAND-IN TensorRT and GPUs: the builder pods on the adopted GPU nodes answer the CUDA
    query with the node's GPU kind and write a stand-in plan (``testground.standin_tensorrt``);
    no Triton here could load it, so the resource serves no replica (``replicas: 0``) and is
    never Ready. Stand-ins as above: the kwok cloud provider, the node agent as kubelet.

    ``gpuKinds: Auto`` builds a plan per capability of the GPU nodes present (each build
    Pending until Karpenter adds a node of its kind with a free GPU). Then another workload's
    pod asks for a T4, a kind no node has: Karpenter adds a ``g4dn.xlarge``, the operator sees
    compute capability 7.5 join, builds its plan (on a second T4 node Karpenter adds, the
    first one's GPU being taken) and publishes version 2 with the earlier plans reused.
    """
    cp, karpenter, operator = autoscaled
    before = _gpu_capabilities(cp)
    assert before and "7.5" not in before, before
    uri = s3.upload(onnx_models.path("resnet18"), f"{NAMESPACE}/fleet/model.onnx")
    trn = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": FLEET, "namespace": NAMESPACE},
        "spec": {
            "source": {"uri": uri, "endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
            "model": {"name": "fleetnet", "format": "tensorrt"},
            "engine": {"gpuKinds": "Auto", "maxBatchSize": 4, "workspaceMiB": 1024},
            # A GPU request: the toleration of the GPU pool's taint, so Auto reads its nodes.
            "serving": {"release": "25.01", "replicas": 0, "resources": {"limits": {GPU_RESOURCE: "1"}}},
            "repository": {"claimName": "models"},
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(trn))

    # Every node seen on the way: a node that ran a build is removed a minute after (WhenEmpty).
    nodes: dict[str, dict[str, Any]] = {}

    def is_published(version: int) -> Any:
        def check(trn: dict[str, Any]) -> bool:
            nodes.update((node["metadata"]["name"], node) for node in _items(cp, "nodes"))
            return bool(_published(version)(trn))

        return check

    def published(version: int) -> dict[str, Any]:
        try:
            return wait_for_trn(
                cp, NAMESPACE, FLEET, is_published(version), f"version {version}", READY_TIMEOUT
            )
        except WaitTimeout as error:
            tail = f"operator log tail:\n{operator.log_text()[-3000:]}\nKarpenter log tail:\n"
            raise error.with_detail(tail + karpenter.log_text()[-3000:]) from None

    first = {t["name"]: t for t in published(1)["status"]["targets"]}
    assert {f"{t['name'][2]}.{t['name'][3]}" for t in first.values()} == before, sorted(first)

    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": OTHER_WORKLOAD, "namespace": NAMESPACE},
        "spec": {
            "nodeSelector": {GPU_PRODUCT_LABEL: T4_PRODUCT},
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            # An image the node agent does not run: the pod holds its GPU, waiting.
            "containers": [
                {
                    "name": "work",
                    "image": "example.com/another-gpu-workload:1",
                    "resources": {"limits": {GPU_RESOURCE: "1"}},
                }
            ],
        },
    }
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(other))
    try:
        second = {t["name"]: t for t in published(2)["status"]["targets"]}
        assert sorted(second) == sorted([*first, T4_TARGET]), sorted(second)
        assert {n: t["engineKey"] for n, t in second.items() if n != T4_TARGET} == {
            n: t["engineKey"] for n, t in first.items()
        }, "the earlier plans are reused"
        workload_node = json.loads(
            cp.kubectl("get", "pod", OTHER_WORKLOAD, "-n", NAMESPACE, "-o", "json").stdout
        )["spec"]["nodeName"]
        built_on = second[T4_TARGET]["node"]
        for name in (workload_node, built_on):
            labels = nodes[name]["metadata"]["labels"] if name in nodes else {}
            assert labels.get(NODEPOOL_LABEL) == GPU_POOL and labels.get(INSTANCE_TYPE_LABEL) == T4_KIND, name
        assert second[T4_TARGET]["computeCapability"] == "7.5"
    finally:
        cp.kubectl("delete", "pod", OTHER_WORKLOAD, "-n", NAMESPACE, "--wait=false", check=False)
    print(
        f"\nautoscaler fleet: version 1 plans {sorted(first)}, version 2 plans {sorted(second)}; "
        f"the T4 plan built on {built_on} (a node Karpenter added), the other workload on {workload_node}"
    )
