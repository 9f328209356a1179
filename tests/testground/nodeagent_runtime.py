"""Running one pod as local processes, the way a kubelet runs its containers.

A :class:`PodWorker` thread owns one pod bound to an emulated node: it lays out
the pod's volumes as local folders, starts each container whose image the
test ground knows as a process in its own process group, runs the probes,
restarts containers by the pod's restart policy, and writes ``pods/status``
the way a kubelet does. When the pod is deleted it stops the processes and
deletes the pod with a grace period of 0, as a kubelet does.

Not emulated: readOnly mounts are writable, exec probes always succeed (there
is no container to exec in), gRPC probes are TCP checks, sidecar init
containers (restartPolicy Always) run like ordinary init containers, and a
projected token is written once, never refreshed.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes.client.rest import ApiException

from testground.network import PodNetworkSpec, attach_pod, block_address, block_size, detach_pod, in_netns
from testground.nodeagent_kube import STRATEGIC_PATCH, Kube
from testground.nodeagent_nodes import NodeSpec, now_rfc3339, volume_path_of
from testground.nodeagent_pods import (
    CONFIG_ERROR_REASON,
    DEFAULT_TERMINATION_PATH,
    INHERITED_ENV,
    UNKNOWN_IMAGE_REASON,
    ContainerConfigError,
    PathMap,
    condition,
    container_env,
    decode_secret,
    expand,
    field_value,
    image_kind,
    image_repository,
    pod_phase,
    process_env,
    program_args,
    python_command,
    state_dict,
    terminated_reason,
    termination_message,
    unknown_image_message,
    with_bind_addresses,
)

log = logging.getLogger(__name__)

#: Grace periods above this are cut short: tests should not wait 30 s for a pod.
MAX_GRACE_SECONDS = 10.0
#: Restart back-off: doubles from the first value up to the cap (a kubelet: 10 s to 300 s).
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 20.0
#: A container that ran this long gets its back-off reset.
BACKOFF_RESET_AFTER = 60.0
TICK = 0.25
#: Grace given to pod processes when the agent itself stops.
AGENT_STOP_GRACE_SECONDS = 5.0
#: Exit code and reason recorded for a container whose process the agent lost
#: because the agent itself restarted (its process groups die with it).
LOST_EXIT_CODE = 137
LOST_REASON = "NodeAgentRestarted"


def path_key(namespace: str, pod: str) -> str:
    return f"{namespace}_{pod}"


def loopback_address(index: int) -> str:
    return f"127.0.{index // 254 + 1}.{index % 254 + 1}"


class IpAllocator:
    """One address per pod: by default loopback 127.0.X.Y (X >= 1; the apiserver stays on
    127.0.0.1), on the pod network the ``address_of(index)`` of its range."""

    def __init__(self, address_of: Callable[[int], str] = loopback_address, size: int = 254 * 254) -> None:
        self._lock = threading.Lock()
        self._used: set[str] = set()
        self._next = 0
        self._address_of = address_of
        self._size = size

    def claim(self, address: str) -> bool:
        with self._lock:
            if address in self._used:
                return False
            self._used.add(address)
            return True

    def allocate(self) -> str:
        with self._lock:
            for _ in range(self._size):
                index, self._next = self._next, (self._next + 1) % self._size
                address = self._address_of(index)
                if address not in self._used:
                    self._used.add(address)
                    return address
        raise RuntimeError("no free address left for a pod")

    def release(self, address: str) -> None:
        with self._lock:
            self._used.discard(address)


def node_allocators(network: PodNetworkSpec, nodes: Sequence[NodeSpec]) -> dict[str, IpAllocator]:
    """One allocator per node with a ``pod_cidr`` (its block of the pod range), as node IPAM
    gives each node a block: a pod's address says which node it is on. Blocks must lie in the
    range and not overlap."""
    whole = ipaddress.ip_network(network.pod_cidr)
    blocks = {node.name: ipaddress.ip_network(node.pod_cidr) for node in nodes if node.pod_cidr}
    for name, block in blocks.items():
        if not (block.version == whole.version and block.subnet_of(whole)):  # type: ignore[arg-type]
            raise ValueError(f"node {name}'s pod block {block} is outside the pod range {whole}")
        for other, peer in blocks.items():
            if other != name and block.overlaps(peer):
                raise ValueError(f"the pod blocks of nodes {name} and {other} overlap")
    return {
        name: IpAllocator(functools.partial(block_address, str(block)), block_size(str(block)))
        for name, block in blocks.items()
    }


class ProcessRegistry:
    """Process groups of pod containers, one file each, so whoever stops the
    agent (or the next agent) can kill groups a killed agent left behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, pgid: int) -> None:
        (self.folder / str(pgid)).touch()

    def remove(self, pgid: int) -> None:
        (self.folder / str(pgid)).unlink(missing_ok=True)

    def kill_all(self) -> int:
        return kill_registered_groups(self.folder)


def kill_registered_groups(folder: Path) -> int:
    killed = 0
    for entry in list(folder.glob("*")) if folder.is_dir() else []:
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            kill_group(int(entry.name))
            killed += 1
        entry.unlink(missing_ok=True)
    return killed


# -- a container's process group and its /dev/shm -----------------------------------

SHM_DIR = Path("/dev/shm")


def group_members(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a container's: its main process leads it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # exited while we looked
        if int(pgrp) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def shared_memory_of(pids: list[int]) -> set[Path]:
    """The /dev/shm files the processes have mapped (Triton's and its backend stubs' regions)."""
    found: set[Path] = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            mapped = fields[5] if len(fields) == 6 else ""
            if mapped.startswith(f"{SHM_DIR}/") and not mapped.endswith("(deleted)"):
                found.add(Path(mapped))
    return found


def remove_shared_memory(paths: set[Path]) -> None:
    """On a node each container has its own /dev/shm, gone with the container; here pods share
    the machine's, so what a container's processes left there goes when they are gone (a
    tritonserver stopped before it stopped its stubs leaves their regions, 1 MiB or more each)."""
    for path in paths:
        if path.parent == SHM_DIR:
            path.unlink(missing_ok=True)


def kill_group(pgid: int) -> None:
    """SIGKILL a container's process group and remove the /dev/shm files its processes mapped."""
    mapped = shared_memory_of(group_members(pgid))
    try:
        os.killpg(pgid, signal.SIGKILL)
    finally:
        remove_shared_memory(mapped)


@dataclass
class AgentContext:
    """What every pod worker shares."""

    kube: Kube
    workdir: Path
    ips: IpAllocator
    processes: ProcessRegistry
    stop: threading.Event
    kubeconfig_template: dict[str, Any]  #: the agent's kubeconfig without credentials
    #: Pods in network namespaces of their own (testground.network); None: on loopback.
    network: PodNetworkSpec | None = None
    nodes: Mapping[str, NodeSpec] = field(default_factory=dict)  #: the agent's nodes by name
    #: Nodes with a block of the pod range of their own (``node_allocators``); others share ``ips``.
    node_ips: Mapping[str, IpAllocator] = field(default_factory=dict)

    def ips_for(self, node_name: str) -> IpAllocator:
        return self.node_ips.get(node_name, self.ips)

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "pods"

    def pod_dir(self, namespace: str, name: str, uid: str) -> Path:
        return self.workdir / "pod-data" / f"{path_key(namespace, name)}_{uid[:8]}"

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        return None if found is None else dict(found.get("data") or {})

    def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        found = self.kube.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return None if found is None else decode_secret(found.get("data"))

    def service_account_token(self, pod: Mapping[str, Any], audience: str = "", seconds: int = 86400) -> str:
        meta = pod["metadata"]
        account = pod["spec"].get("serviceAccountName") or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": max(seconds, 600),
            # Bound to the pod, as a kubelet's tokens are: it dies with the pod.
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
        }
        if audience:
            spec["audiences"] = [audience]
        answer = self.kube.create(
            f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        return str(answer["status"]["token"])

    def service_account_kubeconfig(self, pod: Mapping[str, Any], path: Path) -> Path:
        """A kubeconfig with the pod's ServiceAccount token: the pod's own RBAC, never the agent's."""
        meta = pod["metadata"]
        user = (
            f"system:serviceaccount:{meta['namespace']}:{pod['spec'].get('serviceAccountName') or 'default'}"
        )
        config = dict(self.kubeconfig_template)
        config["users"] = [{"name": user, "user": {"token": self.service_account_token(pod)}}]
        config["contexts"] = [
            {"name": user, "context": {"cluster": "testground", "user": user, "namespace": meta["namespace"]}}
        ]
        config["current-context"] = user
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path


# -- probes -------------------------------------------------------------------------


def _port_of(port: Any, container: Mapping[str, Any]) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"named port {port!r} not found")


def run_probe(probe: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            action = probe["httpGet"]
            host = action.get("host") or pod_ip
            port = _port_of(action["port"], container)
            connection_class = (
                http.client.HTTPSConnection if action.get("scheme") == "HTTPS" else http.client.HTTPConnection
            )
            connection = connection_class(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
                connection.request("GET", action.get("path", "/"), headers=headers)
                return 200 <= connection.getresponse().status < 400
            finally:
                connection.close()
        if "tcpSocket" in probe or "grpc" in probe:
            action = probe.get("tcpSocket") or probe["grpc"]
            port = _port_of(action["port"], container)
            with socket.create_connection((action.get("host") or pod_ip, port), timeout=timeout):
                return True
        return True  # exec: nothing to exec in; counted as success (see the module doc)
    except (OSError, ValueError, http.client.HTTPException):
        return False


@dataclass
class ProbeState:
    spec: Mapping[str, Any]
    next_at: float
    successes: int = 0
    failures: int = 0

    @classmethod
    def start(cls, spec: Mapping[str, Any], now: float) -> ProbeState:
        return cls(spec=spec, next_at=now + float(spec.get("initialDelaySeconds", 0)))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, now: float) -> None:
        self.next_at = now + float(self.spec.get("periodSeconds", 10))
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1

    @property
    def passed(self) -> bool:
        return self.successes >= int(self.spec.get("successThreshold", 1))

    @property
    def failed(self) -> bool:
        return self.failures >= int(self.spec.get("failureThreshold", 3))


# -- containers ---------------------------------------------------------------------


@dataclass
class ContainerRun:
    spec: dict[str, Any]
    init: bool
    log_path: Path
    message_path: Path
    restart_count: int = 0
    process: subprocess.Popen[bytes] | None = None
    state: str = "waiting"
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: str = ""
    started_mono: float = 0.0
    log_offset: int = 0
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    backoff: float = 0.0
    restart_at: float = 0.0
    startup: ProbeState | None = None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    kill_reason: str = ""
    probes_started: bool = False
    #: /dev/shm files its processes had mapped when it was signalled, removed once they are gone.
    shared_memory: set[Path] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def started(self) -> bool:
        return self.state == "running" and (self.startup is None or self.startup.passed)

    @property
    def ready(self) -> bool:
        if not self.started:
            return False
        return self.readiness is None or self.readiness.passed

    def status(self) -> dict[str, Any]:
        state: dict[str, Any]
        if self.state == "running":
            state = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            waiting = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        image = str(self.spec.get("image", ""))
        status: dict[str, Any] = {
            "name": self.name,
            "image": image,
            "imageID": f"testground://{image_repository(image)}" if image_kind(image) else "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": state_dict(state),
            "lastState": state_dict({"terminated": self.last_terminated} if self.last_terminated else {}),
        }
        if self.process is not None:
            status["containerID"] = f"testground://{self.process.pid}"
        return status


def _transient(error: BaseException) -> bool:
    """An error of the API server's absence or overload, which waiting can mend."""
    if isinstance(error, ApiException):
        return error.status is None or error.status == 429 or error.status >= 500
    # Not every OSError: a container whose program cannot start is the pod's own fault.
    return isinstance(
        error, (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)
    )


class PodWorker(threading.Thread):
    """Runs one pod until it is deleted (or, for a finished pod, until it is terminal)."""

    def __init__(self, context: AgentContext, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.context = context
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.wake = threading.Event()
        self.gone = False
        self.finished = False  #: the worker has nothing left to do for this pod
        self.pod_ip = ""
        self.netns = ""  #: on the pod network: the pod's network namespace
        self.dir = context.pod_dir(self.namespace, self.pod_name, self.uid)
        self.started_at = pod.get("status", {}).get("startTime") or now_rfc3339()
        self.transitions: dict[str, tuple[bool, str]] = {}
        self.last_status: dict[str, Any] | None = None
        self.mounts: dict[str, str] = {}
        self.volumes_ready = False
        self.containers = [self._container(c, init=True) for c in pod["spec"].get("initContainers") or []]
        self.containers += [self._container(c, init=False) for c in pod["spec"]["containers"]]
        self._adopt_previous_status(pod.get("status", {}))

    @property
    def _ips(self) -> IpAllocator:
        """Where this pod's address comes from: its node's block, else the agent's pool."""
        return self.context.ips_for(str(self.pod["spec"].get("nodeName") or ""))

    # -- events from the watch

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def deleted(self) -> None:
        self.gone = True
        self.wake.set()

    # -- set-up

    def _container(self, spec: dict[str, Any], init: bool) -> ContainerRun:
        key = path_key(self.namespace, self.pod_name)
        return ContainerRun(
            spec=spec,
            init=init,
            log_path=self.context.logs_dir / f"{key}_{spec['name']}.log",
            message_path=self.dir / "termination" / spec["name"],
        )

    def _adopt_previous_status(self, status: Mapping[str, Any]) -> None:
        """A pod an earlier agent ran: its processes died with that agent.

        Every container that was running is recorded as terminated with
        :data:`LOST_EXIT_CODE` / :data:`LOST_REASON`; the restart policy then
        decides as for any exit (Never: the pod fails; otherwise it restarts).
        Containers that had finished keep their result.
        """
        previous = {
            s["name"]: s
            for s in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
        }
        for run in self.containers:
            old = previous.get(run.name)
            if not old:
                continue
            run.restart_count = int(old.get("restartCount", 0))
            state = old.get("state") or {}
            if state.get("terminated"):
                run.state, run.terminated = "terminated", dict(state["terminated"])
                run.last_terminated = (old.get("lastState") or {}).get("terminated")
                # The restart decision is remade below, on the first pass.
            elif state.get("running"):
                run.state = "terminated"
                run.terminated = {
                    "exitCode": LOST_EXIT_CODE,
                    "reason": LOST_REASON,
                    "message": "the test ground's node agent restarted and lost this process",
                    "startedAt": state["running"].get("startedAt"),
                    "finishedAt": now_rfc3339(),
                }
        self.pod_ip = status.get("podIP", "")

    def _prepare_volumes(self) -> None:
        spec = self.pod["spec"]
        volumes_dir = self.dir / "volumes"
        for volume in spec.get("volumes") or []:
            local = volumes_dir / volume["name"]
            if "persistentVolumeClaim" in volume:
                self.mounts[volume["name"]] = self._claim_folder(volume["persistentVolumeClaim"]["claimName"])
                continue
            if "hostPath" in volume:
                self.mounts[volume["name"]] = volume["hostPath"]["path"]
                continue
            local.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                pass
            elif "configMap" in volume:
                self._write_items(local, volume["configMap"], self.context.config_map, "configmap")
            elif "secret" in volume:
                ref = dict(volume["secret"], name=volume["secret"]["secretName"])
                self._write_items(local, ref, self.context.secret, "secret")
            elif "downwardAPI" in volume:
                self._write_downward(local, volume["downwardAPI"].get("items") or [])
            elif "projected" in volume:
                self._write_projected(local, volume["projected"].get("sources") or [])
            else:
                raise ContainerConfigError(
                    f"volume {volume['name']!r}: this kind is not emulated by the test ground"
                )
            self.mounts[volume["name"]] = str(local)
        self.volumes_ready = True

    def _claim_folder(self, claim: str) -> str:
        pvc = self.context.kube.get_or_none(
            f"/api/v1/namespaces/{self.namespace}/persistentvolumeclaims/{claim}"
        )
        volume_name = (pvc or {}).get("spec", {}).get("volumeName")
        if not volume_name:
            raise ContainerConfigError(f'persistentvolumeclaim "{claim}" is not bound')
        volume = self.context.kube.get(f"/api/v1/persistentvolumes/{volume_name}")
        path = volume_path_of(volume)
        if path is None:
            raise ContainerConfigError(f"persistentvolume {volume_name!r} has no local path")
        Path(path).mkdir(parents=True, exist_ok=True)
        return path

    def _write_items(self, folder: Path, ref: Mapping[str, Any], lookup: Any, kind: str) -> None:
        data = lookup(self.namespace, ref["name"])
        if data is None:
            if ref.get("optional"):
                return
            raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
        items = ref.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind} "{ref["name"]}" has no key "{item["key"]}"')
            target = folder / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]])
            target.chmod(int(item.get("mode", ref.get("defaultMode", 0o644))))

    def _write_downward(self, folder: Path, items: list[dict[str, Any]]) -> None:
        for item in items:
            if "fieldRef" in item:
                target = folder / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(field_value(self.pod, item["fieldRef"]["fieldPath"]))

    def _write_projected(self, folder: Path, sources: list[dict[str, Any]]) -> None:
        for source in sources:
            if "configMap" in source:
                self._write_items(folder, source["configMap"], self.context.config_map, "configmap")
            elif "secret" in source:
                self._write_items(folder, source["secret"], self.context.secret, "secret")
            elif "downwardAPI" in source:
                self._write_downward(folder, source["downwardAPI"].get("items") or [])
            elif "serviceAccountToken" in source:
                token = source["serviceAccountToken"]
                target = folder / token["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(
                    self.context.service_account_token(
                        self.pod, token.get("audience", ""), int(token.get("expirationSeconds", 3600))
                    )
                )

    def _path_map(self, run: ContainerRun, env: Mapping[str, str]) -> PathMap:
        pairs: dict[str, str] = {}
        for mount in run.spec.get("volumeMounts") or []:
            local = self.mounts.get(mount["name"])
            if local is None:
                raise ContainerConfigError(f"volumeMount {mount['name']!r} has no volume")
            sub = mount.get("subPath") or expand(mount.get("subPathExpr", ""), env)
            if sub:
                local = str(Path(local) / sub)
                Path(local).mkdir(parents=True, exist_ok=True)
            pairs[mount["mountPath"]] = local
        pairs[run.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH] = str(run.message_path)
        return PathMap.of(pairs)

    # -- starting and stopping processes

    def _command(
        self, run: ContainerRun, env: Mapping[str, str], paths: PathMap
    ) -> tuple[list[str], dict[str, str]] | None:
        """Argv of the local program and the host-side variables it needs on top of the pod's env.

        ``env`` is the container's view (for ``$(VAR)``); the pod's arguments are
        rewritten to local folders here, once. What the test ground adds (the
        interpreter, the backends folder, library paths, a kubeconfig) is a
        path of this machine already and is never rewritten: a checkout under
        a folder that a pod mounts (``/tmp``, say) must not be mistaken for it.
        """
        image = str(run.spec.get("image", ""))
        kind = image_kind(image)
        if kind is None:
            return None
        command = [expand(part, env) for part in run.spec.get("command") or []]
        args = program_args(kind, command, [expand(arg, env) for arg in run.spec.get("args") or []])
        args = [paths.rewrite(arg) for arg in args]
        node = self.context.nodes.get(str(self.pod["spec"].get("nodeName") or ""))
        if kind == "builder":
            if node is not None and node.standin_tensorrt and node.has_gpu:
                # STAND-IN TensorRT and GPU (testground.standin_tensorrt): the node's GPU kind answers
                # the builder's CUDA query, and the "plan" it writes is not a TensorRT plan.
                from testground.standin_tensorrt import GPU_CC_ENV, GPU_NAME_ENV

                gpu = {GPU_NAME_ENV: node.gpu_product, GPU_CC_ENV: node.compute_capability}
                return python_command("testground.standin_tensorrt.builder", args), gpu
            return python_command("tritonresnet_builder", args), {}
        if kind == "operator":
            kubeconfig = self.context.service_account_kubeconfig(self.pod, self.dir / "kubeconfig")
            added = {"KUBECONFIG": str(kubeconfig)}
            if self.context.network is None:
                # STAND-IN for the cluster's Service routing, which a loopback node has none of: the
                # operator verifies pods only. Its default (a Service by its DNS name) would ask
                # this machine's resolver, whose queries leave the machine.
                added["TRITONRESNET_VERIFY_SERVICE"] = "off"
            return python_command("tritonresnet", args), added
        from testground.standin_tensorrt import GPU_CC_ENV
        from testground.triton import tritonserver_command

        argv, triton_env = tritonserver_command(with_bind_addresses(args, self.pod_ip))
        if node is not None and node.has_gpu:
            # STAND-IN GPU for the stand-in TensorRT backend: the capability its node's labels say
            # picks the file from cc_model_filenames, as the real backend asks the GPU.
            triton_env[GPU_CC_ENV] = node.compute_capability
        return argv, triton_env

    def _start(self, run: ContainerRun) -> None:
        image = str(run.spec.get("image", ""))
        if image_kind(image) is None:
            run.state, run.waiting_reason, run.waiting_message = (
                "waiting",
                UNKNOWN_IMAGE_REASON,
                (unknown_image_message(image)),
            )
            return
        base = {key: os.environ[key] for key in INHERITED_ENV if key in os.environ}
        try:
            pod_env = container_env(self.pod, run.spec, self.context.secret, self.context.config_map)
            container_view = base | pod_env  # what $(VAR) and subPathExpr see
            paths = self._path_map(run, container_view)
            started = self._command(run, container_view, paths)
        except ContainerConfigError as error:
            run.state, run.waiting_reason, run.waiting_message = "waiting", CONFIG_ERROR_REASON, str(error)
            run.restart_at = time.monotonic() + 2.0
            return
        assert started is not None
        argv, host_env = started
        if self.context.network is not None:
            argv = in_netns(self.netns, argv)
        env = process_env(base, pod_env, paths, host_env)
        workdir = paths.local(run.spec["workingDir"]) if run.spec.get("workingDir") else None
        cwd = Path(workdir or self.dir / "cwd" / run.name)
        cwd.mkdir(parents=True, exist_ok=True)
        run.message_path.parent.mkdir(parents=True, exist_ok=True)
        run.message_path.write_bytes(b"")
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with run.log_path.open("ab") as log_file:
            run.log_offset = log_file.tell()
            run.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own process group: stopping it stops its children
            )
        self.context.processes.add(run.process.pid)
        log.info(
            "%s/%s: started %s as pid %d: %s", self.namespace, self.pod_name, run.name, run.process.pid, argv
        )
        now = time.monotonic()
        run.state, run.started_at, run.started_mono = "running", now_rfc3339(), now
        run.waiting_reason = run.waiting_message = run.kill_reason = ""
        run.startup = (
            ProbeState.start(run.spec["startupProbe"], now) if run.spec.get("startupProbe") else None
        )
        run.readiness = (
            ProbeState.start(run.spec["readinessProbe"], now) if run.spec.get("readinessProbe") else None
        )
        run.liveness = (
            ProbeState.start(run.spec["livenessProbe"], now) if run.spec.get("livenessProbe") else None
        )

    def _signal(self, run: ContainerRun, signum: int) -> None:
        if run.process is not None:
            # Noted now: a process that exits on the signal without cleaning up (a Triton stub
            # whose server went first) can no longer be asked what it had mapped.
            run.shared_memory |= shared_memory_of(group_members(run.process.pid))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.process.pid, signum)

    def _stop_all(self, grace: float) -> None:
        """SIGTERM every running container's group, SIGKILL what remains after ``grace``."""
        running = [run for run in self.containers if run.process is not None and run.process.poll() is None]
        for run in running:
            run.kill_reason = run.kill_reason or "Killing"
            self._signal(run, signal.SIGTERM)
        deadline = time.monotonic() + min(grace, MAX_GRACE_SECONDS)
        for run in running:
            assert run.process is not None
            try:
                run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal(run, signal.SIGKILL)
                run.process.wait()
        for run in self.containers:
            self._reap(run)

    def _reap(self, run: ContainerRun) -> bool:
        """If the container's process exited, record it as terminated; True when it did."""
        if run.process is None or run.process.poll() is None:
            return False
        process, run.process = run.process, None
        # Leftovers of the group (Triton's backend stubs) go with the container, and so does
        # what they and the container's main process left in /dev/shm.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill_group(process.pid)
        remove_shared_memory(run.shared_memory)
        run.shared_memory = set()
        self.context.processes.remove(process.pid)
        code = process.returncode if process.returncode >= 0 else 128 - process.returncode
        policy = run.spec.get("terminationMessagePolicy", "File")
        run.state = "terminated"
        run.terminated = {
            "exitCode": code,
            "reason": terminated_reason(code),
            "startedAt": run.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"testground://{process.pid}",
        }
        message = termination_message(run.message_path, run.log_path, run.log_offset, policy, code)
        if message:
            run.terminated["message"] = message
        log.info("%s/%s: %s exited with %d", self.namespace, self.pod_name, run.name, code)
        return True

    # -- the loop

    def _restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def _should_restart(self, run: ContainerRun) -> bool:
        code = (run.terminated or {}).get("exitCode", 0)
        policy = self._restart_policy()
        if run.init:
            return code != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    def _schedule_restart(self, run: ContainerRun, now: float) -> None:
        ran = now - run.started_mono if run.started_mono else 0.0
        run.backoff = (
            BACKOFF_FIRST
            if ran > BACKOFF_RESET_AFTER or not run.backoff
            else min(run.backoff * 2, BACKOFF_CAP)
        )
        run.restart_at = now + run.backoff
        run.last_terminated, run.terminated = run.terminated, None
        run.restart_count += 1
        run.state, run.waiting_reason = "waiting", "CrashLoopBackOff"
        run.waiting_message = (
            f"back-off {run.backoff:.0f}s restarting failed container={run.name} pod={self.pod_name}"
        )

    def _step_container(self, run: ContainerRun, now: float) -> None:
        if run.state == "running":
            if self._reap(run):
                if self._should_restart(run):
                    self._schedule_restart(run, now)
                return
            self._probe(run, now)
            return
        if run.state == "terminated":
            if run.terminated and run.terminated.get("reason") == LOST_REASON and self._should_restart(run):
                self._schedule_restart(run, now)
            return
        # waiting
        if run.waiting_reason == UNKNOWN_IMAGE_REASON or now < run.restart_at:
            return
        self._start(run)

    def _probe(self, run: ContainerRun, now: float) -> None:
        if run.startup is not None and not run.startup.passed:
            if run.startup.due(now):
                run.startup.record(run_probe(run.startup.spec, run.spec, self.pod_ip), now)
                if run.startup.failed:
                    self._kill_for_restart(run, "startup probe failed")
            return
        for state in (run.liveness, run.readiness):
            if state is not None and state.due(now):
                state.record(run_probe(state.spec, run.spec, self.pod_ip), now)
        if run.liveness is not None and run.liveness.failed:
            self._kill_for_restart(run, "liveness probe failed")

    def _kill_for_restart(self, run: ContainerRun, why: str) -> None:
        log.info("%s/%s: %s: %s; killing it", self.namespace, self.pod_name, run.name, why)
        run.kill_reason = why
        self._signal(run, signal.SIGTERM)
        assert run.process is not None
        try:
            run.process.wait(
                timeout=min(
                    float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)), MAX_GRACE_SECONDS
                )
            )
        except subprocess.TimeoutExpired:
            self._signal(run, signal.SIGKILL)
            run.process.wait()

    def _active_containers(self) -> list[ContainerRun]:
        """Init containers one by one until each succeeded, then all app containers."""
        for run in self.containers:
            if run.init and not (run.state == "terminated" and (run.terminated or {}).get("exitCode") == 0):
                return [run]
        return [run for run in self.containers if not run.init]

    def _inits_done(self) -> bool:
        return all(
            run.state == "terminated" and (run.terminated or {}).get("exitCode") == 0
            for run in self.containers
            if run.init
        )

    def _phase(self) -> str:
        inits = [run for run in self.containers if run.init]
        if not self._inits_done():
            failed_init = any(
                run.state == "terminated" and (run.terminated or {}).get("exitCode", 0) != 0 for run in inits
            )
            return "Failed" if failed_init and self._restart_policy() == "Never" else "Pending"
        apps = [run for run in self.containers if not run.init]
        return pod_phase(
            self._restart_policy(),
            [run.state for run in apps],
            [(run.terminated or {}).get("exitCode") for run in apps],
        )

    def _condition(self, kind: str, ok: bool, reason: str = "") -> dict[str, Any]:
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != ok:
            previous = (ok, now_rfc3339())
            self.transitions[kind] = previous
        return condition(kind, ok, previous[1], reason)

    def _status(self) -> dict[str, Any]:
        apps = [run for run in self.containers if not run.init]
        phase = self._phase()
        all_ready = all(run.ready for run in apps) and phase == "Running"
        not_ready = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.started_at,
            "conditions": [
                self._condition("PodReadyToStartContainers", True),
                self._condition("Initialized", self._inits_done(), "ContainersNotInitialized"),
                self._condition("ContainersReady", all_ready, not_ready),
                self._condition("Ready", all_ready, not_ready),
            ],
            "containerStatuses": [run.status() for run in apps],
        }
        if self.pod_ip:
            status |= {"podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}]}
        inits = [run.status() for run in self.containers if run.init]
        if inits:
            status["initContainerStatuses"] = inits
        return status

    def _write_status(self, status: dict[str, Any]) -> None:
        if status == self.last_status:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        body = {"metadata": {"uid": self.uid}, "status": status}
        self.context.kube.patch(path, body, STRATEGIC_PATCH)
        self.last_status = status

    def _delete_pod(self) -> None:
        self.context.kube.delete(
            f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}",
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid},
            },
        )

    def _pre_stop_sleep(self) -> float:
        """The longest ``lifecycle.preStop.sleep`` of the pod's containers (the only hook emulated)."""
        seconds = [
            float((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds") or 0)
            for c in self.pod["spec"].get("containers") or ()
        ]
        return max(seconds, default=0.0)

    def _terminate_for_deletion(self) -> None:
        grace = min(
            float(
                self.pod["metadata"].get("deletionGracePeriodSeconds")
                or self.pod["spec"].get("terminationGracePeriodSeconds", 30)
            ),
            MAX_GRACE_SECONDS,
        )
        # As a kubelet does: the preStop hook runs first and counts against the
        # grace period. It is what lets endpoints drop a pod before it stops.
        pre_stop = min(self._pre_stop_sleep(), grace)
        if pre_stop > 0:
            time.sleep(pre_stop)
        self._stop_all(max(grace - pre_stop, 1.0))
        if self.gone:
            return
        # As a kubelet does: the final status (a pod killed before it finished
        # is Failed), then the delete with grace period 0 that removes it.
        status = self._status()
        if status["phase"] not in ("Succeeded", "Failed"):
            status["phase"] = "Failed"
        with contextlib.suppress(Exception):
            self._write_status(status)
        self._delete_pod()

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s/%s: pod worker failed", self.namespace, self.pod_name)
        finally:
            # Triton needs ~4 s to exit cleanly; killed sooner its stubs leave /dev/shm regions.
            self._stop_all(AGENT_STOP_GRACE_SECONDS)
            if self.netns and self.context.network is not None:
                detach_pod(self.context.network, self.pod_ip)
            if self.pod_ip:
                self._ips.release(self.pod_ip)
            self.finished = True
            # A deletion that reached update() after the loop left (a terminal pod) has no event
            # after it: the agent hands later events of a finished worker's pod to no worker, but
            # this one it gave to us. Set finished first, then read: an update is seen either here
            # or by the agent, which deletes it then; deleting twice is harmless.
            deleting = self.pod["metadata"].get("deletionTimestamp")
            if deleting and not self.gone and not self.context.stop.is_set():
                with contextlib.suppress(Exception):
                    self._delete_pod()

    def _claim_ip(self) -> None:
        if not (self.pod_ip and self._ips.claim(self.pod_ip)):
            self.pod_ip = self._ips.allocate()
        if self.context.network is not None:
            self.netns = attach_pod(self.context.network, self.pod_ip, self.namespace)

    def _run(self) -> None:
        self._claim_ip()
        while not self.context.stop.is_set() and not self.gone:
            self.wake.clear()
            if self.pod["metadata"].get("deletionTimestamp"):
                self._terminate_for_deletion()
                return
            now = time.monotonic()
            try:
                if not self.volumes_ready:
                    try:
                        self._prepare_volumes()
                    except ContainerConfigError as error:
                        for run in self._active_containers():
                            run.waiting_reason, run.waiting_message = "ContainerCreating", str(error)
                if self.volumes_ready:
                    for run in self._active_containers():
                        self._step_container(run, now)
            except Exception as error:
                if not _transient(error):
                    raise
                # The apiserver restarting while a container starts (its Secrets, ConfigMaps
                # or claim read): a kubelet tries again; the pod must not be dropped for good.
                log.warning(
                    "%s/%s: the apiserver did not answer (%s); trying again",
                    self.namespace,
                    self.pod_name,
                    error,
                )
                self.wake.wait(1.0)
                continue
            status = self._status()
            try:
                self._write_status(status)
            except Exception as error:  # the apiserver restarting: retry on the next tick
                log.warning("%s/%s: status write failed: %s", self.namespace, self.pod_name, error)
            if status["phase"] in ("Succeeded", "Failed") and self.last_status == status:
                return  # terminal; the agent handles a later deletion without a worker
            self.wake.wait(TICK if self.volumes_ready else 1.0)
        if self.context.stop.is_set():
            # Stopping the agent (not the pod): the agent's SIGTERM handler kills groups.
            return

    def remove_files(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
