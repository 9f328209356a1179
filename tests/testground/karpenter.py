"""Karpenter on the test ground: a real autoscaler that adds GPU nodes when pods are Pending.

What runs is Karpenter's core (provisioning, registration, disruption) with
the kwok cloud provider it carries in its own module, built from the pinned
``sigs.k8s.io/karpenter`` release (``testground.binaries.ensure_karpenter``)
the first time it is asked for. Its CRDs come from the same module: NodePool,
NodeClaim (and the other ``karpenter.sh`` kinds) and the provider's
KWOKNodeClass.

The provider "launches" an instance by creating its Node object; the node
agent, started with ``adopt_instance_types`` (``testground.nodeagent_adopt``),
is that machine's kubelet: it posts the Node's status, renews its Lease and
runs its pods as local processes. kwok itself (the kubelet faker) never runs
here, so exactly one thing plays each node's kubelet.

The instance types are ours (``tools/karpenter/instance_types.json``, the
provider's format): CPU kinds and GPU kinds whose offerings carry GPU feature
discovery's labels (``nvidia.com/gpu.product``, ``.compute.major``/``.minor``,
``.count``, ``.present``), so a pod's ``nodeSelector`` on a GPU product picks
the kind, and ``nvidia.com/gpu`` in their resources. Two NodePools: ``cpu``
(CPU kinds) and ``gpu`` (GPU kinds, tainted ``nvidia.com/gpu=present:NoSchedule``
as GPU pools usually are).

Karpenter runs as its own ServiceAccount with the RBAC of its module's chart
(``kwok/charts``: its ClusterRoles, Roles and bindings, rendered with the test
ground's helm), not as admin, and without leader election.

Nodes of both pools are removed once empty (``consolidationPolicy:
WhenEmpty``); the CPU pool's after 10 s, the GPU pool's as the pool given
says (the autoscaler test gives the README's).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from testground.binaries import KARPENTER_VERSION, ensure_karpenter, karpenter_module_dir
from testground.chart import render_chart, to_yaml
from testground.controlplane import Component, free_port, log
from testground.nodeagent_nodes import GPU_TAINT

if TYPE_CHECKING:
    from testground.controlplane import ControlPlane

INSTANCE_TYPES_FILE = Path(__file__).resolve().parent / "tools" / "karpenter" / "instance_types.json"
#: The CRDs of the module, relative to its root.
CRD_FILES = (
    "pkg/apis/crds/karpenter.sh_nodepools.yaml",
    "pkg/apis/crds/karpenter.sh_nodeclaims.yaml",
    "pkg/apis/crds/karpenter.sh_nodeoverlays.yaml",
    "pkg/apis/crds/autoscaling.x-k8s.io_capacitybuffers.yaml",
    "kwok/apis/crds/karpenter.kwok.sh_kwoknodeclasses.yaml",
)
NODE_CLASS = "default"
#: Where Karpenter "is installed": its ServiceAccount and Roles, and its SYSTEM_NAMESPACE.
KARPENTER_NAMESPACE = "kube-system"
KARPENTER_RELEASE = "karpenter"
#: Karpenter's RBAC in its module's chart for the kwok provider, relative to the module's root.
CHART_DIR = "kwok/charts"
RBAC_TEMPLATES = (
    "templates/serviceaccount.yaml",
    "templates/clusterrole.yaml",
    "templates/clusterrole-kwok.yaml",
    "templates/role.yaml",
    "templates/rolebinding.yaml",
)
CPU_POOL, GPU_POOL = "cpu", "gpu"
READY_TIMEOUT = 60.0


def instance_types() -> list[dict[str, Any]]:
    return list(json.loads(INSTANCE_TYPES_FILE.read_text()))


def _is_gpu_kind(item: dict[str, Any]) -> bool:
    return "nvidia.com/gpu" in (item.get("resources") or {})


def node_class_object() -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.kwok.sh/v1alpha1",
        "kind": "KWOKNodeClass",
        "metadata": {"name": NODE_CLASS},
        "spec": {},
    }


#: The test ground's CPU pool: a node that ran a build and holds nothing else goes 10 s later.
CPU_DISRUPTION = {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10s"}


def node_pool_object(
    name: str, kinds: list[str], taints: list[dict[str, str]], disruption: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "karpenter.sh/v1",
        "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "nodeClassRef": node_class_ref(),
                    "requirements": [
                        {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": kinds}
                    ],
                    "taints": taints,
                    "expireAfter": "Never",
                }
            },
            "disruption": dict(disruption),
        },
    }


def node_class_ref() -> dict[str, str]:
    """What a NodePool names its node class by; the one thing of a pool that is the cloud's."""
    return {"group": "karpenter.kwok.sh", "kind": "KWOKNodeClass", "name": NODE_CLASS}


def gpu_kinds() -> list[str]:
    return [item["name"] for item in instance_types() if _is_gpu_kind(item)]


def node_pools(gpu_pool: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The ``cpu`` pool, and ``gpu_pool`` (a user's, the README's) or a GPU pool of our own."""
    cpu = [item["name"] for item in instance_types() if not _is_gpu_kind(item)]
    if gpu_pool is None:
        gpu_pool = node_pool_object(GPU_POOL, gpu_kinds(), [dict(GPU_TAINT)], CPU_DISRUPTION)
    return [node_pool_object(CPU_POOL, cpu, [], CPU_DISRUPTION), gpu_pool]


def install_crds(cp: ControlPlane) -> None:
    root = karpenter_module_dir()
    cp.install_crds([root / name for name in CRD_FILES])


def rbac_objects() -> list[dict[str, Any]]:
    """Karpenter's ServiceAccount, ClusterRoles, Roles and bindings, as its chart renders them."""
    return render_chart(
        chart=karpenter_module_dir() / CHART_DIR,
        namespace=KARPENTER_NAMESPACE,
        release=KARPENTER_RELEASE,
        include_crds=False,
        show_only=RBAC_TEMPLATES,
    )


def install_identity(cp: ControlPlane, path: Path) -> Path:
    """Karpenter's chart RBAC, applied as admin; a kubeconfig that acts as its ServiceAccount."""
    objects = rbac_objects()
    cp.kubectl("apply", "--server-side", "-f", "-", input=to_yaml(objects))
    (account,) = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "ServiceAccount"]
    return cp.service_account_kubeconfig(KARPENTER_NAMESPACE, account, path=path)


@dataclass
class Karpenter:
    component: Component
    health_port: int

    @property
    def pid(self) -> int | None:
        return self.component.pid

    def log_text(self) -> str:
        try:
            return self.component.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _healthy(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def start_karpenter(
    cp: ControlPlane, workdir: Path, gpu_pool: dict[str, Any] | None = None
) -> Iterator[Karpenter]:
    """Install Karpenter's CRDs, our node class and pools (``gpu_pool`` for the GPU one, when
    given), run Karpenter until the block exits."""
    workdir = Path(workdir).resolve()
    binary = ensure_karpenter(log=log)
    install_crds(cp)
    docs = [node_class_object(), *node_pools(gpu_pool)]
    cp.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    kubeconfig = install_identity(cp, workdir / "karpenter.kubeconfig")
    metrics_port, health_port = free_port(), free_port()
    env = {
        **cp.env(),
        "KUBECONFIG": str(kubeconfig),
        "SYSTEM_NAMESPACE": KARPENTER_NAMESPACE,
        "INSTANCE_TYPES_FILE_PATH": str(INSTANCE_TYPES_FILE),
    }
    argv = [
        str(binary),
        "--disable-leader-election=true",
        f"--metrics-port={metrics_port}",
        f"--health-probe-port={health_port}",
        "--log-level=debug",
        # Pending pods are batched for a second after the last one arrives (the default), at most 10 s.
        "--batch-idle-duration=1s",
    ]
    component = Component("karpenter", argv, workdir / "logs" / "karpenter.log", env=env)
    try:
        component.start()
        log(f"started Karpenter {KARPENTER_VERSION} (pid {component.pid}), log {component.log_path}")
        started = time.monotonic()
        while not _healthy(health_port):
            if not component.running():
                raise RuntimeError(f"Karpenter exited:\n{component.log_tail()}")
            if time.monotonic() - started > READY_TIMEOUT:
                raise TimeoutError(
                    f"Karpenter not ready after {READY_TIMEOUT:.0f} s:\n{component.log_tail()}"
                )
            time.sleep(0.5)
        log(f"Karpenter ready in {time.monotonic() - started:.1f} s")
        yield Karpenter(component, health_port)
    finally:
        component.stop()
