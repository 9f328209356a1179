"""Graceful drain on the pod network: a scale-down and a rollout lose no request.

A TritonResNet (ResNet-18) with three replicas on the network's node is Ready;
a client in a pod-like network namespace sends inferences at a constant rate
to the Service's ClusterIP, so kube-proxy picks the pod and the lag between a
pod's deletion and its leaving the Service's endpoints is part of what is
measured. Then ``kubectl scale trn --replicas=1``: two pods go through
preStop, SIGTERM and the grace period while the load goes on, and not one
request may fail. The same client through a rollout (a new source, version 2)
at one replica, where the surge pod is what keeps the Service answering.

Each request opens a connection of its own (as a client behind a load
balancer that does not pin connections does), so every request is a new
choice of kube-proxy among the endpoints it has at that moment.

The client is bounded: a fixed rate, a hard cap on requests and on time, a
timeout on each request, and it stops by itself once the test asks it to.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from testground.clusternet import ClusterNetwork, ready_endpoints
from testground.models import OnnxModels
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import GPU_TOLERATION, HOSTNAME_LABEL, POD_NETWORK_TOLERATION
from testground.operator_run import OperatorProcess, apply_sample, is_ready, serving_pods, wait_for_trn
from testground.s3 import S3Server
from testground.service_client import ClientLimits, bounded_client
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "classifier"
MODEL = "resnet18"
TIMEOUT = 180.0
RATE = 5.0  #: requests per second
MAX_REQUESTS = 600  #: the client's hard cap on requests
MAX_SECONDS = 120.0  #: and on its running time
REQUEST_TIMEOUT = 10.0  # seconds, each
TRAFFIC_BEFORE = 3.0  # seconds of load on three replicas before the scale
TRAFFIC_AFTER = 3.0  # and on the one left after the others are gone


def triton_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return serving_pods(kube, namespace, NAME)


def serve(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    kube: Kube,
    uri: str,
    namespace: str,
    replicas: int,
) -> tuple[list[str], str]:
    """The TritonResNet Ready with ``replicas`` pods on the network's node: their addresses, ClusterIP."""
    cp = operator.cp
    # CPU only: the network's one node has two GPUs, three replicas and a surge need more;
    # without a GPU request the operator adds no GPU toleration, and the node has the taint.
    serving = {
        "nodeSelector": {HOSTNAME_LABEL: pod_network.node.name},
        "tolerations": [GPU_TOLERATION, POD_NETWORK_TOLERATION],
        "resources": {"requests": {"cpu": "100m"}},
    }
    apply_sample(cp, namespace, s3, uri, name=NAME, replicas=replicas, model_name=MODEL, serving=serving)
    wait_for_trn(
        cp,
        namespace,
        NAME,
        lambda t: is_ready()(t) and t["status"].get("readyReplicas") == replicas,
        f"Ready with {replicas} replicas",
        timeout=TIMEOUT * 2,
        operator=operator,
    )
    pods = triton_pods(kube, namespace)
    assert {pod["spec"]["nodeName"] for pod in pods} == {pod_network.node.name}
    pod_ips = sorted(pod["status"]["podIP"] for pod in pods)
    assert len(pod_ips) == replicas
    wait_for(
        lambda: ready_endpoints(kube, namespace, NAME) == pod_ips or None,
        "the Service's endpoints",
        TIMEOUT,
    )
    cluster_ip: str = kube.get(f"/api/v1/namespaces/{namespace}/services/{NAME}")["spec"]["clusterIP"]
    return pod_ips, cluster_ip


def load(
    pod_network: ClusterNetwork, namespace: str, cluster_ip: str, tmp_path: Path
) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """The bounded client running against the ClusterIP for the block; its summary filled in after."""
    limits = ClientLimits(RATE, MAX_REQUESTS, MAX_SECONDS, REQUEST_TIMEOUT, TRAFFIC_BEFORE, TRAFFIC_AFTER)
    return bounded_client(pod_network, namespace, cluster_ip, MODEL, limits, tmp_path / "stop")


def test_scale_down_from_three_to_one_fails_no_request_through_the_service(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    cp = operator.cp
    with cp.throwaway_namespace("drain") as namespace:
        uri = s3.upload(onnx_models.path(MODEL), f"{namespace}/model.onnx")
        pod_ips, cluster_ip = serve(operator, pod_network, s3, kube, uri, namespace, 3)
        with load(pod_network, namespace, cluster_ip, tmp_path) as result:
            scaled = time.monotonic()
            cp.kubectl("scale", "trn", NAME, "-n", namespace, "--replicas=1")
            wait_for(
                lambda: len(ready_endpoints(kube, namespace, NAME)) == 1 or None,
                "the Service down to one ready endpoint",
                TIMEOUT,
                every=0.1,
            )
            endpoint_seconds = time.monotonic() - scaled
            wait_for(
                lambda: len(triton_pods(kube, namespace)) == 1 or None,
                "the two other pods gone",
                TIMEOUT,
                every=0.2,
            )
            gone_seconds = time.monotonic() - scaled
        (left,) = triton_pods(kube, namespace)
        trn = wait_for_trn(
            cp,
            namespace,
            NAME,
            lambda t: is_ready()(t) and t["status"].get("readyReplicas") == 1,
            "Ready with 1 replica",
            operator=operator,
        )
        print(
            f"\nscale 3 -> 1 through the Service: {result['sent']} requests in {result['seconds']:.1f} s, "
            f"{len(result['failures'])} failed; ready endpoints 3 -> 1 after {endpoint_seconds:.2f} s, "
            f"the two pods gone after {gone_seconds:.1f} s"
        )
        assert result["failures"] == [], result["failures"][:5]
        assert result["ok"] == result["sent"]
        # The load really spanned the scale-down: before, during and after.
        assert result["sent"] >= RATE * (TRAFFIC_BEFORE + TRAFFIC_AFTER)
        assert left["status"]["podIP"] in pod_ips
        assert ready_endpoints(kube, namespace, NAME) == [left["status"]["podIP"]]
        assert trn["spec"]["serving"]["replicas"] == 1


def test_rollout_of_version_two_fails_no_request_through_the_service(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    """One replica, so the rollout's surge pod is the only way to keep serving."""
    cp = operator.cp
    with cp.throwaway_namespace("roll") as namespace:
        uri = s3.upload(onnx_models.path(MODEL), f"{namespace}/v1/model.onnx")
        (old_ip,), cluster_ip = serve(operator, pod_network, s3, kube, uri, namespace, 1)
        v2 = s3.upload(onnx_models.path(MODEL), f"{namespace}/v2/model.onnx")
        with load(pod_network, namespace, cluster_ip, tmp_path) as result:
            started = time.monotonic()
            patch = {"spec": {"source": {"uri": v2}}}
            cp.kubectl("patch", "trn", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(patch))
            trn = wait_for_trn(
                cp,
                namespace,
                NAME,
                lambda t: is_ready()(t) and t["status"].get("modelVersion") == 2,
                "Ready at version 2",
                timeout=TIMEOUT * 2,
                operator=operator,
            )
            wait_for(
                lambda: (
                    [p for p in triton_pods(kube, namespace) if p["status"].get("podIP") == old_ip] == []
                    or None
                ),
                "version 1's pod gone",
                TIMEOUT,
                every=0.2,
            )
            rolled_seconds = time.monotonic() - started
        print(
            f"\nrollout to version 2 through the Service: {result['sent']} requests in "
            f"{result['seconds']:.1f} s, {len(result['failures'])} failed, versions {result['versions']}; "
            f"version 1's pod gone {rolled_seconds:.1f} s after the patch"
        )
        assert result["failures"] == [], result["failures"][:5]
        assert result["ok"] == result["sent"]
        assert result["versions"] == ["1", "2"]
        (new,) = triton_pods(kube, namespace)
        assert ready_endpoints(kube, namespace, NAME) == [new["status"]["podIP"]]
        assert trn["status"]["modelVersion"] == 2
