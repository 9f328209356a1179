"""KEDA's external-metrics API, served through the apiserver's aggregation layer.

Real: kube-apiserver with the aggregation layer on (front-proxy certificate,
request-header authentication, endpoint routing), KEDA's operator and metrics
API server built from KEDA's Go module, its CRDs and RBAC from the same
module. The apiserver reaches the metrics server through the APIService's
Service and EndpointSlice on the pod network's host link (testground.keda);
the metrics server authenticates the forwarded request by the front-proxy
certificate and the user headers, and asks the operator over mutual TLS gRPC.
"""

from __future__ import annotations

import json

import pytest
from testground.controlplane import ControlPlane
from testground.keda import API_SERVICE, EXTERNAL_METRICS_PATH, Keda

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_external_metrics_api_answers_through_the_aggregation_layer(
    control_plane: ControlPlane, keda: Keda
) -> None:
    discovery = json.loads(control_plane.kubectl("get", "--raw", EXTERNAL_METRICS_PATH).stdout)
    assert discovery["kind"] == "APIResourceList"
    assert discovery["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    service = json.loads(control_plane.kubectl("get", "apiservice", API_SERVICE, "-o", "json").stdout)
    assert service["spec"]["service"] == {"name": "keda-metrics-apiserver", "namespace": "keda", "port": 443}


def test_external_metric_request_reaches_the_operator_over_grpc(
    control_plane: ControlPlane, keda: Keda
) -> None:
    """A metric of a ScaledObject that does not exist: the answer is KEDA's own refusal, which the
    adapter gets from the operator (the gRPC hop), not the apiserver's 503 for an unreachable
    APIService."""
    selector = "labelSelector=scaledobject.keda.sh%2Fname%3Dnone"
    path = f"{EXTERNAL_METRICS_PATH}/namespaces/default/s0-nothing?{selector}"
    answer = control_plane.kubectl("get", "--raw", path, check=False)
    assert answer.returncode != 0
    assert "ServiceUnavailable" not in answer.stderr and "503" not in answer.stderr, answer.stderr
    assert "none" in answer.stderr, answer.stderr
