"""Service networking on top of ``testground.network``: kube-proxy, CoreDNS, kube-dns.

``start_cluster_network(cp, workdir)`` brings up the pod network and then:

* a TCP forwarder on the host's end of the link to the apiserver (which listens
  on loopback only), for kube-proxy inside the node namespace; its kubeconfig
  names the apiserver's certificate name (``tls-server-name``), so TLS is
  verified as usual;
* kube-proxy in nftables mode in the node namespace, as user
  ``system:kube-proxy`` (the upstream ``system:node-proxier`` role), with every
  conntrack setting left as it is (``0``): it changes nothing outside its table;
* CoreDNS (our build: no forwarding plugin) on the host's end of the link,
  port 53, answering ``cluster.local`` and reverse lookups from the API;
* the ``kube-dns`` Service in ``kube-system`` at ``DNS_SERVICE_IP`` with an
  EndpointSlice pointing at CoreDNS, which is what pods' resolv.conf names;
* an EndpointSlice for the ``kubernetes`` Service (the forwarder), so pods
  reach the apiserver at ``https://kubernetes.default.svc`` as in a cluster;
* a node agent for two tainted GPU nodes (``NETWORK_NODES``, each with a block
  of the pod range) whose pods run on the network, and then kube-proxy, which
  waits for its Node's addresses.

Everything is stopped (processes by PID) and removed on exit.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from testground.binaries import ensure_network_binaries, nft_env
from testground.controlplane import (
    Component,
    ControlPlane,
    _wait_ready,
    free_port,
    http_get,
    write_kubeconfig,
)
from testground.network import (
    DNS_SERVICE_IP,
    HOST_ADDRESS,
    NODE_ADDRESS,
    PodNetwork,
    in_netns,
    pod_network,
)
from testground.nodeagent import NodeAgent, start_node_agent
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import A10G_PRODUCT, NodeSpec
from testground.s3 import PausableProxy

KUBE_PROXY_HEALTHZ_PORT = 10256
#: The nftables table ``ClusterNetwork.dropped`` adds in the node namespace.
DROP_TABLE = "testground_drop"
DNS_MANAGER = "testground"


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> dict[str, Any]:
    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testground",
                # The forwarder's address is not in the serving certificate; its name is.
                "cluster": {
                    "server": server,
                    "certificate-authority-data": b64(ca),
                    "tls-server-name": "127.0.0.1",
                },
            }
        ],
        "users": [
            {"name": user, "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)}}
        ],
        "contexts": [{"name": user, "context": {"cluster": "testground", "user": user}}],
        "current-context": user,
    }


def corefile(health_port: int, ready_port: int, kubeconfig: Path) -> str:
    return f"""cluster.local:53 in-addr.arpa:53 {{
    bind {HOST_ADDRESS}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa {{
        kubeconfig {kubeconfig} coredns
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""


def host_endpoint_slice(namespace: str, service: str, ports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An EndpointSlice putting the selectorless Service ``service`` at ``HOST_ADDRESS`` (a
    process on the host's end of the link, where no pod backs it); ``ports`` as a slice lists them."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-testground",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": DNS_MANAGER,
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [HOST_ADDRESS], "conditions": {"ready": True}}],
        "ports": [dict(port) for port in ports],
    }


def kube_dns_objects() -> list[dict[str, Any]]:
    """kube-dns without a selector (CoreDNS is no pod here) and its EndpointSlice."""
    ports = [("dns", "UDP"), ("dns-tcp", "TCP")]
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {
            "clusterIP": DNS_SERVICE_IP,
            "ports": [
                {"name": name, "protocol": proto, "port": 53, "targetPort": 53} for name, proto in ports
            ],
        },
    }
    endpoints = host_endpoint_slice(
        "kube-system", "kube-dns", [{"name": name, "protocol": proto, "port": 53} for name, proto in ports]
    )
    return [service, endpoints]


def kubernetes_endpoints(port: int) -> dict[str, Any]:
    """The ``kubernetes`` Service's EndpointSlice: the apiserver (through the forwarder) for pods.

    The apiserver runs with ``--endpoint-reconciler-type=none`` (its own reconciler
    would publish its loopback address, which the API refuses), so nothing else
    writes one.
    """
    return host_endpoint_slice("default", "kubernetes", [{"name": "https", "protocol": "TCP", "port": port}])


#: The nodes whose pods are on the network: A10G GPU nodes, tainted for the network, each with
#: its own block of the pod range.
#:
#: Two Node objects served by one node agent on one node namespace, not a second node namespace
#: with its own agent and kube-proxy routed through the host: the kubelets are emulated anyway,
#: and what the drain test measures is the control plane's side (eviction, the
#: PodDisruptionBudget, the scheduler placing the replacement, endpoint propagation to
#: kube-proxy) and the pod's (preStop, SIGTERM, grace period). A pod on either node is a real
#: network namespace behind the same kube-proxy, as two pods behind a client's node's kube-proxy
#: are. Routing between node namespaces would need forwarding on the host, which this network
#: never changes. The cost: both Nodes report the one node address, and no packet crosses a
#: node-to-node link.
NETWORK_NODES = tuple(
    NodeSpec(
        name=f"net-a10g-{index}",
        gpu_product=A10G_PRODUCT,
        compute_major=8,
        compute_minor=6,
        gpus=2,
        instance_type="g5.2xlarge",
        internal_ip=NODE_ADDRESS,
        pod_network=True,
        pod_cidr=f"10.244.{index}.0/24",
    )
    for index in range(2)
)
NETWORK_NODE = NETWORK_NODES[0]  #: the one kube-proxy names as its own
NETWORK_AGENT_ID = "testground-network"


@dataclass
class ClusterNetwork:
    """The pod network with its node agent, kube-proxy and CoreDNS running."""

    net: PodNetwork
    agent: NodeAgent
    kube_proxy: Component
    coredns: Component
    startup_seconds: dict[str, float]
    binaries: Path  #: kube-proxy, coredns and nft (``ensure_network_binaries``)

    @property
    def node(self) -> NodeSpec:
        return self.agent.nodes[0]

    @property
    def nodes(self) -> Sequence[NodeSpec]:
        return self.agent.nodes

    def client_netns(
        self, index: int = 0, namespace: str = "default"
    ) -> contextlib.AbstractContextManager[str]:
        """A pod-like network namespace (address, routes, resolv.conf) for a test's client processes."""
        return self.net.client_netns(index, namespace)

    @contextlib.contextmanager
    def dropped(self, address: str, port: int) -> Iterator[None]:
        """TCP to ``address:port`` dropped where it enters the node, before kube-proxy's DNAT:
        a Service's ClusterIP stops answering while its pods still do. A table of our own in
        the node namespace (kube-proxy's is left alone), deleted when the block exits."""
        nft = ["nft"]  # found on nft_env's PATH, as kube-proxy finds it
        env = nft_env(self.binaries)
        rules = (
            f"table ip {DROP_TABLE} {{ chain prerouting {{ type filter hook prerouting priority raw; "
            f"ip daddr {address} tcp dport {port} drop; }}; }}"
        )
        netns = self.net.spec.node_netns
        added = subprocess.run(
            in_netns(netns, [*nft, rules]), env=env, capture_output=True, text=True, timeout=30
        )
        if added.returncode != 0:
            raise RuntimeError(f"nft {rules}: {added.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(
                in_netns(netns, [*nft, "delete", "table", "ip", DROP_TABLE]), env=env, check=False, timeout=30
            )


def ready_endpoints(kube: Kube, namespace: str, service: str) -> list[str]:
    """The addresses of a Service's ready endpoints, from its EndpointSlices (what kube-proxy routes to)."""
    slices = kube.get(
        f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
        labelSelector=f"kubernetes.io/service-name={service}",
    )["items"]
    return sorted(
        address
        for item in slices
        for endpoint in item.get("endpoints") or []
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint["addresses"]
    )


def _wait_http(component: Component, url: str) -> float:
    return _wait_ready(component, lambda: (http_get(url) or (0, ""))[0] == 200)


@contextlib.contextmanager
def start_cluster_network(
    cp: ControlPlane, workdir: Path, nodes: Sequence[NodeSpec] = NETWORK_NODES
) -> Iterator[ClusterNetwork]:
    """The pod network, CoreDNS, a node agent for ``nodes`` on it and kube-proxy; all gone on exit.

    The agent leaves storage to the cluster's main agent (a pod here mounts
    hostPath folders, or claims when the main agent runs too).
    """
    from testground.controlplane import SERVICE_CLUSTER_IP_RANGE

    binaries = ensure_network_binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        net = stack.enter_context(pod_network(workdir, SERVICE_CLUSTER_IP_RANGE))
        startup: dict[str, float] = {"network": time.monotonic() - started}
        api = urlparse(cp.server)
        forwarder = PausableProxy((api.hostname or "127.0.0.1", api.port or 443), host=HOST_ADDRESS)
        stack.callback(forwarder.stop)
        stack.enter_context(cp.applied([*kube_dns_objects(), kubernetes_endpoints(forwarder.port)]))

        health_port, ready_port = free_port(), free_port()
        coredns_config = write_kubeconfig(
            workdir / "coredns.kubeconfig",
            _kubeconfig(cp.server, cp.ca_file, cp.pki.admin.cert, cp.pki.admin.key, "coredns"),
        )
        (workdir / "Corefile").write_text(corefile(health_port, ready_port, coredns_config))
        coredns = Component(
            "coredns",
            [str(binaries / "coredns"), "-conf", str(workdir / "Corefile")],
            workdir / "logs" / "coredns.log",
        )
        coredns.start()
        stack.callback(coredns.stop)
        startup["coredns"] = _wait_http(coredns, f"http://127.0.0.1:{ready_port}/ready")

        # The Nodes outlive their agent otherwise (NotReady, tainted: harmless, but not ours to leave).
        node_names = [node.name for node in nodes]
        stack.callback(
            cp.kubectl, "delete", "node", *node_names, "--ignore-not-found", "--wait=false", check=False
        )
        agent = stack.enter_context(
            start_node_agent(
                cp,
                workdir / "nodes",
                list(nodes),
                pod_network=net.spec_path,
                storage=False,
                agent_id=NETWORK_AGENT_ID,
            )
        )

        # kube-proxy waits for its Node's addresses, so it starts once the agent registered it.
        proxy_cert = cp.pki.issue_client("kube-proxy", "system:kube-proxy")
        proxy_config = write_kubeconfig(
            workdir / "kube-proxy.kubeconfig",
            _kubeconfig(
                f"https://{HOST_ADDRESS}:{forwarder.port}",
                cp.ca_file,
                proxy_cert.cert,
                proxy_cert.key,
                "system:kube-proxy",
            ),
        )
        kube_proxy = Component(
            "kube-proxy",
            in_netns(
                net.spec.node_netns,
                [
                    str(binaries / "kube-proxy"),
                    "--proxy-mode=nftables",
                    f"--kubeconfig={proxy_config}",
                    f"--hostname-override={nodes[0].name}",
                    f"--bind-address={NODE_ADDRESS}",
                    f"--cluster-cidr={net.spec.pod_cidr}",
                    f"--healthz-bind-address={NODE_ADDRESS}:{KUBE_PROXY_HEALTHZ_PORT}",
                    "--metrics-bind-address=",
                    # 0: leave the conntrack settings (machine-wide ones among them) as they are.
                    "--conntrack-max-per-core=0",
                    "--conntrack-tcp-timeout-established=0",
                    "--conntrack-tcp-timeout-close-wait=0",
                    "--v=2",
                ],
            ),
            workdir / "logs" / "kube-proxy.log",
            env=nft_env(binaries),  # kube-proxy runs nft, found on PATH
        )
        kube_proxy.start()
        stack.callback(kube_proxy.stop)
        startup["kube-proxy"] = _wait_http(
            kube_proxy, f"http://{NODE_ADDRESS}:{KUBE_PROXY_HEALTHZ_PORT}/healthz"
        )
        startup["total"] = time.monotonic() - started
        yield ClusterNetwork(
            net=net,
            agent=agent,
            kube_proxy=kube_proxy,
            coredns=coredns,
            startup_seconds=startup,
            binaries=binaries,
        )
