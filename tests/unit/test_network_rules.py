"""The pod network's pure parts: addresses, names, resolv.conf, CoreDNS' config, kube-dns."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest
from testground.clusternet import (
    NETWORK_NODE,
    NETWORK_NODES,
    corefile,
    kube_dns_objects,
    kubernetes_endpoints,
)
from testground.network import (
    DNS_SERVICE_IP,
    HOST_ADDRESS,
    POD_CIDR,
    PodNetworkSpec,
    blackhole_routes,
    in_netns,
    resolv_conf,
)
from testground.nodeagent_nodes import POD_NETWORK_TAINT, node_object, node_status, node_taints
from testground.nodeagent_runtime import IpAllocator, node_allocators

SPEC = PodNetworkSpec(run="abc123", node_netns="tgnabc123-node")


def test_pod_addresses_are_in_the_pod_range_and_skip_its_network_address() -> None:
    assert SPEC.address(0) == "10.244.0.1"
    assert SPEC.address(255) == "10.244.1.0"
    assert SPEC.address(SPEC.size - 1) == "10.244.255.254"
    with pytest.raises(RuntimeError):
        SPEC.address(SPEC.size)
    assert all(ipaddress.ip_address(SPEC.address(i)) in ipaddress.ip_network(POD_CIDR) for i in (0, 9, 700))


def test_pod_names_are_derived_from_the_address_and_fit_an_interface_name() -> None:
    netns, link = SPEC.pod_names("10.244.10.5")
    assert (netns, link) == ("tgnabc123-0a05", "tgnabc1230a05")
    assert len(link) <= 15  # IFNAMSIZ - 1
    assert SPEC.pod_names("10.244.10.5") == (netns, link)  # a restarted agent finds the same


def test_spec_round_trips_through_json_for_the_agent_flag() -> None:
    assert PodNetworkSpec.from_json(SPEC.to_json()) == SPEC


def test_resolv_conf_is_what_a_kubelet_writes_for_a_cluster_first_pod() -> None:
    assert resolv_conf(SPEC, "shop") == (
        f"nameserver {DNS_SERVICE_IP}\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )


def test_blackholes_cover_each_whole_range_with_our_protocol() -> None:
    assert blackhole_routes(["10.244.0.0/16", "10.0.0.0/16"]) == [
        ["blackhole", "10.244.0.0/16", "metric", "4000", "proto", "177"],
        ["blackhole", "10.0.0.0/16", "metric", "4000", "proto", "177"],
    ]


def test_in_netns_runs_the_program_itself_inside() -> None:
    assert in_netns("tgnx-0a05", ["tritonserver", "--http-port=8000"]) == [
        "ip",
        "netns",
        "exec",
        "tgnx-0a05",
        "tritonserver",
        "--http-port=8000",
    ]


def test_corefile_binds_the_host_link_and_has_no_forwarding() -> None:
    text = corefile(1001, 1002, Path("/k/coredns.kubeconfig"))
    assert f"bind {HOST_ADDRESS}" in text
    assert "kubernetes cluster.local in-addr.arpa" in text
    assert "health 127.0.0.1:1001" in text and "ready 127.0.0.1:1002" in text
    assert "forward" not in text


def test_kube_dns_is_selectorless_at_its_ip_with_a_slice_to_coredns() -> None:
    service, endpoints = kube_dns_objects()
    assert service["spec"]["clusterIP"] == DNS_SERVICE_IP
    assert "selector" not in service["spec"]
    assert endpoints["metadata"]["labels"]["kubernetes.io/service-name"] == "kube-dns"
    assert endpoints["endpoints"][0]["addresses"] == [HOST_ADDRESS]
    assert {p["protocol"] for p in endpoints["ports"]} == {"UDP", "TCP"}
    api = kubernetes_endpoints(4321)
    assert api["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
    assert api["ports"] == [{"name": "https", "protocol": "TCP", "port": 4321}]


def test_network_node_is_tainted_and_reports_the_node_namespace_address() -> None:
    assert POD_NETWORK_TAINT in node_taints(NETWORK_NODE)
    assert POD_NETWORK_TAINT in node_object(NETWORK_NODE, "a")["spec"]["taints"]
    addresses = node_status(NETWORK_NODE, "t", "t")["addresses"]
    assert {"type": "InternalIP", "address": NETWORK_NODE.internal_ip} in addresses


def test_ip_allocator_hands_out_the_network_range_when_given_one() -> None:
    allocator = IpAllocator(SPEC.address, SPEC.size)
    first, second = allocator.allocate(), allocator.allocate()
    assert (first, second) == ("10.244.0.1", "10.244.0.2")
    allocator.release(first)
    assert not allocator.claim(second)
    assert IpAllocator().allocate() == "127.0.1.1"


def test_network_nodes_have_disjoint_blocks_of_the_pod_range_in_their_node_objects() -> None:
    blocks = [ipaddress.ip_network(node.pod_cidr) for node in NETWORK_NODES]
    assert len({node.name for node in NETWORK_NODES}) == len(NETWORK_NODES) == 2
    assert all(block.subnet_of(ipaddress.ip_network(POD_CIDR)) for block in blocks)
    assert not blocks[0].overlaps(blocks[1])
    # The client namespaces take addresses from the top of the range: in no node's block.
    assert all(ipaddress.ip_address(SPEC.address(SPEC.size - 1)) not in block for block in blocks)
    spec = node_object(NETWORK_NODES[1], "a")["spec"]
    assert (spec["podCIDR"], spec["podCIDRs"]) == (NETWORK_NODES[1].pod_cidr, [NETWORK_NODES[1].pod_cidr])
    assert "podCIDR" not in node_object(replace(NETWORK_NODE, pod_cidr=""), "a")["spec"]


def test_each_network_node_allocates_from_its_own_block() -> None:
    allocators = node_allocators(SPEC, NETWORK_NODES)
    first = [allocators[node.name].allocate() for node in NETWORK_NODES]
    assert first == ["10.244.0.1", "10.244.1.1"]
    again = allocators[NETWORK_NODES[1].name]
    assert {again.allocate() for _ in range(253)} | {"10.244.1.1"} == {f"10.244.1.{i}" for i in range(1, 255)}
    with pytest.raises(RuntimeError, match="no free address"):
        again.allocate()
    assert node_allocators(SPEC, [replace(NETWORK_NODE, pod_cidr="")]) == {}


def test_node_blocks_outside_the_range_or_overlapping_are_refused() -> None:
    with pytest.raises(ValueError, match="outside the pod range"):
        node_allocators(SPEC, [replace(NETWORK_NODE, pod_cidr="10.99.0.0/24")])
    with pytest.raises(ValueError, match="overlap"):
        node_allocators(SPEC, [NETWORK_NODES[0], replace(NETWORK_NODES[1], pod_cidr="10.244.0.0/23")])
