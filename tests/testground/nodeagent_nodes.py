"""What the emulated nodes and their storage look like to the API server.

Pure builders of the objects the node agent registers: the Node objects of
emulated GPU (and CPU) machines with the labels NVIDIA's GPU feature discovery
puts on real ones, their heartbeat Leases, and the ``testground`` StorageClass
with the PersistentVolumes the agent provisions for it. Other test-ground
modules and tests import the names from here (re-exported by
``testground.nodeagent``) instead of repeating label strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_COMPUTE_MAJOR_LABEL = "nvidia.com/gpu.compute.major"
GPU_COMPUTE_MINOR_LABEL = "nvidia.com/gpu.compute.minor"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"
HOSTNAME_LABEL = "kubernetes.io/hostname"
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
#: The taint GPU node pools usually carry; pods that want a GPU tolerate it.
GPU_TAINT: dict[str, str] = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: Nodes whose pods run on the pod network (testground.network) carry it, so only pods that
#: ask for that network land there.
POD_NETWORK_TAINT: dict[str, str] = {"key": "testground.tritonresnet.io/pod-network", "effect": "NoSchedule"}
POD_NETWORK_TOLERATION: dict[str, str] = {
    "key": "testground.tritonresnet.io/pod-network",
    "operator": "Exists",
    "effect": "NoSchedule",
}
#: Marks the nodes (and volumes) this agent owns, so a second run finds its own.
AGENT_LABEL = "testground.tritonresnet.io/node-agent"

STORAGE_CLASS = "testground"
PROVISIONER = "testground.tritonresnet.io/local"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
PROVISIONED_BY_ANNOTATION = "pv.kubernetes.io/provisioned-by"
#: Set on a PVC by the PV controller when an external provisioner must act.
STORAGE_PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)

NODE_LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_SECONDS = 40
#: How often the agent renews leases (a kubelet renews every 10 s).
LEASE_RENEW_SECONDS = 10.0
#: The kubelet version the emulated nodes report.
KUBELET_VERSION = "v1.36.0-testground"


@dataclass(frozen=True)
class NodeSpec:
    """One emulated machine. ``gpu_product`` empty means a CPU-only node."""

    name: str
    gpu_product: str = ""
    compute_major: int = 0
    compute_minor: int = 0
    gpus: int = 0
    cpu: str = "16"
    memory: str = "64Gi"
    pods: int = 110
    instance_type: str = "m5.4xlarge"
    #: On the pod network: tainted with POD_NETWORK_TAINT, its InternalIP the network's node address.
    internal_ip: str = "127.0.0.1"
    pod_network: bool = False
    #: On the pod network: this node's block of the pod range (``spec.podCIDR``), which its pods'
    #: addresses come from, as node IPAM hands each node a block; empty: the whole range.
    pod_cidr: str = ""
    #: Builder pods here run with the STAND-IN TensorRT (testground.standin_tensorrt), for tests
    #: of what happens around a plan; no Triton can load what it writes.
    standin_tensorrt: bool = False

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpu_product) and self.gpus > 0

    @property
    def compute_capability(self) -> str:
        return f"{self.compute_major}.{self.compute_minor}"


def gpu_node(
    name: str, product: str, major: int, minor: int, instance_type: str, *, standin_tensorrt: bool = False
) -> NodeSpec:
    return NodeSpec(
        name=name,
        gpu_product=product,
        compute_major=major,
        compute_minor=minor,
        gpus=2,
        instance_type=instance_type,
        standin_tensorrt=standin_tensorrt,
    )


A10G_PRODUCT = "NVIDIA-A10G"
T4_PRODUCT = "Tesla-T4"
CPU_NODE = "cpu-0"

#: Three A10G nodes (compute 8.6), one T4 (7.5) and one CPU-only node for CPU pods.
DEFAULT_NODES: tuple[NodeSpec, ...] = (
    *(gpu_node(f"gpu-a10g-{i}", A10G_PRODUCT, 8, 6, "g5.12xlarge") for i in range(3)),
    gpu_node("gpu-t4-0", T4_PRODUCT, 7, 5, "g4dn.12xlarge"),
    NodeSpec(name=CPU_NODE),
)


def nodes_to_json(nodes: Sequence[NodeSpec]) -> str:
    return json.dumps([asdict(node) for node in nodes])


def nodes_from_json(text: str) -> tuple[NodeSpec, ...]:
    return tuple(NodeSpec(**item) for item in json.loads(text))


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A MicroTime, the format Lease.spec.renewTime requires."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_labels(node: NodeSpec, agent: str) -> dict[str, str]:
    labels = {
        HOSTNAME_LABEL: node.name,
        INSTANCE_TYPE_LABEL: node.instance_type,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        AGENT_LABEL: agent,
    }
    if node.has_gpu:
        labels |= {
            GPU_PRESENT_LABEL: "true",
            GPU_PRODUCT_LABEL: node.gpu_product,
            GPU_COMPUTE_MAJOR_LABEL: str(node.compute_major),
            GPU_COMPUTE_MINOR_LABEL: str(node.compute_minor),
            GPU_COUNT_LABEL: str(node.gpus),
        }
    return labels


def node_capacity(node: NodeSpec) -> dict[str, str]:
    capacity = {"cpu": node.cpu, "memory": node.memory, "pods": str(node.pods), "ephemeral-storage": "100Gi"}
    if node.has_gpu:
        capacity[GPU_RESOURCE] = str(node.gpus)
    return capacity


def node_taints(node: NodeSpec) -> list[dict[str, str]]:
    taints = [dict(GPU_TAINT)] if node.has_gpu else []
    return taints + ([dict(POD_NETWORK_TAINT)] if node.pod_network else [])


def node_object(node: NodeSpec, agent: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"taints": node_taints(node)}
    if node.pod_cidr:
        spec |= {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": node_labels(node, agent)},
        "spec": spec,
    }


def node_conditions(heartbeat: str, since: str) -> list[dict[str, str]]:
    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": since,
        }

    return [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "emulated node has memory"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "emulated node has disk"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "emulated node has PIDs"),
        condition("Ready", "True", "KubeletReady", "test-ground node agent is posting ready status"),
    ]


def node_status(node: NodeSpec, heartbeat: str, since: str) -> dict[str, Any]:
    capacity = node_capacity(node)
    return {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": node_conditions(heartbeat, since),
        "addresses": [
            {"type": "InternalIP", "address": node.internal_ip},
            {"type": "Hostname", "address": node.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": "amd64",
            "operatingSystem": "linux",
            "osImage": "tritonresnet test ground",
            "kernelVersion": "",
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "containerRuntimeVersion": "testground://local-process",
            "machineID": node.name,
            "systemUUID": node.name,
            "bootID": node.name,
        },
    }


def node_lease(node_name: str, node_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node_name,
            "namespace": NODE_LEASE_NAMESPACE,
            # As the kubelet does: the lease goes away with its node.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}],
        },
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now_micro(),
        },
    }


def storage_class_object() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": True,
    }


def claim_wants_us(claim: dict[str, Any]) -> bool:
    """A Pending, unbound PVC of our class (or of no class) that we should provision."""
    spec = claim.get("spec", {})
    annotations = claim["metadata"].get("annotations") or {}
    if spec.get("volumeName") or claim.get("status", {}).get("phase", "Pending") != "Pending":
        return False
    if claim["metadata"].get("deletionTimestamp"):
        return False
    if any(annotations.get(key) == PROVISIONER for key in STORAGE_PROVISIONER_ANNOTATIONS):
        return True
    return spec.get("storageClassName") in (None, STORAGE_CLASS)


def volume_name_for(claim: dict[str, Any]) -> str:
    # external-provisioner's convention: the PV is named after the claim's UID.
    return f"pvc-{claim['metadata']['uid']}"


def persistent_volume_object(claim: dict[str, Any], path: str, agent: str) -> dict[str, Any]:
    spec = claim.get("spec", {})
    request = (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")
    meta = claim["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name_for(claim),
            "labels": {AGENT_LABEL: agent},
            "annotations": {PROVISIONED_BY_ANNOTATION: PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": request},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": path, "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def volume_path_of(volume: dict[str, Any]) -> str | None:
    """The local folder behind a PV: its hostPath or local path."""
    spec = volume.get("spec", {})
    for kind in ("hostPath", "local"):
        if spec.get(kind, {}).get("path"):
            return str(spec[kind]["path"])
    return None
