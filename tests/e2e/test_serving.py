"""Ready means serving, and only the operator changes what is served (Triton locked down).

Real: the control plane, the operator (with a Triton control key, as the chart installs
it), the builder, tritonserver with the operator's rendered command line, S3 (moto).
Emulated: the kubelets (the node agent runs the probes the operator renders) and the
onnxruntime backend inside tritonserver (a python-backend stand-in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc
import tritonclient.http
import tritonresnet
from testground.models import OnnxModels
from testground.operator_run import OperatorProcess, apply_sample, condition, is_ready, wait_for_trn
from testground.s3 import S3Server
from tritonclient.utils import InferenceServerException
from tritonresnet.client.classify import classify
from tritonresnet.controller import render

pytestmark = [pytest.mark.cluster, pytest.mark.triton, pytest.mark.slow]

NAME = "resnet50"
SAMPLE_IMAGE = Path(tritonresnet.__file__).parent / "client" / "data" / "sample.jpg"
#: The issue's bound: a model that stops answering turns Ready False within two minutes.
NOTICE_SECONDS = 120


def _ready_endpoint(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> tuple[dict[str, Any], str]:
    uri = s3.upload(onnx_models.path("resnet18"), f"{namespace}/resnet18/model.onnx")
    apply_sample(operator.cp, namespace, s3, uri)
    trn = wait_for_trn(operator.cp, namespace, NAME, is_ready(), "Ready", operator=operator)
    return trn, str(trn["status"]["endpoints"][0])


def _grpc(endpoint: str) -> str:
    host, port = endpoint.rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def test_a_plain_clients_model_control_is_refused_and_inference_is_still_served(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    _, endpoint = _ready_endpoint(operator, namespace, s3, onnx_models)
    http = tritonclient.http.InferenceServerClient(endpoint)
    grpc = tritonclient.grpc.InferenceServerClient(_grpc(endpoint))
    try:
        for refused in (
            lambda: http.unload_model(NAME),
            lambda: http.load_model(NAME),
            lambda: http.get_model_repository_index(),
            lambda: grpc.unload_model(NAME),
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                refused()
        assert http.is_model_ready(NAME, "1"), "the refused unload left the model loaded"
    finally:
        http.close()
        grpc.close()
    for protocol, url in (("http", endpoint), ("grpc", _grpc(endpoint))):
        top = classify([SAMPLE_IMAGE], url=url, model=NAME, protocol=protocol)
        assert len(top[0]) == 5
    trn = wait_for_trn(operator.cp, namespace, NAME, is_ready(), "still Ready", operator=operator)
    assert condition(trn, "Ready")["reason"] == "Verified"


def test_a_model_unloaded_with_the_credential_turns_ready_false_in_tritons_words_and_back(
    operator: OperatorProcess, namespace: str, s3: S3Server, onnx_models: OnnxModels
) -> None:
    """Behind the operator's back, as an administrator holding the credential could: the
    version's readiness probe takes the pod out, the operator asks Triton why and says so."""
    trn, endpoint = _ready_endpoint(operator, namespace, s3, onnx_models)
    token = render.triton_control_token(
        operator.env["TRITONRESNET_TRITON_CONTROL_KEY"], trn["metadata"]["uid"]
    )
    control = {render.CONTROL_HEADER: token}
    http = tritonclient.http.InferenceServerClient(endpoint)
    try:
        http.unload_model(NAME, headers=control)

        def not_ready(t: dict[str, Any]) -> bool:
            return condition(t, "Ready").get("status") == "False"

        trn = wait_for_trn(operator.cp, namespace, NAME, not_ready, "Ready False", NOTICE_SECONDS, operator)
        ready = condition(trn, "Ready")
        assert ready["reason"] == "VerificationFailed", ready
        assert endpoint in ready["message"] and "UNAVAILABLE" in ready["message"], ready

        http.load_model(NAME, headers=control)
    finally:
        http.close()
    trn = wait_for_trn(operator.cp, namespace, NAME, is_ready(), "Ready again", NOTICE_SECONDS, operator)
    assert trn["status"]["modelVersion"] == 1
