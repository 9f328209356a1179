"""Services on a real pod network: a Triton pod answers at its Service's ClusterIP and DNS name.

The ``pod_network`` fixture (testground.clusternet) runs the pod in a network
namespace of its own with an address from the pod range; the EndpointSlice
controller publishes that address, kube-proxy (nftables) routes the ClusterIP
to it and CoreDNS answers ``<service>.<namespace>.svc`` from the API. The DNS
name is resolved where a pod resolves it: in a pod-like namespace whose
resolv.conf names kube-dns, by glibc, as any client program would.

Two servers: a bare Triton Deployment (``add_one``), and a TritonResNet the
real operator makes Ready with its Triton pods placed on the network's node
(``spec.serving.nodeSelector`` and ``tolerations``), answered through the
Service the operator rendered.

Every request is bounded: a handful per address, each with a timeout, and the
client process has a deadline of its own.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from testground.clusternet import ClusterNetwork, ready_endpoints
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.network import POD_CIDR, in_netns
from testground.nodeagent_kube import Kube
from testground.operator_run import (
    OperatorProcess,
    apply_sample,
    condition,
    get_trn,
    is_ready,
    network_placement,
    serve_on_network,
    wait_for_trn,
)
from testground.readme_blocks import POD_NETWORK, marked_blocks
from testground.s3 import S3Server
from testground.triton import add_one_deployment, add_one_model, infer_add_one
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton]

TIMEOUT = 120.0
REQUESTS = 5  #: per address
REQUEST_TIMEOUT = 10.0  # seconds, each
CLIENT_DEADLINE = 60.0  # seconds, the whole in-namespace client
#: A Service check's change reaches status within one verify interval and one timeout
#: (e2e/conftest.py ``operator_verifies_services``), plus a pass.
SERVICE_CHECK_DEADLINE = 90.0
REPO = Path(__file__).resolve().parents[2]

#: Runs in the client's network namespace: resolve the name as a pod would, then infer.
CLIENT = """
import json, socket, sys, urllib.request
host, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, 8000, proto=socket.IPPROTO_TCP)})
body = json.dumps({"inputs": [{"name": "INPUT", "shape": [1], "datatype": "FP32", "data": [41.0]}]}).encode()
answers = []
for _ in range(count):
    request = urllib.request.Request(f"http://{host}:8000/v2/models/add_one/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answers.append(json.load(response)["outputs"][0]["data"][0])
print(json.dumps({"addresses": addresses, "answers": answers}))
"""

#: A TritonResNet's model by its Service's DNS name: metadata, then inferences of zeros at batch 1.
MODEL_CLIENT = """
import json, socket, sys
import numpy as np
import tritonclient.http as httpclient
host, model, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
addresses = sorted({info[4][0] for info in socket.getaddrinfo(host, 8000, proto=socket.IPPROTO_TCP)})
client = httpclient.InferenceServerClient(f"{host}:8000", connection_timeout=timeout, network_timeout=timeout)
metadata = client.get_model_metadata(model)
source, target = metadata["inputs"][0], metadata["outputs"][0]
shape = [1 if int(d) < 0 else int(d) for d in source["shape"]]
tensor = httpclient.InferInput(source["name"], shape, source["datatype"])
tensor.set_data_from_numpy(np.zeros(shape, dtype=np.float32))
shapes = [list(client.infer(model, [tensor]).as_numpy(target["name"]).shape) for _ in range(count)]
print(json.dumps({"addresses": addresses, "shapes": shapes}))
"""

#: The apiserver as a pod reaches it: the kubernetes Service's name, TLS verified with the cluster CA.
API_CLIENT = """
import json, ssl, sys, urllib.request
context = ssl.create_default_context(cafile=sys.argv[1])
url = "https://kubernetes.default.svc/version"
with urllib.request.urlopen(url, context=context, timeout=10) as response:
    print(json.load(response)["gitVersion"])
"""


def triton_objects(namespace: str, node: str, repository: Path) -> list[dict[str, Any]]:
    """add_one's Triton pinned to the network's node, serving from a local folder, and its Service."""
    placement = network_placement(node, cpu_only=True)  # the same fields in a pod spec
    deployment = add_one_deployment(namespace, {"hostPath": {"path": str(repository)}}, placement)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "triton", "namespace": namespace},
        "spec": {
            "selector": {"app": "triton"},
            "ports": [{"name": "http", "port": 8000, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def test_triton_answers_at_its_service_cluster_ip_and_dns_name(
    control_plane: ControlPlane, pod_network: ClusterNetwork, kube: Kube, tmp_path: Path
) -> None:
    repository = tmp_path / "models"
    add_one_model(repository)
    with control_plane.throwaway_namespace("net") as namespace:
        objects = {
            "apiVersion": "v1",
            "kind": "List",
            "items": triton_objects(namespace, pod_network.node.name, repository),
        }
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(objects))

        # The pod's address is from the pod range, and the EndpointSlice controller takes it.
        endpoints = wait_for(
            lambda: ready_endpoints(kube, namespace, "triton") or None,
            "a ready endpoint of Service triton",
            TIMEOUT,
        )
        (pod,) = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=triton")["items"]
        pod_ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR)
        assert endpoints == [pod_ip]
        pod_netns = pod_network.net.spec.pod_names(pod_ip)[0]
        assert Path("/run/netns", pod_netns).exists()

        # The ClusterIP from the host: kube-proxy's rules in the node namespace translate it.
        cluster_ip = kube.get(f"/api/v1/namespaces/{namespace}/services/triton")["spec"]["clusterIP"]
        assert [
            infer_add_one(f"http://{cluster_ip}:8000", 41.0, REQUEST_TIMEOUT) for _ in range(REQUESTS)
        ] == [42.0] * REQUESTS

        # The DNS name from a pod's point of view: its resolv.conf, kube-dns' ClusterIP, CoreDNS.
        name = f"triton.{namespace}.svc"
        with pod_network.client_netns(0, namespace) as client_netns:
            client = subprocess.run(
                in_netns(
                    client_netns, [sys.executable, "-c", CLIENT, name, str(REQUESTS), str(REQUEST_TIMEOUT)]
                ),
                capture_output=True,
                text=True,
                timeout=CLIENT_DEADLINE,
            )
            api = subprocess.run(
                in_netns(client_netns, [sys.executable, "-c", API_CLIENT, str(control_plane.ca_file)]),
                capture_output=True,
                text=True,
                timeout=CLIENT_DEADLINE,
            )
        assert client.returncode == 0, client.stderr
        answer = json.loads(client.stdout)
        assert answer == {"addresses": [cluster_ip], "answers": [42.0] * REQUESTS}
        assert api.returncode == 0, api.stderr
        assert api.stdout.strip().startswith("v1.")

        # The pod's namespace goes with the pod.
        kube.delete(
            f"/apis/apps/v1/namespaces/{namespace}/deployments/triton", {"propagationPolicy": "Foreground"}
        )
        wait_for(
            lambda: not Path("/run/netns", pod_netns).exists(), "the pod's network namespace to go", TIMEOUT
        )


def test_a_ready_tritonresnet_serves_at_its_service_cluster_ip_and_dns_name(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
) -> None:
    """The operator makes it Ready once the pod and the Service answer (the Service reached as
    a client reaches it: its ClusterIP, through kube-proxy); the Service routes to the pod by
    ClusterIP and by name. With TCP to the ClusterIP dropped at the node and the pod still
    answering, Ready turns False naming the Service; restored, it turns True again."""
    cp = operator.cp
    with cp.throwaway_namespace("netop") as namespace:
        uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/model.onnx")
        placement = network_placement(pod_network.node.name)
        apply_sample(cp, namespace, s3, uri, name="classifier", model_name="resnet18", serving=placement)
        wait_for_trn(cp, namespace, "classifier", is_ready(), "Ready", operator=operator)

        (pod,) = kube.get(
            f"/api/v1/namespaces/{namespace}/pods", labelSelector="app.kubernetes.io/component=triton"
        )["items"]
        assert pod["spec"]["nodeName"] == pod_network.node.name
        pod_ip = pod["status"]["podIP"]
        assert ipaddress.ip_address(pod_ip) in ipaddress.ip_network(POD_CIDR)
        assert wait_for(
            lambda: ready_endpoints(kube, namespace, "classifier") == [pod_ip] or None,
            "the Service's endpoint",
            TIMEOUT,
        )
        cluster_ip = kube.get(f"/api/v1/namespaces/{namespace}/services/classifier")["spec"]["clusterIP"]

        with pod_network.client_netns(1, namespace) as client_netns:
            for host in (cluster_ip, f"classifier.{namespace}.svc"):
                argv = [
                    sys.executable,
                    "-c",
                    MODEL_CLIENT,
                    host,
                    "resnet18",
                    str(REQUESTS),
                    str(REQUEST_TIMEOUT),
                ]
                client = subprocess.run(
                    in_netns(client_netns, argv), capture_output=True, text=True, timeout=CLIENT_DEADLINE
                )
                assert client.returncode == 0, client.stderr
                assert json.loads(client.stdout) == {
                    "addresses": [cluster_ip],
                    "shapes": [[1, 1000]] * REQUESTS,
                }

        service = f"{cluster_ip}:8000"
        ready = condition(get_trn(cp, namespace, "classifier"), "Ready")
        assert (
            ready["status"] == "True"
            and f"1 endpoint(s) and the Service {service} answered" in (ready["message"])
        ), ready
        started = time.monotonic()
        with pod_network.dropped(cluster_ip, 8000):
            broken = wait_for_trn(
                cp,
                namespace,
                "classifier",
                lambda t: condition(t, "Ready").get("status") == "False",
                "Ready=False while the Service does not answer",
                timeout=SERVICE_CHECK_DEADLINE,
                operator=operator,
            )
            noticed = time.monotonic() - started
        message = condition(broken, "Ready")["message"]
        assert f"Service {service}: " in message and pod["status"]["podIP"] not in message, message
        assert condition(broken, "Ready")["reason"] == "VerificationFailed"
        restored = time.monotonic()
        wait_for_trn(cp, namespace, "classifier", is_ready(), "Ready again", SERVICE_CHECK_DEADLINE, operator)
        print(
            f"\nService check: not Ready {noticed:.1f} s after the ClusterIP stopped answering, "
            f"Ready again {time.monotonic() - restored:.1f} s after it was restored"
        )


def test_the_readmes_in_cluster_classify_block_runs_unchanged_from_a_pod(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
) -> None:
    """README step 5's blocks marked ``pod-network``, run as written in a pod-like namespace: the
    quick start's ``resnet50`` in ``vision`` (ResNet-18's ONNX under that name, as the README walk
    has it) Ready on the network's node; ``tritonresnet classify`` reaches it by the Service's
    name, which CoreDNS resolves and kube-proxy routes."""
    readme = (REPO / "README.md").read_text()
    blocks = [block for block in marked_blocks(readme) if block.ground == POD_NETWORK]
    assert blocks, "README.md marks no pod-network block"
    cp = operator.cp
    cp.create_namespace("vision")
    try:
        uri = s3.upload(onnx_models.path("resnet18"), "vision-on-the-network/model.onnx")
        serve_on_network(operator, pod_network, kube, s3, uri, "vision", "resnet50", "resnet50", 1)
        # The newcomer's shell: this virtualenv's tritonresnet first on PATH, the checkout as cwd.
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        with pod_network.client_netns(1, "vision") as client_netns:
            for block in blocks:
                run = subprocess.run(
                    in_netns(client_netns, ["bash", "-euo", "pipefail", "-c", block.code]),
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=CLIENT_DEADLINE,
                )
                assert run.returncode == 0, f"{block.describe()}\n{run.stdout}\n{run.stderr}"
                for expected in block.expects:
                    assert expected in run.stdout, f"{block.describe()}\nno {expected!r} in:\n{run.stdout}"
    finally:
        # The README walk (e2e/test_readme.py) needs the name free again.
        cp.delete_namespace("vision", wait=True)
