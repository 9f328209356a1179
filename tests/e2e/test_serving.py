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
from onnx import TensorProto
from testground.models import OnnxModels
from testground.operator_run import OperatorProcess, apply_sample, condition, is_ready, wait_for_trn
from testground.s3 import S3Server
from tritonclient.utils import InferenceServerException
from tritonresnet.client.classify import classify
from tritonresnet.controller import render
from unit.builder.onnx_graphs import identity

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


# -- one tenant cannot hurt the operator --------------------------------------------------

MiB = 1 << 20


def _apply_identity(operator: OperatorProcess, namespace: str, s3: S3Server, name: str, model: Path) -> None:
    """A TritonResNet serving an ``x -> Identity -> y`` graph, without batching."""
    uri = s3.upload(model, f"{namespace}/{name}/model.onnx")
    apply_sample(operator.cp, namespace, s3, uri, name=name, model_name=name, max_batch_size=0)


def test_an_absurd_input_is_refused_by_the_builder_and_one_past_the_smoke_bound_leaves_the_operator_flat(
    operator: OperatorProcess, namespace: str, s3: S3Server, tmp_path: Path
) -> None:
    """A declared [N, 3, 100000, 100000] FP32 input (112 GiB a sample) fails the build with
    UnsupportedModel naming the input and the builder's bound; a model whose one input is
    32 MiB (past the operator's 16 MiB smoke bound, within the builder's 64 MiB) is served
    and verified beside it, and the operator's resident memory stays within a margin far
    below either input."""
    before = operator.rss_bytes()
    assert before > 0
    _apply_identity(
        operator, namespace, s3, "absurd", identity(tmp_path / "a.onnx", dims=(1, 3, 100000, 100000))
    )
    big = identity(tmp_path / "b.onnx", elem=TensorProto.UINT8, dims=(1, 32 * MiB))
    _apply_identity(operator, namespace, s3, "large", big)

    def build_failed(t: dict[str, Any]) -> bool:
        return condition(t, "Ready").get("reason") == "BuildFailed"

    trn = wait_for_trn(operator.cp, namespace, "absurd", build_failed, "BuildFailed", operator=operator)
    message = condition(trn, "Ready")["message"]
    assert "UnsupportedModel" in message and "'x'" in message and "64 MiB" in message, message
    trn = wait_for_trn(operator.cp, namespace, "large", is_ready(), "Ready", operator=operator)
    assert condition(trn, "Ready")["reason"] == "Verified"
    grown = operator.rss_bytes() - before
    assert grown < 24 * MiB, f"the operator grew by {grown / MiB:.1f} MiB"
