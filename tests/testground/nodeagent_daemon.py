"""The node agent process: registers the emulated nodes and plays their kubelet.

Threads, each with a list+watch loop that survives API server restarts:

* heartbeat: keeps every node's status Ready and renews its Lease in
  ``kube-node-lease`` every :data:`LEASE_RENEW_SECONDS`;
* pods: dispatches pods bound to our nodes to one :class:`PodWorker` each;
* nodes (with ``--adopt``): adopts the nodes Karpenter's kwok provider
  creates and plays their kubelet too (``testground.nodeagent_adopt``);
* storage: provisions a hostPath PersistentVolume for each pending claim of the
  ``testground`` class (the default class) and deletes released ones.

On SIGTERM it stops every pod process it started (by process group) and exits.
Run it with ``python -m testground.nodeagent`` (see ``testground.nodeagent``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import logging
import shutil
import signal
import sys
import threading
import time
from collections import ChainMap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testground.network import PodNetworkSpec
from testground.nodeagent_adopt import adopted_spec, is_adoptable, load_instance_types
from testground.nodeagent_kube import MERGE_PATCH, Kube, list_and_watch, start_thread
from testground.nodeagent_nodes import (
    AGENT_LABEL,
    DEFAULT_NODES,
    LEASE_RENEW_SECONDS,
    NODE_LEASE_NAMESPACE,
    PROVISIONED_BY_ANNOTATION,
    PROVISIONER,
    NodeSpec,
    claim_wants_us,
    node_lease,
    node_object,
    node_status,
    nodes_from_json,
    now_micro,
    now_rfc3339,
    persistent_volume_object,
    storage_class_object,
    volume_name_for,
    volume_path_of,
)
from testground.nodeagent_runtime import (
    AgentContext,
    IpAllocator,
    PodWorker,
    ProcessRegistry,
    node_allocators,
)

log = logging.getLogger("testground.nodeagent")

#: Node status is re-posted this often even when nothing changed (a kubelet: 5 min).
NODE_STATUS_SECONDS = 60.0
#: Claims and volumes are listed again this often, so a provisioning write that
#: failed once is retried (external-provisioner resyncs the same way).
STORAGE_RESYNC_SECONDS = 15


def kubeconfig_template(kube: Kube) -> dict[str, Any]:
    """The agent's cluster entry (server and CA) for the kubeconfigs it writes for pods."""
    configuration = kube.configuration
    cluster: dict[str, Any] = {"server": configuration.host}
    if configuration.ssl_ca_cert:
        cluster["certificate-authority-data"] = base64.b64encode(
            Path(configuration.ssl_ca_cert).read_bytes()
        ).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    return {"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "testground", "cluster": cluster}]}


class NodeAgentDaemon:
    def __init__(
        self,
        kube: Kube,
        workdir: Path,
        nodes: Sequence[NodeSpec],
        agent_id: str,
        network: PodNetworkSpec | None = None,
        storage: bool = True,
        adopt_instance_types: Path | None = None,
        adopt_standin_tensorrt: bool = False,
    ) -> None:
        self.kube = kube
        self.workdir = workdir
        self.nodes = {node.name: node for node in nodes}
        self.agent_id = agent_id
        self.stop = threading.Event()
        self.storage = storage  #: provision the default StorageClass's volumes (one agent per cluster does)
        self.processes = ProcessRegistry(workdir / "run")
        #: Nodes an autoscaler created that we play the kubelet of (testground.nodeagent_adopt),
        #: by name; never registered (nor registered again) by us.
        self.instance_types = load_instance_types(adopt_instance_types) if adopt_instance_types else None
        self.adopted: dict[str, NodeSpec] = {}
        self.adopted_uids: dict[str, str] = {}
        self.adopt_standin_tensorrt = adopt_standin_tensorrt
        self.context = AgentContext(
            kube=kube,
            workdir=workdir,
            ips=IpAllocator(network.address, network.size) if network else IpAllocator(),
            processes=self.processes,
            stop=self.stop,
            kubeconfig_template=kubeconfig_template(kube),
            network=network,
            # The adopted nodes too, as they come and go: what a pod's node is decides how it runs.
            nodes=ChainMap(self.nodes, self.adopted),
            node_ips=node_allocators(network, nodes) if network else {},
        )
        self.workers: dict[str, PodWorker] = {}
        self.done: set[str] = set()  #: uids of pods that need no worker (terminal)
        self.lock = threading.Lock()
        self.node_uids: dict[str, str] = {}
        self.ready_since = now_rfc3339()

    def plays(self, node_name: str | None) -> bool:
        return node_name in self.nodes or node_name in self.adopted

    # -- nodes

    def register_nodes(self) -> None:
        for node in self.nodes.values():
            body = node_object(node, self.agent_id)
            created = self.kube.create_or_keep("/api/v1/nodes", body)
            if created is None:  # an earlier agent registered it: bring labels and taints up to date
                created = self.kube.patch(
                    f"/api/v1/nodes/{node.name}", {"metadata": body["metadata"], "spec": body["spec"]}
                )
            self.node_uids[node.name] = created["metadata"]["uid"]
            self.post_node_status(node)

    def on_node(self, kind: str, node: dict[str, Any]) -> None:
        """Adopt a node an autoscaler created (or forget a deleted one)."""
        name = node["metadata"]["name"]
        if kind == "DELETED" or node["metadata"].get("deletionTimestamp"):
            if self.adopted.pop(name, None) is not None:
                self.adopted_uids.pop(name, None)
                log.info("adopted node %s is gone", name)
            return
        if name in self.adopted or self.instance_types is None or not is_adoptable(node):
            return
        spec = adopted_spec(node, self.instance_types, self.adopt_standin_tensorrt)
        if spec is None:
            log.warning("node %s has an instance type we do not know; not adopting it", name)
            return
        try:
            self.adopted_uids[name] = node["metadata"]["uid"]
            self.post_node_status(spec)
            self.renew_lease(name)
            self.adopted[name] = spec
            log.info(
                "adopted node %s (%s, %d GPUs %s)", name, spec.instance_type, spec.gpus, spec.gpu_product
            )
        except Exception:
            self.adopted_uids.pop(name, None)
            log.exception("adopting node %s failed; trying again on its next event", name)

    def nodes_loop(self) -> None:
        list_and_watch(self.kube, "/api/v1/nodes", self.on_node, self.stop, resync_seconds=30)

    def adopted_heartbeat(self, last_status: float) -> bool:
        """Leases (and, when due, status) of the adopted nodes; True when status was posted."""
        due = time.monotonic() - last_status > NODE_STATUS_SECONDS
        for name, spec in list(self.adopted.items()):
            try:
                self.renew_lease(name)
                if due:
                    self.post_node_status(spec)
            except Exception as error:  # deleted under us: the nodes watch forgets it
                log.warning("heartbeat of adopted node %s failed (%s)", name, error)
        return due

    def post_node_status(self, node: NodeSpec) -> None:
        status = node_status(node, now_rfc3339(), self.ready_since)
        self.kube.patch(f"/api/v1/nodes/{node.name}/status", {"status": status}, MERGE_PATCH)

    def renew_lease(self, name: str) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases/{name}"
        patched = None
        with contextlib.suppress(Exception):
            patched = self.kube.patch(path, {"spec": {"holderIdentity": name, "renewTime": now_micro()}})
        if patched is None:
            self.kube.create_or_keep(
                f"/apis/coordination.k8s.io/v1/namespaces/{NODE_LEASE_NAMESPACE}/leases",
                node_lease(name, self.node_uids.get(name) or self.adopted_uids[name]),
            )

    def heartbeat_loop(self) -> None:
        last_status = 0.0
        while not self.stop.is_set():
            try:
                if not self.node_uids:
                    self.register_nodes()
                    last_status = time.monotonic()
                for name in self.nodes:
                    self.renew_lease(name)
                adopted_due = self.adopted_heartbeat(last_status)
                if adopted_due or time.monotonic() - last_status > NODE_STATUS_SECONDS:
                    for node in self.nodes.values():
                        self.post_node_status(node)
                    last_status = time.monotonic()
            except Exception as error:  # apiserver away, or a node deleted by a test: register again
                log.warning("heartbeat failed (%s); registering the nodes again next round", error)
                self.node_uids.clear()
                self.stop.wait(1.0)
                continue
            self.stop.wait(LEASE_RENEW_SECONDS)

    # -- pods

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        if not self.plays(pod.get("spec", {}).get("nodeName")):
            return
        uid = pod["metadata"]["uid"]
        try:
            with self.lock:
                worker = self.workers.get(uid)
                if worker is not None and worker.finished:
                    del self.workers[uid]
                    self.done.add(uid)
                    worker = None
                if kind == "DELETED":
                    self.done.discard(uid)
                    if worker is not None:
                        worker.deleted()
                    return
                if worker is not None:
                    worker.update(pod)
                    return
                phase = pod.get("status", {}).get("phase")
                if uid in self.done or phase in ("Succeeded", "Failed"):
                    self.done.add(uid)
                    if pod["metadata"].get("deletionTimestamp"):
                        self._delete_finished(pod)
                    return
                worker = PodWorker(self.context, pod)
                self.workers[uid] = worker
                worker.start()
        except Exception:
            log.exception("handling pod %s/%s failed", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _delete_finished(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.kube.delete(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]},
            },
        )

    def pods_loop(self) -> None:
        # A kubelet watches spec.nodeName=<itself>; one watch of all assigned
        # pods, filtered here, serves all our nodes with one connection.
        list_and_watch(
            self.kube, "/api/v1/pods", self.on_pod, self.stop, {"fieldSelector": "spec.nodeName!="}
        )

    # -- storage

    def on_claim(self, kind: str, claim: dict[str, Any]) -> None:
        if kind == "DELETED" or not claim_wants_us(claim):
            return
        try:
            name = volume_name_for(claim)
            folder = self.workdir / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            if self.kube.create_or_keep(
                "/api/v1/persistentvolumes", persistent_volume_object(claim, str(folder), self.agent_id)
            ):
                meta = claim["metadata"]
                log.info(
                    "provisioned %s for claim %s/%s at %s", name, meta["namespace"], meta["name"], folder
                )
        except Exception:
            log.exception("provisioning for claim %s failed", claim["metadata"].get("name"))

    def on_volume(self, kind: str, volume: dict[str, Any]) -> None:
        annotations = volume["metadata"].get("annotations") or {}
        if kind == "DELETED" or annotations.get(PROVISIONED_BY_ANNOTATION) != PROVISIONER:
            return
        spec, phase = volume.get("spec", {}), volume.get("status", {}).get("phase")
        if phase in ("Released", "Failed") and spec.get("persistentVolumeReclaimPolicy") == "Delete":
            try:
                path = volume_path_of(volume)
                if path and Path(path).is_relative_to(self.workdir / "volumes"):
                    shutil.rmtree(path, ignore_errors=True)
                self.kube.delete(f"/api/v1/persistentvolumes/{volume['metadata']['name']}")
                log.info("deleted released volume %s", volume["metadata"]["name"])
            except Exception:
                log.exception("deleting volume %s failed", volume["metadata"]["name"])

    def storage_loops(self) -> None:
        while not self.stop.is_set():
            try:
                self.ensure_storage_class()
                break
            except Exception as error:
                log.warning("creating the storage class failed (%s); retrying", error)
                self.stop.wait(1.0)
        start_thread(
            "volumes",
            lambda: list_and_watch(
                self.kube,
                "/api/v1/persistentvolumes",
                self.on_volume,
                self.stop,
                resync_seconds=STORAGE_RESYNC_SECONDS,
            ),
        )
        list_and_watch(
            self.kube,
            "/api/v1/persistentvolumeclaims",
            self.on_claim,
            self.stop,
            resync_seconds=STORAGE_RESYNC_SECONDS,
        )

    def ensure_storage_class(self) -> None:
        self.kube.create_or_keep("/apis/storage.k8s.io/v1/storageclasses", storage_class_object())

    # -- lifecycle

    def run(self) -> None:
        leftovers = self.processes.kill_all()
        if leftovers:
            log.info("killed %d process groups left by an earlier agent", leftovers)
        threads = [
            start_thread("heartbeat", self.heartbeat_loop),
            start_thread("pods", self.pods_loop),
        ]
        if self.storage:
            threads.append(start_thread("storage", self.storage_loops))
        if self.instance_types is not None:
            threads.append(start_thread("nodes", self.nodes_loop))
        log.info("node agent %s running nodes %s", self.agent_id, ", ".join(self.nodes))
        self.stop.wait()
        log.info("stopping: %d pod workers", len(self.workers))
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.join(timeout=15)
        self.processes.kill_all()
        for thread in threads:
            thread.join(timeout=1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m testground.nodeagent",
        description="Emulated GPU nodes: register them, keep them Ready, run their pods as local processes.",
    )
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the cluster")
    parser.add_argument("--workdir", type=Path, required=True, help="folder for pod logs, volumes and state")
    parser.add_argument("--nodes", default="", help="JSON list of NodeSpec fields (default: DEFAULT_NODES)")
    parser.add_argument("--agent-id", default="testground", help=f"value of the {AGENT_LABEL} label")
    parser.add_argument(
        "--pod-network",
        type=Path,
        help="a testground.network.PodNetworkSpec (JSON file): each pod in a network namespace of its own",
    )
    parser.add_argument(
        "--no-storage", action="store_true", help="leave the StorageClass and its volumes to another agent"
    )
    parser.add_argument(
        "--adopt",
        type=Path,
        metavar="INSTANCE_TYPES",
        help="also play the kubelet of the nodes Karpenter's kwok provider creates, "
        "with the machines of this instance-type file (testground.nodeagent_adopt)",
    )
    parser.add_argument(
        "--adopt-standin-tensorrt",
        action="store_true",
        help="builder pods on adopted GPU nodes run with the STAND-IN TensorRT (testground.standin_tensorrt)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s"
    )
    for noisy in ("urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    nodes = nodes_from_json(args.nodes) if args.nodes else DEFAULT_NODES
    network = PodNetworkSpec.from_json(args.pod_network.read_text()) if args.pod_network else None
    daemon = NodeAgentDaemon(
        Kube(args.kubeconfig),
        workdir,
        nodes,
        args.agent_id,
        network,
        storage=not args.no_storage,
        adopt_instance_types=args.adopt,
        adopt_standin_tensorrt=args.adopt_standin_tensorrt,
    )

    def request_stop(signum: int, frame: object) -> None:
        daemon.stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        daemon.run()
    finally:
        daemon.processes.kill_all()
    return 0
