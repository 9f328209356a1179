"""``spec.serving.autoscaling`` on the real test ground: the operator's HPA and ``kubectl scale``.

Real: kube-apiserver (the TritonResNet's scale subresource), the
controller-manager's HPA controller, the operator process, tritonserver
processes. There is no metrics server on the test ground, so the HPA never
scales by itself: the test asserts that it resolved its target through the
scale subresource (``AbleToScale`` True) and only failed at reading CPU
metrics, and drives the replica count with ``kubectl scale`` as a user (or
an HPA with metrics) would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.operator_run import OperatorProcess, apply_sample, condition, get_trn, is_ready, wait_for_trn
from testground.s3 import S3Server
from testground.waiting import wait_for
from tritonresnet.api import names

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "scaled"

#: min 1, max 3 on CPU; a CPU request is what utilization is measured against (the CRD requires it).
AUTOSCALING_PATCH: dict[str, Any] = {
    "spec": {
        "serving": {
            "resources": {"requests": {"cpu": "100m"}, "limits": {"nvidia.com/gpu": 1}},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "metric": {"type": "cpu", "targetAverageUtilization": 70},
            },
        }
    }
}


def get_or_none(cp: ControlPlane, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    result = cp.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    return dict(json.loads(result.stdout))


def hpa_condition(hpa: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (hpa.get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def test_hpa_targets_the_resource_and_kubectl_scale_reaches_the_deployment(
    operator: OperatorProcess,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
) -> None:
    cp = operator.cp
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
    apply_sample(cp, namespace, s3, uri, name=NAME)
    cp.kubectl("patch", "trn", NAME, "-n", namespace, "--type=merge", "-p", json.dumps(AUTOSCALING_PATCH))
    wait_for_trn(cp, namespace, NAME, is_ready(), "Ready", operator=operator)

    # The operator owns an HPA whose target is the TritonResNet itself, not its Deployment.
    hpa_name = names.hpa_name(NAME)
    hpa = wait_for(lambda: get_or_none(cp, namespace, "hpa", hpa_name), "the HPA", 120, every=1.0)
    target = {"apiVersion": names.API_VERSION, "kind": names.KIND, "name": NAME}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 3)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    (owner,) = hpa["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == (names.KIND, NAME)

    # The HPA controller finds the target through the scale subresource. (Right after the CRD
    # is installed it may first say FailedGetScale "no matches for kind": the controller-manager
    # re-reads API discovery every 30 s, as on any cluster.) With no metrics server it can then
    # only fail at reading CPU, never at finding what to scale.
    def able_to_scale() -> dict[str, Any] | None:
        found = get_or_none(cp, namespace, "hpa", hpa_name)
        return found if found and hpa_condition(found, "AbleToScale").get("status") == "True" else None

    hpa = wait_for(able_to_scale, "the HPA controller to get its target's scale", 150, every=1.0)
    assert hpa_condition(hpa, "AbleToScale")["reason"] == "SucceededGetScale"
    active = hpa_condition(hpa, "ScalingActive")
    assert active.get("reason") != "FailedGetScale", active
    assert hpa["status"]["currentReplicas"] == 1

    # kubectl scale writes spec.serving.replicas through the scale subresource ...
    cp.kubectl("scale", "trn", NAME, "-n", namespace, "--replicas=2")
    trn = get_trn(cp, namespace, NAME)
    assert trn["spec"]["serving"]["replicas"] == 2
    # ... and the operator carries it to the Deployment and reports both pods ready.
    trn = wait_for_trn(
        cp,
        namespace,
        NAME,
        lambda t: is_ready()(t) and (t.get("status") or {}).get("readyReplicas") == 2,
        "Ready with 2 ready replicas",
        operator=operator,
    )
    deployment = get_or_none(cp, namespace, "deployment", names.deployment_name(NAME))
    assert deployment is not None
    assert deployment["spec"]["replicas"] == 2
    assert deployment["status"].get("readyReplicas") == 2
    assert trn["status"]["replicas"] == 2 and len(trn["status"]["endpoints"]) == 2
    assert condition(trn, "Available")["status"] == "True"
    # The scale subresource reads back what the HPA will see.
    scale_path = f"/apis/{names.API_VERSION}/namespaces/{namespace}/tritonresnets/{NAME}/scale"
    scale = json.loads(cp.kubectl("get", "--raw", scale_path).stdout)
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == trn["status"]["selector"]

    # Removing autoscaling from the spec removes the HPA; the replica count stays.
    cp.kubectl(
        "patch",
        "trn",
        NAME,
        "-n",
        namespace,
        "--type=json",
        "-p",
        json.dumps([{"op": "remove", "path": "/spec/serving/autoscaling"}]),
    )
    wait_for(
        lambda: get_or_none(cp, namespace, "hpa", hpa_name) is None, "the HPA to be deleted", 120, every=1.0
    )
    trn = wait_for_trn(
        cp, namespace, NAME, is_ready(), "Ready after autoscaling was removed", operator=operator
    )
    assert trn["spec"]["serving"]["replicas"] == 2
    assert trn["status"]["readyReplicas"] == 2
