"""Nodes the agent did not register but plays the kubelet of: machines an autoscaler added.

Karpenter's kwok cloud provider (``testground.karpenter``) "launches" an
instance by creating its Node object, with a ``kwok://`` provider ID, the
instance type's labels and Karpenter's ``karpenter.sh/unregistered`` taint,
and then waits for that machine's kubelet to report in, as it does on a real
cloud. Here the node agent is that kubelet: it adopts every such Node, posts
its status (capacity of the instance type, Ready, addresses), renews its Lease
and runs the pods bound to it, exactly as for the nodes it registers itself.
Labels and taints stay Karpenter's: a kubelet whose Node already exists does
not rewrite them.

What the machine has comes from the same instance-type file Karpenter reads
(the kwok provider's JSON format): a real kubelet reads its hardware, here
the file is the hardware. A GPU kind's GPU product and compute capability are
the GPU feature discovery labels its offerings carry.

kwok itself never runs next to this (it would play the same nodes' kubelet):
the nodes carry kwok's ``kwok.x-k8s.io/node`` annotation only because the
provider sets it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testground.nodeagent_nodes import (
    GPU_COMPUTE_MAJOR_LABEL,
    GPU_COMPUTE_MINOR_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    INSTANCE_TYPE_LABEL,
    NodeSpec,
)

#: The provider ID prefix of the nodes Karpenter's kwok provider creates.
KWOK_PROVIDER_PREFIX = "kwok://"
#: Karpenter labels every node of a NodePool with the pool's name.
NODEPOOL_LABEL = "karpenter.sh/nodepool"


def load_instance_types(path: Path) -> dict[str, dict[str, Any]]:
    """The instance types of a kwok-provider file, by name."""
    return {item["name"]: item for item in json.loads(path.read_text())}


def offering_labels(instance_type: Mapping[str, Any]) -> dict[str, str]:
    """Labels every offering of an instance type pins to one value (GPU feature discovery's, say)."""
    shared: dict[str, str] | None = None
    for offering in instance_type.get("offerings") or ():
        pinned = {
            req["key"]: req["values"][0]
            for req in offering.get("Requirements") or ()
            if req.get("operator") == "In" and len(req.get("values") or ()) == 1
        }
        shared = pinned if shared is None else {k: v for k, v in shared.items() if pinned.get(k) == v}
    return shared or {}


def is_adoptable(node: Mapping[str, Any]) -> bool:
    """A Node an autoscaler's kwok provider created (a NodePool's), not one of ours."""
    meta = node.get("metadata") or {}
    provider_id = str((node.get("spec") or {}).get("providerID") or "")
    return provider_id.startswith(KWOK_PROVIDER_PREFIX) and NODEPOOL_LABEL in (meta.get("labels") or {})


def adopted_spec(
    node: Mapping[str, Any],
    instance_types: Mapping[str, Mapping[str, Any]],
    standin_tensorrt: bool = False,
) -> NodeSpec | None:
    """The machine behind an adoptable Node, from its instance type; None for an unknown type.

    ``standin_tensorrt``: its builder pods run with the STAND-IN TensorRT, as an emulated GPU
    node's can (``NodeSpec.standin_tensorrt``)."""
    name = node["metadata"]["name"]
    type_name = (node["metadata"].get("labels") or {}).get(INSTANCE_TYPE_LABEL, "")
    instance_type = instance_types.get(type_name)
    if instance_type is None:
        return None
    resources = instance_type.get("resources") or {}
    labels = offering_labels(instance_type)
    gpus = int(resources.get(GPU_RESOURCE, 0))
    return NodeSpec(
        name=name,
        gpu_product=labels.get(GPU_PRODUCT_LABEL, "") if gpus else "",
        compute_major=int(labels.get(GPU_COMPUTE_MAJOR_LABEL, 0)) if gpus else 0,
        compute_minor=int(labels.get(GPU_COMPUTE_MINOR_LABEL, 0)) if gpus else 0,
        gpus=gpus,
        cpu=str(resources.get("cpu", "4")),
        memory=str(resources.get("memory", "16Gi")),
        pods=int(resources.get("pods", 110)),
        instance_type=type_name,
        standin_tensorrt=standin_tensorrt,
    )
