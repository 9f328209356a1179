"""A pod network on one machine: network namespaces, kube-proxy and CoreDNS.

Opt-in (the ``pod_network`` fixture): the rest of the test ground keeps pods on
loopback addresses. Needs root and ``ip`` (iproute2); ``nft`` for kube-proxy
comes from ``testground.binaries.ensure_network_binaries``.

Everything lives in namespaces this module creates, named ``tgn<run id>-...``
(links ``tgn<run id>...``), so what a run made is found by its name::

    host                                node namespace tgn<id>-node         pod namespace tgn<id>-<a><b>
    tgn<id>h 10.245.0.1/30  <== veth ==>  tgn<id>n 10.245.0.2/30
    pod and service ranges via 10.245.0.2   kube-proxy (nftables, its table
    blackholes for both ranges (metric      lives in this namespace only)
      4000: what is left if the link goes)  ip_forward=1, no default route
    CoreDNS on 10.245.0.1:53                pod routes: 10.244.A.B/32 dev  <== veth ==>  eth0 10.244.A.B/32
    the apiserver for kube-proxy on           tgn<id><a><b>                            default via 10.245.0.2
      10.245.0.1 (a TCP forwarder)                                                     resolv.conf: kube-dns

Nothing is routed off the machine: the host gets blackhole routes for the whole
pod and service ranges before anything else, the node namespace has no default
route (an address with no rule has nowhere to go), and CoreDNS has no plugin
that forwards a query. The host's own routes, links and firewall are never
touched: the only host objects are the link and the two blackhole routes, both
removed on stop, and kube-proxy's nftables table is inside the node namespace.

Pods see their resolv.conf through ``ip netns exec``, which bind-mounts the
files of ``/etc/netns/<namespace>/`` over ``/etc/`` for the process it starts.

Only one pod network runs on a machine at a time (the ranges are fixed): a
machine-wide lock is held while it is up. Holding it also means whatever
``tgn*`` object exists belongs to a dead run, so each start removes those first.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "tgn"
POD_CIDR = "10.244.0.0/16"
LINK_CIDR = "10.245.0.0/30"
HOST_ADDRESS = "10.245.0.1"  #: the host's end of the link: CoreDNS and the apiserver forwarder
NODE_ADDRESS = "10.245.0.2"  #: the node namespace's end: the pods' gateway, kube-proxy's node IP
#: kube-dns' ClusterIP, in the static (low) part of the service range no automatic allocation takes.
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
BLACKHOLE_METRIC = 4000
#: The routing protocol number our host routes carry, so a clean-up finds only ours.
ROUTE_PROTOCOL = "177"
ETC_NETNS = Path("/etc/netns")
LOCK_WAIT = 600.0  # seconds: another run's network, usually a test session, is in the way
COMMAND_TIMEOUT = 20.0


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def available() -> str:
    """Empty when this machine can run a pod network, else why not."""
    if os.geteuid() != 0:
        return "the pod network needs root (network namespaces, veth links, routes)"
    if shutil.which("ip") is None:
        return "the pod network needs the ip command (iproute2)"
    return ""


# -- what the node agent needs to know (passed as JSON) ------------------------------


def block_address(cidr: str, index: int) -> str:
    """The index-th address (0-based) of ``cidr``, skipping its first (network) address."""
    network = ipaddress.ip_network(cidr)
    if not 0 <= index < network.num_addresses - 2:
        raise NetworkError(f"no pod address {index} in {cidr}")
    return str(network.network_address + index + 1)


def block_size(cidr: str) -> int:
    return int(ipaddress.ip_network(cidr).num_addresses) - 2


@dataclass(frozen=True)
class PodNetworkSpec:
    run: str  #: the run id: every name starts with PREFIX + run
    node_netns: str
    pod_cidr: str = POD_CIDR
    gateway: str = NODE_ADDRESS
    dns: str = DNS_SERVICE_IP
    domain: str = CLUSTER_DOMAIN

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PodNetworkSpec:
        return cls(**json.loads(text))

    def address(self, index: int) -> str:
        """The index-th pod address (0-based) of the whole range, skipping its first address."""
        return block_address(self.pod_cidr, index)

    @property
    def size(self) -> int:
        return block_size(self.pod_cidr)

    def pod_names(self, address: str) -> tuple[str, str]:
        """(namespace, node-side link) of the pod at ``address``; derived, so a restarted agent finds them."""
        packed = ipaddress.ip_address(address).packed
        tail = f"{packed[2]:02x}{packed[3]:02x}"
        return f"{PREFIX}{self.run}-{tail}", f"{PREFIX}{self.run}{tail}"


def resolv_conf(spec: PodNetworkSpec, namespace: str) -> str:
    """What a kubelet writes for a ClusterFirst pod."""
    search = f"{namespace}.svc.{spec.domain} svc.{spec.domain} {spec.domain}"
    return f"nameserver {spec.dns}\nsearch {search}\noptions ndots:5\n"


def attach_pod(spec: PodNetworkSpec, address: str, namespace: str) -> str:
    """A network namespace for a pod, joined to the node namespace; returns its name."""
    netns, link = spec.pod_names(address)
    detach_pod(spec, address)  # a killed agent's leftovers for the same address
    _ip("netns", "add", netns)
    try:
        _ip(
            "-n", spec.node_netns, "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", netns
        )
        _ip("-n", spec.node_netns, "link", "set", link, "up")
        _ip("-n", spec.node_netns, "route", "add", f"{address}/32", "dev", link)
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "addr", "add", f"{address}/32", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", spec.gateway, "dev", "eth0", "scope", "link")
        _ip("-n", netns, "route", "add", "default", "via", spec.gateway, "dev", "eth0")
        folder = ETC_NETNS / netns
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(resolv_conf(spec, namespace))
    except BaseException:
        detach_pod(spec, address)
        raise
    return netns


def _kill_netns_processes(netns: str) -> None:
    proc = _ip("netns", "pids", netns, check=False)
    for pid in (int(word) for word in proc.stdout.split()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_netns(netns: str) -> None:
    """Kill what still runs in it, delete it (its links go with it) and its /etc/netns folder."""
    if (Path("/run/netns") / netns).exists():
        _kill_netns_processes(netns)
        _ip("netns", "del", netns, check=False)
    shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)


def detach_pod(spec: PodNetworkSpec, address: str) -> None:
    netns, link = spec.pod_names(address)
    # The kernel frees a deleted namespace (and the veth ends inside it) later, in a work queue:
    # the node-side end could outlive ``ip netns del`` and refuse the next pod at this address
    # ("File exists"). Deleting that end removes the pair at once.
    _ip("-n", spec.node_netns, "link", "del", link, check=False)
    remove_netns(netns)


def in_netns(netns: str, argv: Sequence[str]) -> list[str]:
    """argv run inside ``netns`` (with its /etc/netns files), as the process itself (ip execs it)."""
    return ["ip", "netns", "exec", netns, *argv]


# -- the network itself, owned by the test process -------------------------------------


def _our_netns() -> list[str]:
    proc = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def _our_links() -> list[str]:
    proc = _ip("-o", "link", "show", check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines() if ":" in line]
    return [name for name in names if name.startswith(PREFIX)]


def blackhole_routes(ranges: Sequence[str]) -> list[list[str]]:
    return [["blackhole", cidr, "metric", str(BLACKHOLE_METRIC), "proto", ROUTE_PROTOCOL] for cidr in ranges]


def clean_leftovers(ranges: Sequence[str]) -> list[str]:
    """Remove every ``tgn*`` namespace and link and our blackhole routes (call with the lock held)."""
    removed: list[str] = []
    for netns in _our_netns():
        remove_netns(netns)
        removed.append(f"netns {netns}")
    for link in _our_links():
        _ip("link", "del", link, check=False)
        removed.append(f"link {link}")
    for route in blackhole_routes(ranges):
        if _ip("route", "del", *route, check=False).returncode == 0:
            removed.append(f"route {' '.join(route)}")
    if ETC_NETNS.is_dir():
        for folder in ETC_NETNS.glob(f"{PREFIX}*"):
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def machine_lock_path() -> Path:
    return Path(tempfile.gettempdir()) / "testground-pod-network.lock"


@dataclass
class PodNetwork:
    """A pod network that is up: what the node agent and tests need from it."""

    spec: PodNetworkSpec
    service_cidr: str
    host_link: str
    spec_path: Path  #: the spec as JSON, for ``--pod-network`` of the node agent
    removed_leftovers: list[str] = field(default_factory=list)

    @property
    def ranges(self) -> tuple[str, str]:
        return (self.spec.pod_cidr, self.service_cidr)

    @contextlib.contextmanager
    def client_netns(self, index: int = 0, namespace: str = "default") -> Iterator[str]:
        """A pod-like namespace (an address from the top of the pod range, resolv.conf for
        ``namespace``) for a test's client processes; removed when the block exits."""
        address = self.spec.address(self.spec.size - 1 - index)
        try:
            yield attach_pod(self.spec, address, namespace)
        finally:
            detach_pod(self.spec, address)


def _lock_machine(timeout: float) -> IO[str]:
    lock = machine_lock_path().open("w")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                lock.close()
                raise NetworkError(
                    f"another pod network held {machine_lock_path()} for {timeout:.0f} s"
                ) from None
            time.sleep(1.0)


def _sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(
        in_netns(netns, ["sysctl", "-q", "-w", f"{key}={value}"]), check=True, timeout=COMMAND_TIMEOUT
    )


@contextlib.contextmanager
def pod_network(workdir: Path, service_cidr: str, lock_timeout: float = LOCK_WAIT) -> Iterator[PodNetwork]:
    """The links, namespaces and routes of a pod network, removed when the block exits."""
    why_not = available()
    if why_not:
        raise NetworkError(why_not)
    lock = _lock_machine(lock_timeout)
    ranges = (POD_CIDR, service_cidr)
    try:
        removed = clean_leftovers(ranges)
        if removed:
            print(f"testground: removed what a dead pod network left: {', '.join(removed)}", file=sys.stderr)
        run = uuid.uuid4().hex[:6]
        spec = PodNetworkSpec(run=run, node_netns=f"{PREFIX}{run}-node")
        host_link, node_link = f"{PREFIX}{run}h", f"{PREFIX}{run}n"
        prefix_len = ipaddress.ip_network(LINK_CIDR).prefixlen
        try:
            # First of all: nothing sent to either range may leave the machine.
            for route in blackhole_routes(ranges):
                _ip("route", "add", *route)
            _ip("netns", "add", spec.node_netns)
            _ip("link", "add", host_link, "type", "veth", "peer", "name", node_link, "netns", spec.node_netns)
            _ip("addr", "add", f"{HOST_ADDRESS}/{prefix_len}", "dev", host_link)
            _ip("link", "set", host_link, "up")
            _ip("-n", spec.node_netns, "link", "set", "lo", "up")
            _ip("-n", spec.node_netns, "addr", "add", f"{NODE_ADDRESS}/{prefix_len}", "dev", node_link)
            _ip("-n", spec.node_netns, "link", "set", node_link, "up")
            # The node namespace: no default route, and the service range dropped unless kube-proxy
            # translated it.
            _ip("-n", spec.node_netns, "route", "add", "blackhole", service_cidr)
            _sysctl(spec.node_netns, "net.ipv4.ip_forward", "1")
            for cidr in ranges:
                _ip("route", "add", cidr, "via", NODE_ADDRESS, "dev", host_link, "proto", ROUTE_PROTOCOL)
            workdir.mkdir(parents=True, exist_ok=True)
            spec_path = workdir / "pod-network.json"
            spec_path.write_text(spec.to_json())
            yield PodNetwork(
                spec=spec,
                service_cidr=service_cidr,
                host_link=host_link,
                spec_path=spec_path,
                removed_leftovers=removed,
            )
        finally:
            for netns in _our_netns():
                if netns.startswith(f"{PREFIX}{run}-"):
                    remove_netns(netns)
            _ip("link", "del", host_link, check=False)  # its routes go with it
            for route in blackhole_routes(ranges):
                _ip("route", "del", *route, check=False)
    finally:
        lock.close()


def host_state() -> dict[str, list[str]]:
    """What of ours exists on the host now (empty after a stop)."""
    routes = _ip("route", "show", "proto", ROUTE_PROTOCOL, check=False).stdout.splitlines()
    return {"netns": _our_netns(), "links": _our_links(), "routes": routes}
