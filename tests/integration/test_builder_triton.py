"""Serve-as-ONNX: a model fetched from S3, built and published by the builder CLI, loaded and
answered by the real tritonserver, pinned to the published version as the operator runs it.

Triton runs ``platform: onnxruntime_onnx`` through the test ground's onnxruntime
stand-in backend (the pytriton wheel has no ONNX Runtime backend); the config,
repository layout, model control and inference are the real server's.

Two layouts: batched (``max_batch_size`` 4, requests ``[N, 3, 224, 224]``) and
the one of NVIDIA's ResNet-50 tutorial (``max_batch_size`` 0): its client sends
one image as ``[3, 224, 224]`` with ``class_count=1000`` in binary and reads
``score:index`` strings back, for the tutorial's own export (a fixed batch of 1)
and for a dynamic-batch export alike.

And a TensorRT version with plans for two compute capabilities, built by the STAND-IN
TensorRT (``testground.standin_tensorrt``) and served by the STAND-IN TensorRT backend
(``testground.standin_backends.tensorrt_standin``): the published ``tensorrt_plan``
config loads unchanged and the plan is picked by the (stand-in) GPU's capability.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.http
from testground.models import OnnxModels
from testground.s3 import S3Server
from testground.standin_tensorrt import GPU_CC_ENV, GPU_NAME_ENV
from testground.triton import start_tritonserver
from tritonresnet.controller.verify import Expected, check_endpoint
from tritonresnet_builder.contract import (
    BuildArgs,
    EngineSettings,
    ExitCode,
    PublishArgs,
    Result,
    Source,
    Tensor,
    parse_result,
)

pytestmark = pytest.mark.triton


def run_builder(
    argv: list[str], s3: S3Server, module: str = "tritonresnet_builder", env: Mapping[str, str] | None = None
) -> Result:
    """The builder CLI (or ``module``, such as the stand-in TensorRT's builder) with ``env`` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3.env | dict(env or {})
    done = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    return parse_result(done.stdout)


def build_and_publish(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path, variant: str, model_name: str, max_batch: int
) -> tuple[Path, Result]:
    """The model variant uploaded to S3, built (format onnx) and published as ``model_name`` version 1."""
    uri = s3.upload(onnx_models.onnx_file(variant), f"serve/{variant}.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    run_builder(
        BuildArgs(
            repository=str(repo),
            engine_key="k-onnx",
            source=Source(uri=uri, endpoint=s3.endpoint),
            engine=EngineSettings(format="onnx", max_batch_size=max_batch),
            result_file=str(tmp_path / "build"),
        ).to_argv(),
        s3,
    )
    publish = PublishArgs(
        repository=str(repo),
        model_name=model_name,
        version_key="v-a",
        engine_keys=("k-onnx",),
        max_batch_size=max_batch,
        instance_kind="KIND_CPU",
        result_file=str(tmp_path / "publish"),
    )
    result = run_builder(publish.to_argv(), s3)
    assert result.version == 1
    return repo, result


def serving_args(model_name: str) -> tuple[str, ...]:
    """How the operator's Triton pods run: explicit control, pinned to the version's config."""
    return (
        "--model-control-mode=explicit",
        f"--load-model={model_name}",
        "--model-config-name=v1",
        "--strict-readiness=true",
        "--exit-on-error=false",
    )


def test_serve_as_onnx_publish_is_loaded_and_answered_by_tritonserver(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    spec = onnx_models.spec("renamed")
    source = onnx_models.onnx_file("renamed")
    repo, published = build_and_publish(s3, onnx_models, tmp_path, "renamed", "resnet", max_batch=4)

    batch = np.random.default_rng(3).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = onnxruntime.InferenceSession(str(source)).run([spec.output_name], {spec.input_name: batch})[0]
    with start_tritonserver(repo, *serving_args("resnet")) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        assert client.is_model_ready("resnet", "1")
        metadata = client.get_model_metadata("resnet")
        assert metadata["platform"] == "onnxruntime_onnx" and metadata["versions"] == ["1"]
        # the server kept the image layout we wrote (its image clients refuse FORMAT_NONE)
        assert client.get_model_config("resnet")["input"][0]["format"] == "FORMAT_NCHW"
        request = tritonclient.http.InferInput(spec.input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        answer = client.infer("resnet", [request], model_version="1").as_numpy(spec.output_name)
        # batched, the operator's check expects a leading -1 in the metadata, and gets it
        check = check_endpoint(server.http_url, Expected("resnet", 1, published.inputs, published.outputs))
    assert check.ok, check.message
    assert answer.shape == (2, 1000)
    np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)
    assert (answer.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.parametrize("variant", ["fixed_batch", "resnet18"], ids=["fixed-batch-1", "dynamic-batch"])
def test_the_tutorials_request_is_answered_with_max_batch_zero(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path, variant: str
) -> None:
    """NVIDIA's ResNet-50 tutorial client against a version published with max batch 0: model
    resnet50, one image as [3, 224, 224] (no batch dimension), class_count=1000, binary data."""
    spec = onnx_models.spec(variant)
    assert spec.dynamic_batch == (variant == "resnet18")  # the tutorial's export has a fixed batch of 1
    repo, published = build_and_publish(s3, onnx_models, tmp_path, variant, "resnet50", max_batch=0)
    # what the operator will expect Triton's metadata to show: no batch dimension at all
    assert published.inputs == (Tensor("input", "FP32", (3, 224, 224)),)
    assert published.outputs == (Tensor("output", "FP32", (1000,)),)

    image = np.random.default_rng(5).standard_normal((3, 224, 224)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(onnx_models.onnx_file(variant)))
    (scores,) = session.run(["output"], {"input": image[np.newaxis]})[0]  # the model runs at batch 1
    with start_tritonserver(repo, *serving_args("resnet50")) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        metadata = client.get_model_metadata("resnet50")
        assert [(t["name"], t["shape"]) for t in metadata["inputs"]] == [("input", [3, 224, 224])]
        assert [(t["name"], t["shape"]) for t in metadata["outputs"]] == [("output", [1000])]
        config = client.get_model_config("resnet50")
        assert config["max_batch_size"] == 0 and "dynamic_batching" not in config

        request = tritonclient.http.InferInput("input", list(image.shape), datatype="FP32")
        request.set_data_from_numpy(image, binary_data=True)
        wanted = tritonclient.http.InferRequestedOutput("output", binary_data=True, class_count=1000)
        ranked = client.infer(model_name="resnet50", inputs=[request], outputs=[wanted]).as_numpy("output")
        # and the operator's own endpoint check, from the publish result, passes
        check = check_endpoint(
            server.http_url, Expected("resnet50", 1, published.inputs, published.outputs, batched=False)
        )
    assert check.ok, check.message

    assert ranked.shape == (1000,)
    entries = [entry.decode().split(":") for entry in ranked]
    assert all(len(entry) == 2 for entry in entries)  # "score:index"
    indices = [int(index) for _, index in entries]
    assert sorted(indices) == list(range(1000))
    assert indices[:5] == list(np.argsort(-scores)[:5])
    np.testing.assert_allclose(
        [float(score) for score, _ in entries[:5]], np.sort(scores)[::-1][:5], rtol=1e-4
    )


@pytest.mark.parametrize(("max_batch", "warmed"), [(4, ["batch-1", "batch-4"]), (0, ["batch-1"])])
def test_a_published_version_is_warmed_up_before_triton_reports_it_ready(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path, max_batch: int, warmed: list[str]
) -> None:
    """The builder's config carries model_warmup (batch 1 and the max batch); the real
    tritonserver runs it while loading, so the version is ready having already run once at
    each size: its statistics count those inferences before any client asked anything."""
    repo, _ = build_and_publish(s3, onnx_models, tmp_path, "resnet18", "resnet", max_batch=max_batch)
    with start_tritonserver(repo, *serving_args("resnet"), "--log-verbose=1") as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        try:
            assert client.is_model_ready("resnet", "1")
            config = client.get_model_config("resnet")
            (stats,) = client.get_inference_statistics("resnet")["model_stats"]
        finally:
            client.close()
        log = server.log()
    assert [w["name"] for w in config["model_warmup"]] == warmed
    assert all(w["inputs"]["input"]["dims"] == [3, 224, 224] for w in config["model_warmup"])
    sizes = [int(name.removeprefix("batch-")) for name in warmed]
    assert (int(stats["inference_count"]), int(stats["execution_count"])) == (sum(sizes), len(sizes))
    for name in warmed:
        assert f"is running warmup sample '{name}'" in log


#: Where ``testground`` is importable from, for a builder subprocess started with the stand-in.
TESTS_DIR = Path(__file__).resolve().parent.parent


def test_a_tensorrt_version_is_served_by_the_plan_of_the_gpus_capability_with_standin_tensorrt_backend(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    """STAND-IN TensorRT and TensorRT backend: the builder (with the stand-in TensorRT) builds
    an 8.6 plan from resnet18 and a 7.5 plan from resnet50 (same tensors, different answers, so
    the pick shows); publish writes one ``tensorrt_plan`` config with ``cc_model_filenames`` for
    both; the real tritonserver, told its GPU is 8.6 and then 7.5 as the node agent tells a Triton
    pod, loads that config unchanged and answers as the model of that capability's plan."""
    repo = tmp_path / "repo"
    repo.mkdir()
    engine = EngineSettings(format="tensorrt", max_batch_size=4)
    built = {"8.6": "resnet18", "7.5": "resnet50"}
    keys = []
    for capability, variant in built.items():
        key = f"k-sm{capability.replace('.', '')}"
        uri = s3.upload(onnx_models.onnx_file(variant), f"plans/{variant}.onnx")
        args = BuildArgs(
            repository=str(repo),
            engine_key=key,
            source=Source(uri=uri, endpoint=s3.endpoint),
            engine=engine,
            result_file=str(tmp_path / f"build-{key}"),
        )
        gpu = {GPU_NAME_ENV: "stand-in GPU", GPU_CC_ENV: capability, "PYTHONPATH": str(TESTS_DIR)}
        result = run_builder(args.to_argv(), s3, module="testground.standin_tensorrt.builder", env=gpu)
        assert result.compute_capability == capability
        keys.append(key)
    publish = PublishArgs(
        repository=str(repo),
        model_name="resnet",
        version_key="v-a",
        engine_keys=tuple(keys),
        max_batch_size=4,
        instance_kind="KIND_AUTO",
        result_file=str(tmp_path / "publish"),
    )
    published = run_builder(publish.to_argv(), s3)
    assert published.version == 1

    batch = np.random.default_rng(5).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected_endpoint = Expected("resnet", 1, published.inputs, published.outputs)
    for capability, variant in built.items():
        source = onnx_models.onnx_file(variant)
        expected = onnxruntime.InferenceSession(str(source)).run(["output"], {"input": batch})[0]
        with start_tritonserver(repo, *serving_args("resnet"), env={GPU_CC_ENV: capability}) as server:
            client = tritonclient.http.InferenceServerClient(server.http_url)
            metadata = client.get_model_metadata("resnet")
            config = client.get_model_config("resnet")
            request = tritonclient.http.InferInput("input", list(batch.shape), "FP32")
            request.set_data_from_numpy(batch)
            answer = client.infer("resnet", [request], model_version="1").as_numpy("output")
            check = check_endpoint(server.http_url, expected_endpoint)
        assert metadata["platform"] == "tensorrt_plan" and metadata["versions"] == ["1"]
        assert config["cc_model_filenames"] == {"7.5": "model.sm75.plan", "8.6": "model.sm86.plan"}
        assert check.ok, check.message
        np.testing.assert_allclose(answer, expected, rtol=1e-4, atol=1e-4)
