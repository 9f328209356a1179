"""A TritonResNet's life on the real test ground, driven by the real operator process.

Real: kube-apiserver, etcd, controller-manager (Jobs, Deployments,
EndpointSlices, garbage collector), scheduler, the builder (as a process),
tritonserver (as a process), S3 (moto server), the operator.
Emulated: the kubelet of the GPU nodes (tests/testground/nodeagent.py) and
the onnxruntime backend inside tritonserver (a python-backend stand-in).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tritonresnet
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.operator_run import OperatorProcess, apply_sample, condition, get_trn, is_ready, wait_for_trn
from testground.s3 import S3Server
from tritonresnet.client.classify import classify

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

SAMPLE_IMAGE = Path(tritonresnet.__file__).parent / "client" / "data" / "sample.jpg"


def jobs_of(cp: ControlPlane, namespace: str) -> list[str]:
    out = cp.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout
    return sorted(j["metadata"]["name"] for j in json.loads(out)["items"])


def test_onnx_sample_goes_from_apply_to_ready_and_classifies(
    operator: OperatorProcess,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
) -> None:
    cp = operator.cp
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
    apply_sample(cp, namespace, s3, uri)
    trn = wait_for_trn(cp, namespace, "resnet50", is_ready(), "Ready", operator=operator)

    status = trn["status"]
    assert status["phase"] == "Ready"
    assert status["modelVersion"] == 1
    assert condition(trn, "EngineBuilt")["status"] == "True"
    assert condition(trn, "Available")["status"] == "True"
    assert status["readyReplicas"] == 1 and status["endpoints"]

    image = SAMPLE_IMAGE
    for protocol, port_offset in (("http", 0), ("grpc", 1)):
        host, port = status["endpoints"][0].rsplit(":", 1)
        top = classify([image], url=f"{host}:{int(port) + port_offset}", model="resnet50", protocol=protocol)
        assert len(top[0]) == 5
        assert all(p.label for p in top[0])

    # Nothing of the user's is touched: the operator never writes spec or metadata.
    after = get_trn(cp, namespace, "resnet50")
    assert after["metadata"]["generation"] == 1
    assert not any(k.startswith("kopf") for k in (after["metadata"].get("annotations") or {}))
    assert not after["metadata"].get("finalizers")
