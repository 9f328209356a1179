"""Emulated GPU nodes: a node agent that plays kubelet for them.

Real kubelets cannot run here (no container runtime), so the test ground
registers Nodes that look like GPU machines (``nvidia.com/gpu`` capacity, GPU
feature discovery labels, the usual taint) and runs one agent process that
keeps them Ready and runs the pods bound to them as local processes:

* ``.../tritonresnet-builder:*``  -> ``python -m tritonresnet_builder <args>`` from this checkout
* ``.../tritonserver:*``          -> the real ``tritonserver`` from nvidia-pytriton, bound to the pod's IP
* ``.../tritonresnet-operator:*`` -> ``python -m tritonresnet operator <args>`` (the image's entry point;
  a ``command`` replaces it) with the pod's ServiceAccount token
* anything else stays Pending, waiting with reason ``ErrImagePull``, as a kubelet that cannot pull it would.

Volumes become local folders and every argument or env value under a
``mountPath`` (and the ``terminationMessagePath``) is rewritten to its folder.
The agent is also the provisioner of the default StorageClass ``testground``.

Each pod gets its own loopback address (127.0.X.Y) as its IP, so pods can all
listen on the same ports. The API server refuses loopback addresses in
EndpointSlices, so a Service's endpoints stay empty here (the controller-manager
logs "may not be in the loopback range"): reach pods by their ``podIP``, as the
operator does.

With ``pod_network`` (a ``testground.network`` spec; the ``pod_network``
fixture) an agent runs each pod in a network namespace of its own instead, with
an address from the pod range, a veth link to the node namespace and a
resolv.conf naming cluster DNS; its Services then get endpoints, which
kube-proxy routes (``testground.clusternet``).
The details live in ``nodeagent_nodes`` (objects), ``nodeagent_pods`` (pure
rules), ``nodeagent_runtime`` (processes, probes, status) and
``nodeagent_daemon`` (the process); this module is the API tests use::

    with start_node_agent(control_plane, tmp_path) as agent:
        agent.volume_path("ns", "claim")      # local folder of a bound PVC
        agent.pod_log("ns", "pod", "triton")  # what a container printed

Run it by hand next to ``python -m testground.controlplane``::

    PYTHONPATH=tests python -m testground.nodeagent --kubeconfig admin.yaml --workdir nodes/
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from testground.controlplane import rss_of
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import (
    A10G_PRODUCT,
    AGENT_LABEL,
    CPU_NODE,
    DEFAULT_NODES,
    GPU_COMPUTE_MAJOR_LABEL,
    GPU_COMPUTE_MINOR_LABEL,
    GPU_COUNT_LABEL,
    GPU_PRESENT_LABEL,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    GPU_TOLERATION,
    INSTANCE_TYPE_LABEL,
    PROVISIONER,
    STORAGE_CLASS,
    T4_PRODUCT,
    NodeSpec,
    gpu_node,
    nodes_to_json,
    volume_path_of,
)
from testground.nodeagent_pods import UNKNOWN_IMAGE_REASON
from testground.nodeagent_runtime import kill_registered_groups, path_key

if TYPE_CHECKING:
    from testground.controlplane import ControlPlane

__all__ = [
    "A10G_PRODUCT",
    "AGENT_LABEL",
    "CPU_NODE",
    "DEFAULT_NODES",
    "GPU_COMPUTE_MAJOR_LABEL",
    "GPU_COMPUTE_MINOR_LABEL",
    "GPU_COUNT_LABEL",
    "GPU_PRESENT_LABEL",
    "GPU_PRODUCT_LABEL",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "GPU_TOLERATION",
    "INSTANCE_TYPE_LABEL",
    "PROVISIONER",
    "STORAGE_CLASS",
    "T4_PRODUCT",
    "UNKNOWN_IMAGE_REASON",
    "NodeAgent",
    "NodeSpec",
    "claim_volume_path",
    "gpu_node",
    "start_node_agent",
]

TESTS_DIR = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 60.0
#: The agent stops its pods' processes (up to 10 s each, in parallel) before exiting.
STOP_GRACE = 30.0
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the agent gets SIGKILL if the test process dies
    without tearing down (its pods' groups are then killed by the next agent)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class NodeAgent:
    """A running node agent process and where it keeps things."""

    kubeconfig: Path
    workdir: Path
    nodes: tuple[NodeSpec, ...]
    #: A testground.network.PodNetworkSpec as JSON: its pods get network namespaces.
    pod_network: Path | None = None
    #: Provide the default StorageClass and its volumes (one agent of a cluster does).
    storage: bool = True
    agent_id: str = "testground"
    #: An instance-type file: also adopt the nodes Karpenter's kwok provider creates (nodeagent_adopt).
    adopt_instance_types: Path | None = None
    #: Builder pods on adopted GPU nodes run with the STAND-IN TensorRT (testground.standin_tensorrt).
    adopt_standin_tensorrt: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        """The agent's own log."""
        return self.workdir / "agent.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the agent process and wait until all its nodes are Ready."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            "-m",
            "testground.nodeagent",
            f"--kubeconfig={self.kubeconfig}",
            f"--workdir={self.workdir}",
            f"--nodes={nodes_to_json(self.nodes)}",
        ]
        if self.pod_network is not None:
            argv.append(f"--pod-network={self.pod_network}")
        if not self.storage:
            argv.append("--no-storage")
        if self.agent_id != "testground":
            argv.append(f"--agent-id={self.agent_id}")
        if self.adopt_instance_types is not None:
            argv.append(f"--adopt={self.adopt_instance_types}")
        if self.adopt_standin_tensorrt:
            argv.append("--adopt-standin-tensorrt")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        kube = Kube(str(self.kubeconfig))
        try:
            while not self._all_ready(kube):
                if not self.running():
                    raise RuntimeError(f"node agent exited during start-up:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nodes not Ready after {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.2)
        finally:
            kube.api.close()

    def _all_ready(self, kube: Kube) -> bool:
        try:
            listing = kube.get("/api/v1/nodes")
            classes = kube.get("/apis/storage.k8s.io/v1/storageclasses")
        except Exception:
            return False
        has_class = any(item["metadata"]["name"] == STORAGE_CLASS for item in classes.get("items", []))
        if self.storage and not has_class:
            return False
        ready = set()
        for node in listing.get("items", []):
            conditions = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions") or []}
            taints = {t["key"] for t in node.get("spec", {}).get("taints") or []}
            if conditions.get("Ready") == "True" and not taints.intersection(NOT_READY_TAINTS):
                ready.add(node["metadata"]["name"])
        return ready.issuperset(self.node_names)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the agent (it stops its pods' processes), SIGKILL after ``grace``;
        then kill any pod process group still registered. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        kill_registered_groups(self.workdir / "run")

    def kill(self) -> None:
        """SIGKILL the agent alone, as a crash would; its pods' processes keep running
        until the next :meth:`start` (or :meth:`stop`) kills the registered groups."""
        process, self.process = self.process, None
        if process is not None:
            process.kill()
            process.wait()

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- what tests look at

    def pod_log_path(self, namespace: str, pod: str, container: str) -> Path:
        """stdout and stderr of every run of a container, appended in order."""
        return self.workdir / "pods" / f"{path_key(namespace, pod)}_{container}.log"

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        try:
            return self.pod_log_path(namespace, pod, container).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def volume_path(self, namespace: str, claim: str) -> Path:
        """The local folder behind a bound PersistentVolumeClaim (raises if it is not bound)."""
        return claim_volume_path(self.kubeconfig, namespace, claim)

    def rss_bytes(self) -> int:
        """Resident memory of the agent process itself (not of its pods)."""
        return rss_of(self.pid) if self.pid is not None else 0


def claim_volume_path(kubeconfig: Path, namespace: str, claim: str) -> Path:
    """The local folder behind a bound PersistentVolumeClaim, found through the API
    (so a test needs only the cluster, not the agent). Raises LookupError when unbound."""
    kube = Kube(str(kubeconfig))
    try:
        pvc = kube.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        name = pvc.get("spec", {}).get("volumeName")
        if not name:
            raise LookupError(f"claim {namespace}/{claim} is not bound")
        path = volume_path_of(kube.get(f"/api/v1/persistentvolumes/{name}"))
    finally:
        kube.api.close()
    if path is None:
        raise LookupError(f"volume {name} of claim {namespace}/{claim} has no local path")
    return Path(path)


@contextlib.contextmanager
def start_node_agent(
    cp: ControlPlane,
    workdir: Path,
    nodes: Sequence[NodeSpec] = DEFAULT_NODES,
    pod_network: Path | None = None,
    storage: bool = True,
    agent_id: str = "testground",
    adopt_instance_types: Path | None = None,
    adopt_standin_tensorrt: bool = False,
) -> Iterator[NodeAgent]:
    """Run the node agent for ``nodes`` against ``cp`` until the block exits.

    ``pod_network``: the spec file of a ``testground.network`` pod network; each
    pod then runs in a network namespace of its own with an address from it.
    """
    agent = NodeAgent(
        kubeconfig=Path(cp.kubeconfig),
        workdir=Path(workdir).resolve(),
        nodes=tuple(nodes),
        pod_network=pod_network,
        storage=storage,
        agent_id=agent_id,
        adopt_instance_types=adopt_instance_types,
        adopt_standin_tensorrt=adopt_standin_tensorrt,
    )
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


if __name__ == "__main__":
    from testground.nodeagent_daemon import main

    sys.exit(main())
