"""A TritonResNet's life on the real test ground, driven by the real operator process.

Real: kube-apiserver, etcd, controller-manager (Jobs, Deployments,
EndpointSlices, garbage collector), scheduler, the builder (as a process),
tritonserver (as a process), S3 (moto server), the operator.
Emulated: the kubelet of the GPU nodes (tests/testground/nodeagent.py) and
the onnxruntime backend inside tritonserver (a python-backend stand-in).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import tritonresnet
from testground.controlplane import ControlPlane
from testground.models import EXTERNAL_DATA_FILE, EXTERNAL_MODEL_FILE, OnnxModels
from testground.operator_run import OperatorProcess, apply_sample, condition, get_trn, is_ready, wait_for_trn
from testground.s3 import S3Server
from tritonresnet.client.classify import classify
from tritonresnet.controller.children import RETRY_ANNOTATION

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

SAMPLE_IMAGE = Path(tritonresnet.__file__).parent / "client" / "data" / "sample.jpg"


def jobs_of(cp: ControlPlane, namespace: str) -> list[str]:
    out = cp.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout
    return sorted(j["metadata"]["name"] for j in json.loads(out)["items"])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def test_pinned_external_data_refuses_a_tampered_weights_file_then_serves_and_lists_every_digest(
    operator: OperatorProcess,
    namespace: str,
    s3: S3Server,
    onnx_models: OnnxModels,
    tmp_path: Path,
) -> None:
    """The graph pinned by sha256 and its weights by externalData. A weights file changed in
    the bucket fails the build naming that file, and nothing is published; the right file back
    and a retry annotation give Ready, with the digest of both files in status."""
    cp = operator.cp
    original = onnx_models.path("external_data")
    graph, data = original / EXTERNAL_MODEL_FILE, original / EXTERNAL_DATA_FILE
    tampered = onnx_models.tampered_external_data(tmp_path / "tampered")
    folder = s3.upload(tampered, f"{namespace}/external")
    pins = {
        "sha256": digest(graph),
        "externalData": [{"location": EXTERNAL_DATA_FILE, "sha256": digest(data)}],
    }
    apply_sample(cp, namespace, s3, f"{folder}/{EXTERNAL_MODEL_FILE}", source=pins)

    def build_failed(trn: dict[str, Any]) -> bool:
        return condition(trn, "EngineBuilt").get("reason") == "BuildFailed"

    failed = wait_for_trn(cp, namespace, "resnet50", build_failed, "BuildFailed", operator=operator)
    message = condition(failed, "EngineBuilt")["message"]
    assert f"{folder}/{EXTERNAL_DATA_FILE} has sha256 {digest(tampered / EXTERNAL_DATA_FILE)}" in message
    assert f"but the spec pins {digest(data)}" in message
    assert not [j for j in jobs_of(cp, namespace) if "-publish-" in j], "published from a tampered file"

    s3.upload(data, f"{namespace}/external/{EXTERNAL_DATA_FILE}")
    cp.kubectl("annotate", "trn", "resnet50", "-n", namespace, f"{RETRY_ANNOTATION}=1")
    trn = wait_for_trn(cp, namespace, "resnet50", is_ready(), "Ready", operator=operator)

    (target,) = trn["status"]["targets"]
    assert target["sourceSha256"] == digest(graph)
    assert target["sourceFiles"] == [
        {"name": EXTERNAL_MODEL_FILE, "sha256": digest(graph), "bytes": graph.stat().st_size},
        {"name": EXTERNAL_DATA_FILE, "sha256": digest(data), "bytes": data.stat().st_size},
    ]
    top = classify([SAMPLE_IMAGE], url=trn["status"]["endpoints"][0], model="resnet50")
    assert len(top[0]) == 5
