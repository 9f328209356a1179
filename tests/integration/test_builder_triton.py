"""Serve-as-ONNX: a model fetched from S3, built and published by the builder CLI, loaded and
answered by the real tritonserver, pinned to the published version as the operator runs it.

Triton runs ``platform: onnxruntime_onnx`` through the test ground's onnxruntime
stand-in backend (the pytriton wheel has no ONNX Runtime backend); the config,
repository layout, model control and inference are the real server's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.http
from testground.models import OnnxModels
from testground.s3 import S3Server
from testground.triton import start_tritonserver
from tritonresnet_builder.contract import (
    BuildArgs,
    EngineSettings,
    ExitCode,
    PublishArgs,
    Result,
    Source,
    parse_result,
)

pytestmark = pytest.mark.triton


def run_builder(argv: list[str], s3: S3Server) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3.env
    done = subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    return parse_result(done.stdout)


def test_serve_as_onnx_publish_is_loaded_and_answered_by_tritonserver(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    spec = onnx_models.spec("renamed")
    source = onnx_models.onnx_file("renamed")
    uri = s3.upload(source, "serve/renamed.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    run_builder(
        BuildArgs(
            repository=str(repo),
            engine_key="k-onnx",
            source=Source(uri=uri, endpoint=s3.endpoint),
            engine=EngineSettings(format="onnx", max_batch_size=4),
            result_file=str(tmp_path / "build"),
        ).to_argv(),
        s3,
    )
    publish = PublishArgs(
        repository=str(repo),
        model_name="resnet",
        version_key="v-a",
        engine_keys=("k-onnx",),
        max_batch_size=4,
        instance_kind="KIND_CPU",
        result_file=str(tmp_path / "publish"),
    )
    assert run_builder(publish.to_argv(), s3).version == 1

    batch = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(source)).run([spec.output_name], {spec.input_name: batch})[0]
    args = (
        "--model-control-mode=explicit",
        "--load-model=resnet",
        "--model-config-name=v1",
        "--strict-readiness=true",
        "--exit-on-error=false",
    )
    with start_tritonserver(repo, *args) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        assert client.is_model_ready("resnet", "1")
        metadata = client.get_model_metadata("resnet")
        assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
        # the server kept the image layout we wrote (its image clients refuse FORMAT_NONE)
        assert client.get_model_config("resnet")["input"][0]["format"] == "FORMAT_NCHW"
        request = tritonclient.http.InferInput(spec.input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        answer = client.infer("resnet", [request], model_version="1").as_numpy(spec.output_name)
    assert answer.shape == (2, 1000)
    np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)
    assert (answer.argmax(axis=1) == expected.argmax(axis=1)).all()
