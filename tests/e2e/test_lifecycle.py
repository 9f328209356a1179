"""A TritonResNet's life on the real test ground, driven by the real operator process.

Real: kube-apiserver, etcd, controller-manager (Jobs, Deployments,
EndpointSlices, garbage collector), scheduler, the builder (as a process),
tritonserver (as a process), S3 (moto server), the operator.
Emulated: the kubelet of the GPU nodes (tests/testground/nodeagent.py) and
the onnxruntime backend inside tritonserver (a python-backend stand-in).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonresnet
import yaml
from testground.controlplane import ControlPlane
from testground.models import OnnxModels
from testground.operator_run import OperatorProcess
from testground.s3 import S3Server
from tritonresnet import names
from tritonresnet.classify import classify

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

READY_TIMEOUT = 420.0
SAMPLE_IMAGE = Path(tritonresnet.__file__).parent / "data" / "sample.jpg"


def get_trn(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    out = cp.kubectl("get", "trn", name, "-n", namespace, "-o", "json").stdout
    return dict(json.loads(out))


def condition(trn: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (trn.get("status") or {}).get("conditions") or ():
        if cond["type"] == type_:
            return dict(cond)
    return {}


def wait_for(
    cp: ControlPlane, namespace: str, name: str, predicate: Callable[[dict[str, Any]], bool],
    what: str, timeout: float = READY_TIMEOUT, operator: OperatorProcess | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    trn: dict[str, Any] = {}
    while time.monotonic() < deadline:
        trn = get_trn(cp, namespace, name)
        if predicate(trn):
            return trn
        time.sleep(1.0)
    tail = operator.log_text()[-4000:] if operator else ""
    raise AssertionError(f"{name} never became {what}; status: {json.dumps(trn.get('status'), indent=1)}\n"
                         f"operator log tail:\n{tail}")


def is_ready(gen: int | None = None) -> Callable[[dict[str, Any]], bool]:
    def check(trn: dict[str, Any]) -> bool:
        ready = condition(trn, "Ready")
        want_gen = gen if gen is not None else trn["metadata"]["generation"]
        return ready.get("status") == "True" and ready.get("observedGeneration") == want_gen

    return check


def apply_sample(cp: ControlPlane, namespace: str, s3: S3Server, uri: str, name: str = "resnet50",
                 replicas: int = 1, model_name: str = "resnet50") -> None:
    secret = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3-credentials", "namespace": namespace},
        "stringData": {k: v for k, v in s3.env.items() if k.startswith("AWS_")},
    }
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    trn = {
        "apiVersion": names.API_VERSION, "kind": names.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"uri": uri, "endpoint": s3.endpoint, "credentialsSecret": "s3-credentials"},
            "model": {"name": model_name, "format": "onnx"},
            "engine": {"maxBatchSize": 4},
            "serving": {"release": "25.01", "replicas": replicas, "instanceCount": 1},
            "repository": {"claimName": "models"},
        },
    }
    docs = yaml.safe_dump_all([secret, pvc, trn])
    cp.kubectl("apply", "-f", "-", input=docs)


def jobs_of(cp: ControlPlane, namespace: str) -> list[str]:
    out = cp.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout
    return sorted(j["metadata"]["name"] for j in json.loads(out)["items"])


def test_onnx_sample_goes_from_apply_to_ready_and_classifies(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels,
) -> None:
    cp = operator.cp
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
    apply_sample(cp, namespace, s3, uri)
    trn = wait_for(cp, namespace, "resnet50", is_ready(), "Ready", operator=operator)

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
