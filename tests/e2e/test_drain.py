"""Graceful drain on the pod network: a scale-down, a rollout and a node drain lose no request.

A TritonResNet (ResNet-18) with three replicas on the network's node is Ready;
a client in a pod-like network namespace sends inferences at a constant rate
to the Service's ClusterIP, so kube-proxy picks the pod and the lag between a
pod's deletion and its leaving the Service's endpoints is part of what is
measured. Then ``kubectl scale trn --replicas=1``: two pods go through
preStop, SIGTERM and the grace period while the load goes on, and not one
request may fail. The same client through a rollout (a new source, version 2)
at one replica, where the surge pod is what keeps the Service answering.

The node drain: two replicas on the first of the network's two nodes, then
``kubectl drain`` of that node, which evicts through the eviction API, so the
PodDisruptionBudget (maxUnavailable 1) decides: one pod goes, the second
eviction is refused until the first one's replacement (on the other node, the
drained one being cordoned) is ready. The same drain at one replica, where the
budget lets the last pod go.

Each request opens a connection of its own (as a client behind a load
balancer that does not pin connections does), so every request is a new
choice of kube-proxy among the endpoints it has at that moment. The
kept-alive variant sends every request on one HTTP connection (tritonclient's
default use): kube-proxy's choice is made once, and the connection stays with
its pod after the pod left the endpoints, until the pod closes it.

The client (testground.loadclient) is bounded: a fixed rate, a hard cap on
requests and on time, a timeout on each request, and it stops by itself once
the test asks it to.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from testground import operator_run
from testground.clusternet import NETWORK_AGENT_ID, ClusterNetwork, ready_endpoints
from testground.loadclient import Load, bounded_load
from testground.models import OnnxModels
from testground.nodeagent_kube import Kube
from testground.nodeagent_nodes import AGENT_LABEL
from testground.operator_run import OperatorProcess, is_ready, serve_on_network, wait_for_trn
from testground.s3 import S3Server
from testground.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "classifier"
MODEL = "resnet18"
TIMEOUT = 180.0
RATE = 5.0  #: requests per second
#: One at a time, at most 600 requests and 120 s, 10 s each (testground.loadclient).
LOAD = Load(rate=RATE, max_requests=600, max_seconds=120.0, request_timeout=10.0)
TRAFFIC_BEFORE = 3.0  # seconds of load on three replicas before the scale
TRAFFIC_AFTER = 3.0  # and on the one left after the others are gone
DRAIN_TIMEOUT = 150  # seconds, kubectl drain's own
#: What kubectl drain prints when the eviction API refuses a pod for its budget.
PDB_REFUSAL = "would violate the pod's disruption budget"

NEW_CONNECTION = "new"  #: each request on a connection of its own
#: Every request on one kept-alive connection; when the pod closes it under a request, that
#: request is sent once more on a new connection (the advice for clients; testground.loadclient).
KEPT_ALIVE = "kept"


def triton_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return operator_run.triton_pods(kube, namespace, NAME)


def serve(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    kube: Kube,
    uri: str,
    namespace: str,
    replicas: int,
    node_selector: dict[str, str] | None = None,
) -> tuple[list[str], str]:
    """The TritonResNet Ready with ``replicas`` pods on the network's first node: their addresses,
    ClusterIP. ``node_selector`` (default: that node) may allow both network nodes."""
    return serve_on_network(
        operator,
        pod_network,
        kube,
        s3,
        uri,
        namespace,
        NAME,
        MODEL,
        replicas,
        timeout=TIMEOUT * 2,
        node_selector=node_selector,
    )


def load(
    pod_network: ClusterNetwork,
    namespace: str,
    cluster_ip: str,
    tmp_path: Path,
    connections: str = NEW_CONNECTION,
) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """The bounded client running against the ClusterIP for the block; its summary filled in after."""
    how = replace(LOAD, kept_alive=connections == KEPT_ALIVE)
    return bounded_load(
        pod_network, namespace, cluster_ip, MODEL, how, tmp_path, before=TRAFFIC_BEFORE, after=TRAFFIC_AFTER
    )


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


@contextlib.contextmanager
def cordoned(operator: OperatorProcess, node: str) -> Iterator[None]:
    """``node`` unschedulable for the block (a drain cordons too; this undoes either)."""
    operator.cp.kubectl("cordon", node)
    try:
        yield
    finally:
        operator.cp.kubectl("uncordon", node, check=False)


@dataclass
class Drain:
    """What a node drain under load did."""

    node: str  #: the drained node
    other: str  #: where the replacements go
    old_ips: list[str]  #: the pods' addresses before
    result: dict[str, Any]  #: the client's summary
    returncode: int
    output: str  #: kubectl drain's
    seconds: float
    pods: list[dict[str, Any]]  #: the Triton pods after

    @property
    def refusals(self) -> int:
        return self.output.count(PDB_REFUSAL)

    def report(self, what: str) -> None:
        print(
            f"\ndrain of {self.node} ({what}) through the Service: {self.result['sent']} requests in "
            f"{self.result['seconds']:.1f} s, {len(self.result['failures'])} failed; the drain took "
            f"{self.seconds:.1f} s, evictions refused by the budget {self.refusals} time(s); "
            f"kept-alive connections closed under a request {len(self.result['reconnects'])}"
        )
        for line in self.result["failures"][:10] + self.result["reconnects"][:10]:
            print(f"  {line}")


def drain_under_load(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
    replicas: int,
    connections: str,
) -> Drain:
    """``replicas`` pods Ready on the first network node (the second cordoned meanwhile), the
    bounded client on, ``kubectl drain`` of the first node; back when the Service has
    ``replicas`` ready endpoints again."""
    cp = operator.cp
    drained, other = (node.name for node in pod_network.nodes)
    either = {AGENT_LABEL: NETWORK_AGENT_ID}  # both network nodes
    with cp.throwaway_namespace("ndrain") as namespace:
        uri = s3.upload(onnx_models.path(MODEL), f"{namespace}/model.onnx")
        with cordoned(operator, other):
            old_ips, cluster_ip = serve(operator, pod_network, s3, kube, uri, namespace, replicas, either)
        with (
            cordoned(operator, drained),
            load(pod_network, namespace, cluster_ip, tmp_path, connections) as result,
        ):
            started = time.monotonic()
            drain = cp.kubectl(
                "drain",
                drained,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                f"--timeout={DRAIN_TIMEOUT}s",
                check=False,
                timeout=DRAIN_TIMEOUT + 30,
            )
            seconds = time.monotonic() - started
            wait_for(
                lambda: len(ready_endpoints(kube, namespace, NAME)) == replicas or None,
                f"{replicas} ready endpoint(s) again",
                TIMEOUT,
                every=0.2,
            )
        return Drain(
            node=drained,
            other=other,
            old_ips=old_ips,
            result=result,
            returncode=drain.returncode,
            output=drain.stdout + drain.stderr,
            seconds=seconds,
            pods=triton_pods(kube, namespace),
        )


@pytest.mark.parametrize("connections", [NEW_CONNECTION, KEPT_ALIVE])
def test_node_drain_under_the_budget_fails_no_request_through_the_service(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
    connections: str,
) -> None:
    """Both replicas on the drained node: the budget lets one go at a time, and the second
    eviction waits for the first one's replacement on the other node to be ready."""
    drain = drain_under_load(operator, pod_network, s3, onnx_models, kube, tmp_path, 2, connections)
    drain.report(f"2 replicas, {connections} connections")
    result = drain.result
    assert drain.returncode == 0, drain.output
    # The budget really held the second pod back until the first one's replacement was ready.
    assert drain.refusals >= 1, drain.output
    assert {pod["spec"]["nodeName"] for pod in drain.pods} == {drain.other}
    assert len(drain.pods) == 2 and not {pod["status"]["podIP"] for pod in drain.pods} & set(drain.old_ips)
    assert result["sent"] >= RATE * (drain.seconds + TRAFFIC_BEFORE + TRAFFIC_AFTER) - 2
    assert result["failures"] == [], result["failures"][:5]
    assert result["ok"] == result["sent"]
    if connections == KEPT_ALIVE:
        # The connection is on a drained pod (both were there), which keeps serving it past
        # preStop and closes it when it exits. Closed while idle, the pool sees it and connects
        # anew; closed under a request, that request meets the close: at most once per pod.
        assert len(result["reconnects"]) <= 2, result["reconnects"]
        assert all("HTTPConnectionClosed" in line for line in result["reconnects"]), result["reconnects"]
    else:
        assert result["reconnects"] == []


def test_node_drain_of_the_last_replica_is_allowed_by_the_budget(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    """One replica: the budget (maxUnavailable 1) lets the drain evict it, so the drain never
    blocks; the replacement serves on the other node. What the client sees in between (the old
    pod only serves through preStop, the new one must start and pass its probe) is measured and
    printed, not promised: a single replica does not survive a drain by design."""
    drain = drain_under_load(operator, pod_network, s3, onnx_models, kube, tmp_path, 1, NEW_CONNECTION)
    drain.report("1 replica")
    assert drain.returncode == 0, drain.output
    assert drain.refusals == 0, drain.output
    (pod,) = drain.pods
    assert pod["spec"]["nodeName"] == drain.other and pod["status"]["podIP"] not in drain.old_ips
    assert drain.result["ok"] > 0
