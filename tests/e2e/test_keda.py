"""Autoscaling on Triton's own queue time, end to end: KEDA scales a TritonResNet 1 -> 2 -> 1.

Real: the control plane with its aggregation layer, the controller-manager's
HPA controller, KEDA's operator and metrics API server (built from KEDA's Go
module, testground.keda), Prometheus (Debian's package, testground.prometheus)
scraping the Triton pods on the pod network, kube-proxy routing the Service's
ClusterIP, the operator process and tritonserver processes (ResNet-18 on CPU
through the python-backend stand-in for onnxruntime, as in every Triton test).

The ScaledObject is the README's (``docs/keda/scaledobject.yaml``, which the
README and docs/autoscaling.md include verbatim: tests/unit/test_docs_keda.py)
applied unchanged: its ``serverAddress``, ``prometheus-operated.monitoring.svc``,
is a Service whose EndpointSlice names where this Prometheus listens (the host's
end of the pod network's link), and KEDA's operator resolves it through CoreDNS
(a resolv.conf naming kube-dns, testground.keda) and reaches it through
kube-proxy, as it would in a cluster. KEDA makes its HPA on the TritonResNet's scale subresource; the HPA
controller reads the queue time through ``external.metrics.k8s.io`` (the
apiserver forwards to KEDA's metrics server, which asks KEDA's operator,
which queries Prometheus) and writes ``spec.serving.replicas`` through
``/scale``; the operator carries it to the Triton Deployment.

The load (testground.loadclient) comes from a pod-like network namespace
through the ClusterIP, bounded in count and time, concurrent enough that
requests wait in Triton's queue on one replica. It runs until the new replica
is Ready and has answered, then stops; the HPA then scales back to one. Not
one request may fail over the whole run, scale-down included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testground.clusternet import ClusterNetwork, ready_endpoints
from testground.controlplane import ControlPlane
from testground.keda import Keda
from testground.loadclient import Load, bounded_load
from testground.models import OnnxModels
from testground.network import HOST_ADDRESS
from testground.nodeagent_kube import Kube
from testground.operator_run import OperatorProcess, get_trn, serve_on_network, triton_pods
from testground.prometheus import Prometheus, in_cluster_service, start_prometheus
from testground.s3 import S3Server
from testground.waiting import WaitTimeout, wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCALED_OBJECT = REPO / "docs" / "keda" / "scaledobject.yaml"
MODEL_FILE = "resnet18"  #: the weights; the README's names (resnet50) are only names
SCALE_UP_TIMEOUT = 240.0
SCALE_DOWN_TIMEOUT = 300.0
#: Eight in flight, at most 40 a second: a queue on one CPU replica, not a flood. Bounded at
#: 12,000 requests and 400 s whatever happens.
LOAD = Load(rate=40.0, max_requests=12_000, max_seconds=400.0, request_timeout=30.0, concurrency=8)
ANSWERING_SECONDS = 10.0  #: load kept on both replicas once the new one is Ready


def scaled_object() -> dict[str, Any]:
    """The README's ScaledObject, as the README shows it."""
    document: dict[str, Any] = yaml.safe_load(SCALED_OBJECT.read_text())
    return document


@pytest.fixture(scope="module")
def prometheus(
    control_plane: ControlPlane, pod_network: ClusterNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus scraping the Triton pods, started once the pod network's blackholes exist,
    listening on the host's end of the network's link and reached in the cluster as the
    README's recipe names it: ``prometheus-operated.monitoring.svc:9090``."""
    with start_prometheus(control_plane, tmp_path_factory.mktemp("prometheus"), host=HOST_ADDRESS) as running:
        with control_plane.applied(in_cluster_service(running)):
            yield running


def replicas_of(trn: dict[str, Any]) -> int:
    return int(trn["spec"]["serving"]["replicas"])


def answered_by_pod(prometheus: Prometheus, namespace: str, model: str) -> dict[str, float]:
    series = prometheus.query(
        f'sum by (pod) (nv_inference_request_success{{namespace="{namespace}",model="{model}"}})'
    )
    return {s["metric"]["pod"]: float(s["value"][1]) for s in series}


def scaling_state(
    kube: Kube, keda: Keda, prometheus: Prometheus, namespace: str, name: str, hpa: str, query: str
) -> str:
    """What each link of the metric's path shows, for a wait that timed out: the ScaledObject's
    and the HPA's conditions, the metric the HPA last read, the query's value in Prometheus and
    the tail of KEDA's operator log (where a failed query or DNS lookup shows)."""
    scaled = kube.get(f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects/{name}")
    autoscaler = kube.get(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{hpa}")
    status = autoscaler.get("status") or {}

    def conditions(of: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        return [(c["type"], c["status"], c.get("message")) for c in (of or {}).get("conditions", [])]

    return (
        f"ScaledObject conditions {conditions(scaled.get('status') or {})}; "
        f"HPA conditions {conditions(status)}, current metrics {status.get('currentMetrics')}, "
        f"desired replicas {status.get('desiredReplicas')}; "
        f"Prometheus {[s['value'][1] for s in prometheus.query(query)]}; "
        f"KEDA operator log:\n{keda.operator.log_tail(20)}"
    )


def test_keda_scales_a_tritonresnet_on_triton_queue_time_and_back_failing_no_request(
    operator: OperatorProcess,
    pod_network: ClusterNetwork,
    keda: Keda,
    prometheus: Prometheus,
    s3: S3Server,
    onnx_models: OnnxModels,
    kube: Kube,
    tmp_path: Path,
) -> None:
    cp = operator.cp
    recipe = scaled_object()
    namespace, name = recipe["metadata"]["namespace"], recipe["metadata"]["name"]
    target = recipe["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (names.API_VERSION, names.KIND, name)
    model = name  # the README's TritonResNet serves its model under its own name
    cp.create_namespace(namespace)  # fails if a leftover is there: the README's names are shared
    try:
        uri = s3.upload(onnx_models.path(MODEL_FILE), f"{namespace}/model.onnx")
        (first_ip,), cluster_ip = serve_on_network(
            operator, pod_network, kube, s3, uri, namespace, name, model, 1
        )
        prometheus.wait_for_targets(count=1)
        cp.kubectl("apply", "-f", "-", input=json.dumps(recipe))
        hpa = wait_for(
            lambda: (
                kube.get(f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers").get("items")
                or None
            ),
            "KEDA's HPA",
            60,
        )[0]
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "name": name,
        }

        with bounded_load(pod_network, namespace, cluster_ip, model, LOAD, tmp_path) as result:
            started = time.monotonic()
            try:
                wait_for(
                    lambda: replicas_of(get_trn(cp, namespace, name)) == 2 or None,
                    "the HPA to write spec.serving.replicas 2 through /scale",
                    SCALE_UP_TIMEOUT,
                    every=1.0,
                )
            except WaitTimeout as timeout:
                query = recipe["spec"]["triggers"][0]["metadata"]["query"]
                state = scaling_state(kube, keda, prometheus, namespace, name, hpa["metadata"]["name"], query)
                raise timeout.with_detail(state) from None
            scaled_up = time.monotonic() - started
            wait_for(
                lambda: len(ready_endpoints(kube, namespace, name)) == 2 or None,
                "the new replica Ready and in the Service",
                SCALE_UP_TIMEOUT,
                every=0.5,
            )
            ready = time.monotonic() - started
            pods = triton_pods(kube, namespace, name)
            new_pod = next(p["metadata"]["name"] for p in pods if p["status"].get("podIP") != first_ip)
            wait_for(
                lambda: answered_by_pod(prometheus, namespace, model).get(new_pod, 0) > 0 or None,
                "the new replica answering through the Service",
                60,
                every=1.0,
            )
            time.sleep(ANSWERING_SECONDS)
            by_pod = answered_by_pod(prometheus, namespace, model)
            queue_at_peak = prometheus.query(recipe["spec"]["triggers"][0]["metadata"]["query"])
        stopped = time.monotonic()
        wait_for(
            lambda: replicas_of(get_trn(cp, namespace, name)) == 1 or None,
            "the HPA to scale back to 1",
            SCALE_DOWN_TIMEOUT,
            every=1.0,
        )
        scaled_down = time.monotonic() - stopped
        wait_for(lambda: len(triton_pods(kube, namespace, name)) == 1 or None, "one Triton pod left", 120)
        gone = time.monotonic() - stopped
        hpa = kube.get(
            f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{hpa['metadata']['name']}"
        )
        print(
            f"\nKEDA on Triton queue time: {result['sent']} requests in {result['seconds']:.1f} s "
            f"(concurrency {LOAD.concurrency}), {len(result['failures'])} failed; load start -> "
            f"replicas 2 {scaled_up:.1f} s, -> new replica Ready {ready:.1f} s; load stop -> replicas 1 "
            f"{scaled_down:.1f} s, pod gone {gone:.1f} s; queue time near the end of the load "
            f"{[s['value'][1] for s in queue_at_peak]} us; HPA conditions "
            f"{[(c['type'], c['status'], c.get('reason')) for c in hpa['status'].get('conditions', [])]}"
        )
        assert result["failures"] == [], result["failures"][:5]
        assert result["ok"] == result["sent"] > 0
        assert len(by_pod) == 2 and min(by_pod.values()) > 0, by_pod
    finally:
        cp.kubectl("delete", "scaledobject", name, "-n", namespace, "--ignore-not-found", check=False)
        cp.delete_namespace(namespace, wait=True)
