"""The pod network's safety and clean-up (testground.network), without a control plane.

What must hold whatever else happens: the host has blackhole routes for the
whole pod and service ranges while the network is up (so a packet to an address
no rule handles never leaves the machine, also once the link is gone), every
object a run made is removed when it stops, and a run that died without its
clean-up leaves nothing the next start does not remove.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testground import network
from testground.controlplane import SERVICE_CLUSTER_IP_RANGE
from testground.waiting import wait_for

pytestmark = pytest.mark.skipif(bool(network.available()), reason=network.available() or "available")

#: An address of the service range no Service has (nothing translates it).
UNUSED_SERVICE_IP = "10.0.255.254"


#: A server of one answer (no name lookups, unlike http.server's bind: no DNS runs here).
ONE_ANSWER = """
import socket, sys
with socket.create_server((sys.argv[1], 8080)) as server:
    connection, _ = server.accept()
    connection.sendall(b"from the pod")
    connection.close()
"""


def _read_from(host: str, port: int) -> bytes | None:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=5) as sock:
        return sock.recv(100)
    return None


def route_to(address: str) -> str:
    return subprocess.run(["ip", "route", "get", address], capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def up(tmp_path: Path) -> Iterator[network.PodNetwork]:
    with network.pod_network(tmp_path, SERVICE_CLUSTER_IP_RANGE, lock_timeout=60) as net:
        yield net
    assert network.host_state() == {"netns": [], "links": [], "routes": []}


def test_both_ranges_go_to_the_node_namespace_with_blackholes_underneath(up: network.PodNetwork) -> None:
    routes = network.host_state()["routes"]
    for cidr in up.ranges:
        assert any(line.startswith(f"blackhole {cidr}") for line in routes), routes
        assert any(line.startswith(f"{cidr} via {network.NODE_ADDRESS}") for line in routes), routes
        assert f"dev {up.host_link}" in route_to(str(next(iter(ipaddress.ip_network(cidr).hosts()))))

    # An unused ClusterIP: into the node namespace, which has no route for it. Bounded: one try, 1 s.
    started = time.monotonic()
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(1.0)
        sock.connect((UNUSED_SERVICE_IP, 80))
    assert time.monotonic() - started < 2.0

    # Without the link (deleted under us), the blackholes are what is left: nothing leaves the machine.
    subprocess.run(["ip", "link", "del", up.host_link], check=True, timeout=10)
    for cidr in up.ranges:
        address = str(next(iter(ipaddress.ip_network(cidr).hosts())))
        assert " dev " not in route_to(address)  # no device takes it, the default route's neither
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError):
            sock.sendto(b"x", (address, 9))


def test_a_pod_namespace_has_its_address_gateway_and_resolv_conf_and_goes_away(
    up: network.PodNetwork,
) -> None:
    with up.client_netns(0, "shop") as netns:
        address = up.spec.address(up.spec.size - 1)
        inside = subprocess.run(
            network.in_netns(
                netns, ["sh", "-c", "ip -4 -o addr show dev eth0; ip route; cat /etc/resolv.conf"]
            ),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        assert f"inet {address}/32" in inside
        assert f"default via {up.spec.gateway} dev eth0" in inside
        assert "nameserver 10.0.0.10" in inside
        assert "search shop.svc.cluster.local svc.cluster.local cluster.local" in inside
        # The host reaches the pod through the node namespace: one connection, 5 s at most.
        server = subprocess.Popen(
            network.in_netns(netns, [sys.executable, "-c", ONE_ANSWER, address]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            answer = wait_for(lambda: _read_from(address, 8080), "the server in the pod's namespace", 10)
            assert answer == b"from the pod"
        finally:
            server.kill()
            server.wait(timeout=10)
    assert netns not in network.host_state()["netns"]
    assert not (network.ETC_NETNS / netns).exists()


def test_a_dead_runs_namespaces_links_routes_and_processes_are_removed_by_the_next_start(
    tmp_path: Path,
) -> None:
    dead = f"{network.PREFIX}dead00"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, timeout=10)

    # What a SIGKILLed run leaves: its namespaces (one with a process), its link, its blackhole route.
    ip("netns", "add", f"{dead}-node")
    ip("netns", "add", f"{dead}-0a05")
    ip("link", "add", f"{dead}h", "type", "veth", "peer", "name", f"{dead}n", "netns", f"{dead}-node")
    ip("route", "add", *network.blackhole_routes([network.POD_CIDR])[0])
    (network.ETC_NETNS / f"{dead}-0a05").mkdir(parents=True, exist_ok=True)
    sleeper = subprocess.Popen(network.in_netns(f"{dead}-0a05", ["sleep", "300"]))
    try:
        with network.pod_network(tmp_path, SERVICE_CLUSTER_IP_RANGE, lock_timeout=60) as net:
            assert {f"netns {dead}-node", f"netns {dead}-0a05"} <= set(net.removed_leftovers)
            # The host end of the link goes with the namespace holding its peer, as the kernel
            # tears that namespace down (asynchronously): listed as removed or already gone,
            # it must not be left, which host_state below checks.
            assert sleeper.wait(timeout=10) == -9
            left = network.host_state()
            assert not [name for name in left["netns"] + left["links"] if name.startswith(dead)]
            assert not (network.ETC_NETNS / f"{dead}-0a05").exists()
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    assert network.host_state() == {"netns": [], "links": [], "routes": []}


#: A test ground that dies without its clean-up: a network, a pod namespace with a process.
DIES_HARD = """
import subprocess, sys, time
from pathlib import Path
from testground import network
with network.pod_network(Path(sys.argv[1]), sys.argv[2], lock_timeout=60) as net:
    with net.client_netns(0) as netns:
        sleeper = subprocess.Popen(network.in_netns(netns, ["sleep", "300"]))
        print(netns, sleeper.pid, flush=True)
        time.sleep(300)
"""


def test_a_sigkilled_run_leaves_what_the_next_start_removes(tmp_path: Path) -> None:
    tests_dir = Path(network.__file__).resolve().parents[1]
    run = subprocess.Popen(
        [sys.executable, "-c", DIES_HARD, str(tmp_path / "dead"), SERVICE_CLUSTER_IP_RANGE],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(tests_dir)),
    )
    try:
        assert run.stdout is not None
        netns, sleeper = run.stdout.readline().split()
        run.kill()
        run.wait(timeout=10)
        left = network.host_state()
        assert netns in left["netns"] and left["links"] and len(left["routes"]) == 4
        with network.pod_network(tmp_path / "next", SERVICE_CLUSTER_IP_RANGE, lock_timeout=60) as net:
            assert f"netns {netns}" in net.removed_leftovers
            assert (
                not Path("/proc", sleeper).exists()
                or "sleep" not in Path("/proc", sleeper, "cmdline").read_text()
            )
    finally:
        if run.poll() is None:
            run.kill()
    assert network.host_state() == {"netns": [], "links": [], "routes": []}
