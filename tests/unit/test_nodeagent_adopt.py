"""The node agent's adoption of autoscaler-made nodes (testground.nodeagent_adopt): pure rules."""

from __future__ import annotations

from typing import Any

from testground.karpenter import INSTANCE_TYPES_FILE, node_pools
from testground.nodeagent_adopt import adopted_spec, is_adoptable, load_instance_types, offering_labels
from testground.nodeagent_nodes import GPU_TAINT, node_capacity


def karpenter_node(name: str, instance_type: str, provider_id: str = "kwok://x") -> dict[str, Any]:
    labels = {"node.kubernetes.io/instance-type": instance_type, "karpenter.sh/nodepool": "gpu"}
    return {"metadata": {"name": name, "uid": "u", "labels": labels}, "spec": {"providerID": provider_id}}


def test_only_kwok_provider_nodes_of_a_node_pool_are_adopted() -> None:
    assert is_adoptable(karpenter_node("a", "g6.xlarge"))
    assert not is_adoptable(karpenter_node("a", "g6.xlarge", provider_id="aws:///i-1"))
    assert not is_adoptable({"metadata": {"name": "gpu-a10g-0", "labels": {}}, "spec": {}})


def test_a_gpu_kind_becomes_a_node_spec_with_its_gpu_feature_discovery_labels() -> None:
    kinds = load_instance_types(INSTANCE_TYPES_FILE)
    spec = adopted_spec(karpenter_node("n", "g6.12xlarge"), kinds)
    assert spec is not None
    assert (spec.gpu_product, spec.compute_capability, spec.gpus) == ("NVIDIA-L4", "8.9", 4)
    assert node_capacity(spec)["nvidia.com/gpu"] == "4"
    assert node_capacity(spec)["cpu"] == "48"
    cpu = adopted_spec(karpenter_node("c", "c5.xlarge"), kinds)
    assert cpu is not None and not cpu.has_gpu
    assert adopted_spec(karpenter_node("x", "no-such-kind"), kinds) is None


def test_offering_labels_keep_only_what_every_offering_pins() -> None:
    def offering(**labels: str) -> dict[str, Any]:
        return {"Requirements": [{"key": k, "operator": "In", "values": [v]} for k, v in labels.items()]}

    kind = {"offerings": [offering(a="1", zone="x"), offering(a="1", zone="y")]}
    assert offering_labels(kind) == {"a": "1"}


def test_the_gpu_pool_is_tainted_and_offers_only_gpu_kinds() -> None:
    pools = {pool["metadata"]["name"]: pool["spec"]["template"]["spec"] for pool in node_pools()}
    assert pools["gpu"]["taints"] == [GPU_TAINT] and pools["cpu"]["taints"] == []
    kinds = load_instance_types(INSTANCE_TYPES_FILE)
    (gpu_kinds,) = (req["values"] for req in pools["gpu"]["requirements"])
    assert gpu_kinds and all("nvidia.com/gpu" in kinds[name]["resources"] for name in gpu_kinds)
