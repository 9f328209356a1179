"""Pytest fixtures of the test ground (registered from tests/conftest.py).

Each component's module owns its logic; this module only wires them into
pytest so there is one list of what a test can ask for:

* ``control_plane``  session: etcd, kube-apiserver, controller-manager, scheduler
* ``node_agent``     session: the emulated nodes' kubelet (a process), see testground.nodeagent
* ``cluster``        session: the control plane plus emulated GPU nodes and storage
* ``namespace``      function: a fresh namespace in ``cluster``, deleted afterwards
                     (ControlPlane.throwaway_namespace, for other scopes)
* ``kube``           function: the test ground's small API client (testground.nodeagent_kube)
                     as admin of ``control_plane``, closed afterwards
* ``pod_network``    module, opt-in: pods in network namespaces, kube-proxy and CoreDNS
                     (testground.clusternet; needs root; skipped without it), on the
                     machines ``pod_network_nodes`` gives (a module may override it)
* ``keda``           module, opt-in: KEDA's operator and external-metrics API server on
                     ``pod_network``, served through the aggregation layer (testground.keda)
* ``s3``             session: moto's standalone server on loopback with a bucket
* ``onnx_models``    session: ResNet ONNX files made with CPU torch, cached
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from testground.controlplane import ControlPlane, start_control_plane
from testground.models import OnnxModels, ensure_models
from testground.nodeagent import NodeAgent, start_node_agent
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import NodeSpec
from testground.s3 import S3Server, start_s3

if TYPE_CHECKING:
    from testground.clusternet import ClusterNetwork
    from testground.keda import Keda


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with start_control_plane(tmp_path_factory.mktemp("control-plane")) as cp:
        yield cp


@pytest.fixture(scope="session")
def node_agent(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeAgent]:
    """The emulated GPU nodes' kubelet, as its own process (tests may kill and restart it)."""
    with start_node_agent(control_plane, tmp_path_factory.mktemp("nodes")) as agent:
        yield agent


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, node_agent: NodeAgent) -> ControlPlane:
    """The control plane with emulated GPU nodes (and their storage) running."""
    return control_plane


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    # Fixtures of other scopes, or without the nodes, use the same context manager.
    with cluster.throwaway_namespace() as name:
        yield name


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[Kube]:
    client = Kube(str(control_plane.kubeconfig))
    try:
        yield client
    finally:
        client.api.close()


@pytest.fixture(scope="module")
def pod_network_nodes() -> tuple[NodeSpec, ...]:
    """The machines ``pod_network`` runs; a test module overrides this fixture to change them."""
    from testground.clusternet import NETWORK_NODES

    return NETWORK_NODES


@pytest.fixture(scope="module")
def pod_network(
    control_plane: ControlPlane,
    tmp_path_factory: pytest.TempPathFactory,
    pod_network_nodes: tuple[NodeSpec, ...],
) -> Iterator[ClusterNetwork]:
    """A node whose pods are on a real network, Services routed by kube-proxy, names by CoreDNS.

    Module-scoped: one machine runs one pod network at a time (testground.network).
    """
    from testground.clusternet import start_cluster_network
    from testground.network import available

    why_not = available()
    if why_not:
        pytest.skip(why_not)
    workdir = tmp_path_factory.mktemp("pod-network")
    with start_cluster_network(control_plane, workdir, pod_network_nodes) as network:
        yield network


@pytest.fixture(scope="module")
def keda(
    control_plane: ControlPlane, pod_network: ClusterNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keda]:
    """KEDA (built from its module the first time) with its CRDs, its APIService Available."""
    from testground.keda import start_keda

    with start_keda(control_plane, pod_network, tmp_path_factory.mktemp("keda")) as running:
        yield running


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with start_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def onnx_models() -> OnnxModels:
    return ensure_models()
