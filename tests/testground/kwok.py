"""kwok against the test ground: fake nodes whose pods finish at once, with no process behind them.

For benchmarks that measure the operator alone (``benchmarks/operator_scale.py``):
the node agent runs every builder pod as a real Python process, which at
thousands of resources costs more CPU than everything else; kwok's stage
controller instead moves each pod through its lifecycle by patching its
status. kwok is built from its pinned Go module (``testground.binaries.ensure_kwok``)
only when this module is used.

kwok ships no default stages, so it runs with ``--config``:

* kwok's own stage files, read from its module in the Go module cache
  (:data:`STOCK_STAGES`): nodes become Ready and keep a heartbeat lease, pods
  become Running and Ready once bound, deleted pods go;
* ours (``tools/kwok/stages/``): a builder Job pod ends Succeeded with the
  builder's JSON result in its termination message, which the operator reads
  to move on (kwok's stock pod-complete stage leaves the message empty).

The nodes look like the node agent's (the same GPU feature discovery labels,
``nvidia.com/gpu`` capacity and taint) but are much larger, since nothing runs
on them and thousands of pods must fit. kwok manages only nodes that carry
:data:`FAKE_NODE_ANNOTATION`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from testground.binaries import ensure_kwok, kwok_module_dir
from testground.controlplane import Component, log
from testground.nodeagent_nodes import DEFAULT_NODES, GPU_TAINT, NodeSpec, node_capacity, node_labels

if TYPE_CHECKING:
    from testground.controlplane import ControlPlane

FAKE_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
#: Written into the nodes' agent label, so they are told apart from the node agent's.
AGENT_NAME = "kwok"
#: kwok's stage files used as they are, relative to the module's kustomize/stage.
STOCK_STAGES = (
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-delete.yaml",
)
OUR_STAGES_DIR = Path(__file__).resolve().parent / "tools" / "kwok" / "stages"
#: The lease kwok keeps for each node (a kubelet's default), which the heartbeat stage expects.
NODE_LEASE_SECONDS = 40
#: kwok hands out pod IPs from this range; its default (a /24) runs out after 254 live pods.
POD_CIDR = "10.128.0.0/12"
#: Room for thousands of builder pods per node: scheduling must never be what limits a run.
FAKE_CPU, FAKE_MEMORY, FAKE_PODS = "4000", "16Ti", 20000

NODES_READY_TIMEOUT = 60.0


def fake_nodes(nodes: Sequence[NodeSpec] = DEFAULT_NODES) -> tuple[NodeSpec, ...]:
    """The node agent's node shapes, enlarged."""
    return tuple(replace(n, cpu=FAKE_CPU, memory=FAKE_MEMORY, pods=FAKE_PODS) for n in nodes)


def node_manifest(node: NodeSpec) -> dict[str, Any]:
    """A Node as kwok expects it: our annotation, and the capacity in the status it keeps."""
    capacity = node_capacity(node)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": node_labels(node, AGENT_NAME) | {"type": "kwok"},
            "annotations": {FAKE_NODE_ANNOTATION[0]: FAKE_NODE_ANNOTATION[1]},
        },
        "spec": {"taints": [dict(GPU_TAINT)] if node.has_gpu else []},
        # The API server keeps the status of a created Node; kwok's node-initialize
        # stage copies capacity and allocatable from it.
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def stage_files() -> list[Path]:
    stock = kwok_module_dir() / "kustomize" / "stage"
    files = [stock / name for name in STOCK_STAGES]
    files += sorted(OUR_STAGES_DIR.glob("*.yaml"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"kwok stage files not found: {', '.join(missing)}")
    return files


def kwok_component(cp: ControlPlane, workdir: Path, binary: Path, stages: Sequence[Path]) -> Component:
    annotation = "=".join(FAKE_NODE_ANNOTATION)
    argv = [
        str(binary),
        f"--kubeconfig={cp.kubeconfig}",
        f"--manage-nodes-with-annotation-selector={annotation}",
        f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
        f"--cidr={POD_CIDR}",
        # kwok's own HTTP server (logs, exec, metrics) is not needed: nothing calls it.
        "--server-address=",
        *(f"--config={stage}" for stage in stages),
    ]
    return Component("kwok", argv, workdir / "logs" / "kwok.log")


def _ready_nodes(cp: ControlPlane, names: set[str]) -> set[str]:
    from kubernetes import client

    with cp.api_client() as api:
        items = client.CoreV1Api(api).list_node().items
    ready = set()
    for node in items:
        for cond in node.status.conditions or ():
            if cond.type == "Ready" and cond.status == "True":
                ready.add(node.metadata.name)
    return ready & names


@contextlib.contextmanager
def start_kwok(
    cp: ControlPlane, workdir: Path, nodes: Sequence[NodeSpec] | None = None
) -> Iterator[Component]:
    """Run kwok for ``nodes`` (default: :func:`fake_nodes`) until the block exits; wait for them Ready."""
    from kubernetes import client

    specs = tuple(nodes) if nodes is not None else fake_nodes()
    workdir = Path(workdir).resolve()
    component = kwok_component(cp, workdir, ensure_kwok(log=log), stage_files())
    try:
        component.start()
        log(f"started kwok (pid {component.pid}), log {component.log_path}")
        with cp.api_client() as api:
            core = client.CoreV1Api(api)
            for spec in specs:
                core.create_node(node_manifest(spec))
        started = time.monotonic()
        wanted = {n.name for n in specs}

        while _ready_nodes(cp, wanted) != wanted:
            if not component.running():
                tail = component.log_tail()
                raise RuntimeError(f"kwok exited; last lines of {component.log_path}:\n{tail}")
            if time.monotonic() - started > NODES_READY_TIMEOUT:
                raise TimeoutError(f"kwok's nodes not Ready after {NODES_READY_TIMEOUT:.0f} s")
            time.sleep(0.5)
        log(f"kwok: {len(specs)} fake nodes Ready in {time.monotonic() - started:.1f} s")
        yield component
    finally:
        component.stop()
