"""A new GPU kind joins a ``gpuKinds: Auto`` fleet under load: version 2 rolls out with no failed request.

STAND-IN: TensorRT, the GPUs and Triton's TensorRT backend. The pod network's node (an A10G,
compute 8.6) and a joining L4 node (8.9) run their builder pods with the stand-in TensorRT
(``testground.standin_tensorrt``: the "plan" is a header and the ONNX bytes), and Triton serves
a plan through the stand-in TensorRT backend (``testground.standin_backends.tensorrt_standin``),
which runs those ONNX bytes with onnxruntime and picks the file from ``cc_model_filenames``
by the capability the node agent gives the pod from its node. No plan's speed or accuracy is
shown; what is real: the control plane, the operator's fleet view, builds pinned by the
compute labels, publish, the Deployment's affinity and rollout, kube-proxy and the Service.

Both nodes carry a label of this test (``FLEET_LABEL``), which Triton's nodeSelector picks, so
the fleet the operator reads is exactly these two. The joining node has one CPU: enough for a
build pod (it requests one), too little for a Triton pod (it requests more), so Triton stays on
the pod network's node, where the client reaches it through the Service's ClusterIP. S3 is
reached from the pod network through a forwarder on the host's end of the network link.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from testground.clusternet import NETWORK_NODES, ClusterNetwork, ready_endpoints
from testground.loadclient import Load, bounded_load
from testground.models import OnnxModels
from testground.network import HOST_ADDRESS
from testground.nodeagent import gpu_node, start_node_agent
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import GPU_TOLERATION, POD_NETWORK_TOLERATION, NodeSpec
from testground.operator_run import OperatorProcess, is_ready, triton_pods, wait_for_trn
from testground.s3 import PausableProxy, S3Server
from testground.waiting import wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "fleetroll"
MODEL = "resnet18"
TIMEOUT = 240.0
FLEET_LABEL = "testground.tritonresnet.io/standin-fleet"
#: 5 requests a second for at most 240 s (1,200 requests), 10 s each; 3 s before and after.
LOAD = Load(rate=5.0, max_requests=1200, max_seconds=240.0, request_timeout=10.0)
TRAFFIC_BEFORE = 3.0  # seconds of load before the kind joins
TRAFFIC_AFTER = 3.0  # and after version 1's pod is gone
JOINING = dataclasses.replace(
    gpu_node("join-l4-0", "NVIDIA-L4", 8, 9, "g6.xlarge", standin_tensorrt=True), cpu="1"
)
TRITON_CPU = "1100m"  #: more than the joining node has


@pytest.fixture(scope="module")
def pod_network_nodes() -> tuple[NodeSpec, ...]:
    """The pod network's first A10G with the stand-in TensorRT for its builder pods."""
    first, *others = NETWORK_NODES
    return (dataclasses.replace(first, standin_tensorrt=True), *others)


@pytest.fixture
def s3_for_pods(s3: S3Server) -> Iterator[str]:
    """An S3 endpoint that pods on the network reach (and host processes too): a forwarder on
    the host's end of the link to the moto server."""
    direct = urlparse(s3.direct_endpoint)
    proxy = PausableProxy((direct.hostname or "127.0.0.1", direct.port or 80), host=HOST_ADDRESS)
    try:
        yield f"http://{HOST_ADDRESS}:{proxy.port}"
    finally:
        proxy.stop()


def label_node(kube: Kube, node: str, value: str | None) -> None:
    kube.patch(f"/api/v1/nodes/{node}", {"metadata": {"labels": {FLEET_LABEL: value}}})


def test_a_joining_gpu_kind_rolls_out_version_two_with_no_failed_request_with_standin_tensorrt(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    s3_for_pods: str,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    """STAND-IN TensorRT and TensorRT backend (see the module docstring). Version 1 has the 8.6
    plan, served on the pod network; an 8.9 node joins the fleet while a bounded client sends
    through the ClusterIP; one build on it, version 2 with both plans, the rollout: no request
    fails and answers come from versions 1 and 2."""
    cp = operator.cp
    network_node = pod_network.node.name
    with cp.throwaway_namespace("fleetroll") as namespace:
        label_node(kube, network_node, "join")
        try:
            uri = s3.upload(onnx_models.path(MODEL), f"{namespace}/model.onnx")
            trn = {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {
                    "source": {"uri": uri, "endpoint": s3_for_pods, "credentialsSecret": "s3-credentials"},
                    "model": {"name": MODEL, "format": "tensorrt"},
                    "engine": {"gpuKinds": "Auto", "maxBatchSize": 4, "workspaceMiB": 1024},
                    "serving": {
                        "release": "25.01",
                        "replicas": 1,
                        "instanceCount": 1,
                        "nodeSelector": {FLEET_LABEL: "join"},
                        "tolerations": [GPU_TOLERATION, POD_NETWORK_TOLERATION],
                        "resources": {"requests": {"cpu": TRITON_CPU}},
                    },
                    "repository": {"create": {"size": "1Gi"}},
                },
            }
            docs = yaml.safe_dump_all([s3.credentials_secret(namespace), trn])
            cp.kubectl("apply", "-f", "-", input=docs)
            first = wait_for_trn(
                cp, namespace, NAME, is_ready(), "Ready at version 1", timeout=TIMEOUT, operator=operator
            )["status"]
            assert first["modelVersion"] == 1
            assert [t["name"] for t in first["targets"]] == ["sm86"]
            (old,) = triton_pods(kube, namespace, NAME)
            assert old["spec"]["nodeName"] == network_node
            old_ip = old["status"]["podIP"]
            wait_for(
                lambda: ready_endpoints(kube, namespace, NAME) == [old_ip] or None,
                "the Service's endpoint",
                TIMEOUT,
            )
            cluster_ip: str = kube.get(f"/api/v1/namespaces/{namespace}/services/{NAME}")["spec"]["clusterIP"]

            with (
                bounded_load(
                    pod_network,
                    namespace,
                    cluster_ip,
                    MODEL,
                    LOAD,
                    tmp_path,
                    before=TRAFFIC_BEFORE,
                    after=TRAFFIC_AFTER,
                ) as result,
                start_node_agent(cp, tmp_path / "joining", (JOINING,), agent_id="standin-fleet-join"),
            ):
                started = time.monotonic()
                label_node(kube, JOINING.name, "join")
                second = wait_for_trn(
                    cp,
                    namespace,
                    NAME,
                    lambda t: is_ready()(t) and t["status"].get("modelVersion") == 2,
                    "Ready at version 2",
                    timeout=TIMEOUT,
                    operator=operator,
                )["status"]
                wait_for(
                    lambda: (
                        [p for p in triton_pods(kube, namespace, NAME) if p["status"].get("podIP") == old_ip]
                        == []
                        or None
                    ),
                    "version 1's pod gone",
                    TIMEOUT,
                    every=0.2,
                )
                rolled_seconds = time.monotonic() - started
            targets = {t["name"]: t for t in second["targets"]}
            (new,) = triton_pods(kube, namespace, NAME)
            print(
                f"\na kind joins -> version 2 through the Service: {result['sent']} requests in "
                f"{result['seconds']:.1f} s, {len(result['failures'])} failed, versions "
                f"{result['versions']}; version 1's pod gone {rolled_seconds:.1f} s after the join"
            )
            assert result["failures"] == [], result["failures"][:5]
            assert result["ok"] == result["sent"]
            assert result["versions"] == ["1", "2"]
            assert sorted(targets) == ["sm86", "sm89"]
            assert targets["sm89"]["node"] == JOINING.name
            assert targets["sm86"]["engineKey"] == first["targets"][0]["engineKey"], "the 8.6 plan reused"
            assert new["spec"]["nodeName"] == network_node
            assert ready_endpoints(kube, namespace, NAME) == [new["status"]["podIP"]]
        finally:
            label_node(kube, network_node, None)
            cp.kubectl("delete", "node", JOINING.name, "--ignore-not-found", "--wait=false")
