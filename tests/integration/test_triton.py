"""The real tritonserver (from nvidia-pytriton) serving the test ground's ResNet ONNX models.

Triton runs the models through the test ground's **onnxruntime stand-in**
backend (a python-based backend running onnxruntime on CPU; the wheel has no
ONNX Runtime backend). The model configs are the ones the real backend takes:
``platform: "onnxruntime_onnx"``. Everything else is the real server: HTTP and
gRPC endpoints, the classification extension, model control, configs and
version policies. The tests that pin server behaviour the operator relies on
(``--model-config-name``, ``KIND_AUTO``, version policies, ``cc_model_filenames``)
are the evidence for the notes in ``testground/triton.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc
import tritonclient.http
from google.protobuf import text_format
from testground.models import OnnxModels
from testground.s3 import S3Server
from testground.triton import TritonServer, backends_dir, start_tritonserver, tritonserver_command
from testground.waiting import wait_for
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException
from tritonresnet.controller import render
from tritonresnet.controller.verify import Expected, check_endpoint
from tritonresnet_builder import accuracy
from tritonresnet_builder.contract import AccuracyTolerance, Tensor

pytestmark = pytest.mark.triton

TOP_K = 5


# -- helpers --------------------------------------------------------------------------


def onnx_config(
    name: str,
    input_name: str = "input",
    output_name: str = "output",
    max_batch_size: int = 8,
    kind: mc.ModelInstanceGroup.Kind.ValueType = mc.ModelInstanceGroup.KIND_CPU,
) -> mc.ModelConfig:
    # With max_batch_size 0 the batch dimension is part of dims, as for a fixed-batch model.
    batch_dims = [] if max_batch_size else [1]
    config = mc.ModelConfig(name=name, platform="onnxruntime_onnx", max_batch_size=max_batch_size)
    config.input.add(name=input_name, data_type=mc.TYPE_FP32, dims=[*batch_dims, 3, 224, 224])
    config.output.add(name=output_name, data_type=mc.TYPE_FP32, dims=[*batch_dims, 1000])
    config.instance_group.add(count=1, kind=kind)
    return config


def write_model(
    repository: Path,
    config: mc.ModelConfig,
    model: Path,
    versions: tuple[int, ...] = (1,),
    config_path: str = "config.pbtxt",
) -> None:
    """``<repository>/<name>/<version>/model.onnx`` (a file, or a folder for external data) and the config."""
    folder = repository / config.name
    for version in versions:
        target = folder / str(version) / "model.onnx"
        target.parent.mkdir(parents=True, exist_ok=True)
        if model.is_dir():  # the layout Triton's ONNX Runtime backend takes for external data
            # Copied: onnx refuses external data files with several hard links ("hardlink attack").
            shutil.copytree(model, target)
        else:
            os.link(model, target)  # a hard link: no 47 MB copy per test
    (folder / config_path).parent.mkdir(parents=True, exist_ok=True)
    (folder / config_path).write_text(text_format.MessageToString(config))


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def onnxruntime_top_k(model_file: Path, batch: np.ndarray) -> list[list[int]]:
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch})
    return np.argsort(-logits, axis=1)[:, :TOP_K].tolist()


def class_indexes(classification: np.ndarray) -> list[list[int]]:
    """Triton's classification entries are ``b"<score>:<index>"`` (``:<label>`` with labels)."""
    return [[int(entry.decode().split(":")[1]) for entry in row] for row in classification]


def classify_http(
    server: TritonServer, model: str, input_name: str, output_name: str, batch: np.ndarray
) -> np.ndarray:
    client = tritonclient.http.InferenceServerClient(server.http_url)
    try:
        request = tritonclient.http.InferInput(input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        output = tritonclient.http.InferRequestedOutput(output_name, class_count=TOP_K)
        result = client.infer(model, [request], outputs=[output]).as_numpy(output_name)
    finally:
        client.close()
    assert result is not None
    return result


def classify_grpc(
    server: TritonServer, model: str, input_name: str, output_name: str, batch: np.ndarray
) -> np.ndarray:
    client = tritonclient.grpc.InferenceServerClient(server.grpc_url)
    try:
        request = tritonclient.grpc.InferInput(input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        output = tritonclient.grpc.InferRequestedOutput(output_name, class_count=TOP_K)
        result = client.infer(model, [request], outputs=[output]).as_numpy(output_name)
    finally:
        client.close()
    assert result is not None
    return result


# -- one explicit-mode server for the serving tests -----------------------------------


@pytest.fixture(scope="module")
def model_repository(onnx_models: OnnxModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("model-repository")
    for name in ("resnet18", "renamed", "external_data"):
        spec = onnx_models.spec(name)
        config = onnx_config(name, spec.input_name, spec.output_name)
        write_model(repository, config, onnx_models.path(name))
    write_model(repository, onnx_config("fixed_batch", max_batch_size=0), onnx_models.path("fixed_batch"))
    batched = onnx_config("batched")
    # A long queue delay so that concurrent requests reliably meet in one execution.
    batched.dynamic_batching.max_queue_delay_microseconds = 500_000
    write_model(repository, batched, onnx_models.path("resnet18"))
    return repository


@pytest.fixture(scope="module")
def triton(model_repository: Path) -> Iterator[TritonServer]:
    # Explicit mode: each test loads only its model, so one ~300 MB stub runs at a time.
    with start_tritonserver(model_repository, "--model-control-mode=explicit") as server:
        yield server


@pytest.fixture
def loaded(triton: TritonServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    client = tritonclient.http.InferenceServerClient(triton.http_url)
    try:
        client.load_model(name)
        yield name
        client.unload_model(name)
    finally:
        client.close()


@pytest.mark.parametrize("loaded", ["resnet18", "renamed", "external_data"], indirect=True)
def test_tritonserver_top5_over_http_and_grpc_matches_onnxruntime_with_onnxruntime_standin(
    triton: TritonServer, loaded: str, onnx_models: OnnxModels
) -> None:
    """Top-5 classification through real Triton (onnxruntime STAND-IN backend) equals plain onnxruntime's."""
    spec = onnx_models.spec(loaded)
    batch = images(2)
    expected = onnxruntime_top_k(onnx_models.onnx_file(loaded), batch)

    over_http = classify_http(triton, loaded, spec.input_name, spec.output_name, batch)
    over_grpc = classify_grpc(triton, loaded, spec.input_name, spec.output_name, batch)

    assert over_http.shape == (2, TOP_K)
    assert class_indexes(over_http) == expected
    assert class_indexes(over_grpc) == expected


@pytest.mark.parametrize("loaded", ["renamed"], indirect=True)
def test_tritonserver_metadata_reports_onnx_platform_and_model_tensor_names_with_onnxruntime_standin(
    triton: TritonServer, loaded: str
) -> None:
    client = tritonclient.http.InferenceServerClient(triton.http_url)
    try:
        metadata = client.get_model_metadata(loaded)
    finally:
        client.close()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["data"]
    assert [tensor["name"] for tensor in metadata["outputs"]] == ["logits"]
    assert metadata["inputs"][0]["shape"] == [-1, 3, 224, 224]


@pytest.mark.parametrize("loaded", ["fixed_batch"], indirect=True)
def test_tritonserver_serves_fixed_batch_model_without_batching_with_onnxruntime_standin(
    triton: TritonServer, loaded: str, onnx_models: OnnxModels
) -> None:
    """Without batching Triton classifies the whole ``[1, 1000]`` output: 5 entries, not ``[1, 5]``."""
    batch = images(1)
    result = classify_http(triton, loaded, "input", "output", batch)
    assert result.shape == (TOP_K,)
    assert class_indexes(result[np.newaxis]) == onnxruntime_top_k(onnx_models.onnx_file(loaded), batch)


@pytest.mark.parametrize("loaded", ["batched"], indirect=True)
def test_dynamic_batching_answers_each_request_with_its_own_rows_with_onnxruntime_standin(
    triton: TritonServer, loaded: str, onnx_models: OnnxModels
) -> None:
    """Concurrent requests run as one batch in the stand-in and each gets its own top-5 back."""
    batch = images(3)
    expected = onnxruntime_top_k(onnx_models.onnx_file("resnet18"), batch)
    client = tritonclient.http.InferenceServerClient(triton.http_url, concurrency=3)
    try:
        pending = []
        for row in range(3):
            request = tritonclient.http.InferInput("input", [1, 3, 224, 224], "FP32")
            request.set_data_from_numpy(batch[row : row + 1])
            output = tritonclient.http.InferRequestedOutput("output", class_count=TOP_K)
            pending.append(client.async_infer(loaded, [request], outputs=[output]))
        answers = [class_indexes(p.get_result().as_numpy("output"))[0] for p in pending]
        (stats,) = client.get_inference_statistics(loaded)["model_stats"]
    finally:
        client.close()
    assert answers == expected
    assert (stats["inference_count"], stats["execution_count"]) == (3, 1)


def test_tritonserver_explicit_load_of_missing_model_fails(triton: TritonServer) -> None:
    client = tritonclient.http.InferenceServerClient(triton.http_url)
    try:
        with pytest.raises(InferenceServerException, match="failed to load"):
            client.load_model("no-such-model")
    finally:
        client.close()


# -- server behaviour the operator's design relies on ---------------------------------


@pytest.fixture
def versioned_repository(onnx_models: OnnxModels, tmp_path: Path) -> Path:
    """Model ``m`` with versions 1-3, a ``config.pbtxt`` (max batch 4) and ``configs/v2.pbtxt``.

    ``v2.pbtxt`` is what the operator publishes for version 2: max batch 8,
    ``version_policy {specific {versions: 2}}``, ``KIND_AUTO`` and a
    ``cc_model_filenames`` entry (meaningful only to TensorRT).
    """
    write_model(
        tmp_path, onnx_config("m", max_batch_size=4), onnx_models.path("resnet18"), versions=(1, 2, 3)
    )
    v2 = onnx_config("m", kind=mc.ModelInstanceGroup.KIND_AUTO)
    v2.version_policy.specific.versions.append(2)
    v2.cc_model_filenames["8.6"] = "model.plan"
    (tmp_path / "m" / "configs").mkdir()
    (tmp_path / "m" / "configs" / "v2.pbtxt").write_text(text_format.MessageToString(v2))
    return tmp_path


def test_model_config_name_loads_configs_file_serving_only_its_pinned_version(
    versioned_repository: Path, onnx_models: OnnxModels
) -> None:
    """``--model-config-name=v2`` + explicit ``--load-model``: configs/v2.pbtxt wins over config.pbtxt.

    Also shows, with that one load: ``KIND_AUTO`` becomes a CPU instance on a
    machine without GPU, ``version_policy specific [2]`` serves version 2 only,
    and ``cc_model_filenames`` does not break an ``onnxruntime_onnx`` load.
    """
    args = (
        "--model-control-mode=explicit",
        "--load-model=m",
        "--model-config-name=v2",
        "--strict-readiness=true",
    )
    with start_tritonserver(versioned_repository, *args) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        try:
            config = client.get_model_config("m")
            ready = {version: client.is_model_ready("m", version) for version in ("1", "2", "3")}
            index = client.get_model_repository_index()
        finally:
            client.close()
        result = classify_http(server, "m", "input", "output", images(1))

    assert config["max_batch_size"] == 8  # from configs/v2.pbtxt, not config.pbtxt's 4
    assert config["version_policy"] == {"specific": {"versions": [2]}}
    assert config["cc_model_filenames"] == {"8.6": "model.plan"}
    assert [group["kind"] for group in config["instance_group"]] == ["KIND_CPU"]
    assert ready == {"1": False, "2": True, "3": False}
    assert index == [{"name": "m", "version": "2", "state": "READY"}]
    assert class_indexes(result) == onnxruntime_top_k(onnx_models.onnx_file("resnet18"), images(1))


def test_model_config_name_without_such_file_silently_falls_back_to_config_pbtxt(
    versioned_repository: Path,
) -> None:
    """A missing ``configs/<name>.pbtxt`` is no error: Triton serves config.pbtxt (latest version).

    So a server reporting Ready does not prove it serves the pinned version:
    whoever verifies it must check the served config or version.
    """
    args = ("--model-control-mode=explicit", "--load-model=m", "--model-config-name=v9")
    with start_tritonserver(versioned_repository, *args) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        try:
            config = client.get_model_config("m")
            index = client.get_model_repository_index()
        finally:
            client.close()
    assert config["max_batch_size"] == 4
    assert index == [{"name": "m", "version": "3", "state": "READY"}]


def test_tritonserver_loads_model_repository_from_s3_through_proxy_with_onnxruntime_standin(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    """An ``s3://http://host:port/bucket/prefix`` repository (moto behind the test ground's proxy)."""
    write_model(tmp_path, onnx_config("resnet18"), onnx_models.path("resnet18"))
    s3.upload(tmp_path, "triton-s3-test")
    with start_tritonserver(s3.triton_repository("triton-s3-test"), env=s3.env) as server:
        result = classify_grpc(server, "resnet18", "input", "output", images(1))
    assert class_indexes(result) == onnxruntime_top_k(onnx_models.onnx_file("resnet18"), images(1))


# -- the assembled backends folder and command ----------------------------------------


def test_backends_dir_holds_python_backend_and_the_onnxruntime_and_tensorrt_standins_only() -> None:
    folder = backends_dir()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["onnxruntime", "python", "tensorrt"]
    assert (folder / "python" / "libtriton_python.so").is_file()
    assert (folder / "python" / "triton_python_backend_stub").is_file()
    assert "STAND-IN" in (folder / "onnxruntime" / "model.py").read_text()
    assert "STAND-IN" in (folder / "tensorrt" / "model.py").read_text()
    assert "STAND-IN" in (folder / "README").read_text()


def test_tritonserver_command_adds_backend_directory_only_when_not_given() -> None:
    argv, env = tritonserver_command(["--model-repository=/models"])
    assert argv[0].endswith("/tritonserver")
    assert f"--backend-directory={backends_dir()}" in argv
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"]

    argv, _ = tritonserver_command(["--model-repository=/models", "--backend-directory=/elsewhere"])
    assert [arg for arg in argv if arg.startswith("--backend-directory")] == [
        "--backend-directory=/elsewhere"
    ]


# -- what the operator's endpoint check says when Triton cannot load the version ---------------


@pytest.fixture
def broken_version_repository(onnx_models: OnnxModels, tmp_path: Path) -> Path:
    """Model ``m`` whose published ``configs/v2.pbtxt`` names a model file that is not there."""
    write_model(tmp_path, onnx_config("m", max_batch_size=4), onnx_models.path("resnet18"), versions=(1, 2))
    v2 = onnx_config("m")
    v2.version_policy.specific.versions.append(2)
    v2.default_model_filename = "missing.onnx"
    (tmp_path / "m" / "configs").mkdir()
    (tmp_path / "m" / "configs" / "v2.pbtxt").write_text(text_format.MessageToString(v2))
    return tmp_path


def test_the_endpoint_check_of_a_version_triton_cannot_load_carries_tritons_reason(
    broken_version_repository: Path,
) -> None:
    """The operator's flags but the load (which would keep the server from ever being ready, and
    this helper waits for ready): with strict readiness the failed load makes the server not
    ready, and the check says why in Triton's words, from its repository index."""
    args = ("--model-control-mode=explicit", "--model-config-name=v2", "--strict-readiness=true")
    with start_tritonserver(broken_version_repository, *args) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
        try:
            with pytest.raises(InferenceServerException, match=r"missing\.onnx"):
                client.load_model("m")
        finally:
            client.close()
        tensors = (Tensor("input", "FP32", (3, 224, 224)),), (Tensor("output", "FP32", (1000,)),)
        check = check_endpoint(server.http_url, Expected("m", 2, *tensors), timeout=5.0)
    assert not check.ok
    assert check.message.startswith("server is not ready: Triton says version 2 is UNAVAILABLE: ")
    assert "missing.onnx" in check.message and "File doesn't exist" in check.message
    assert "\n" not in check.message and len(check.message) <= 520


# -- locked down: the operator's rendered Triton command line ----------------------------------

CONTROL_TOKEN = render.triton_control_token("a test key of at least thirty-two chars", "uid-1")
CONTROL = {render.CONTROL_HEADER: CONTROL_TOKEN}


def rendered_triton_args(model: str, version: int) -> list[str]:
    """Triton's args as the operator renders them for a locked-down pod, with ``$(VAR)`` expanded
    the way the kubelet does from the container's env; the repository comes from the test."""
    args = render.triton_args(model, version, locked=True)
    expanded = [arg.replace(f"$({render.CONTROL_ENV})", CONTROL_TOKEN) for arg in args]
    return [arg for arg in expanded if not arg.startswith("--model-repository=")]


@pytest.fixture
def locked(versioned_repository: Path) -> Iterator[TritonServer]:
    with start_tritonserver(versioned_repository, *rendered_triton_args("m", 2)) as server:
        yield server


def test_locked_triton_refuses_model_control_without_the_credential_and_still_serves(
    locked: TritonServer, onnx_models: OnnxModels
) -> None:
    http = tritonclient.http.InferenceServerClient(locked.http_url)
    grpc = tritonclient.grpc.InferenceServerClient(locked.grpc_url)
    try:
        for refused in (
            lambda: http.unload_model("m"),
            lambda: http.get_model_repository_index(),
            lambda: http.load_model("m"),
            lambda: http.get_log_settings(),
            lambda: http.get_trace_settings(),
            lambda: http.get_system_shared_memory_status(),
            lambda: grpc.unload_model("m"),
            lambda: grpc.get_model_repository_index(),
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                refused()
        # What every client needs stays open, and the model was not unloaded.
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("m", "2")
        assert http.get_model_metadata("m")["inputs"][0]["name"] == "input"
        assert http.get_model_config("m")["version_policy"] == {"specific": {"versions": [2]}}
        assert http.get_inference_statistics("m")["model_stats"]
        assert grpc.is_model_ready("m", "2")
    finally:
        http.close()
        grpc.close()
    result = classify_http(locked, "m", "input", "output", images(1))
    assert class_indexes(result) == onnxruntime_top_k(onnx_models.onnx_file("resnet18"), images(1))
    assert class_indexes(classify_grpc(locked, "m", "input", "output", images(1))) == class_indexes(result)


def test_locked_triton_obeys_the_credential_and_its_readiness_probe_follows_the_model(
    locked: TritonServer,
) -> None:
    probe = f"http://{locked.http_url}{render.model_ready_path('m', 2)}"
    http = tritonclient.http.InferenceServerClient(locked.http_url)
    grpc = tritonclient.grpc.InferenceServerClient(locked.grpc_url)
    try:
        assert http.get_model_repository_index(headers=CONTROL) == [
            {"name": "m", "version": "2", "state": "READY"}
        ]
        with pytest.raises(InferenceServerException, match=render.GRPC_CONTROL_METADATA):
            grpc.get_model_repository_index(headers=CONTROL)  # gRPC wants Triton's prefix on the key
        grpc_control = {render.GRPC_CONTROL_METADATA: CONTROL_TOKEN}
        assert grpc.get_model_repository_index(headers=grpc_control).models[0].state == "READY"
        with pytest.raises(InferenceServerException, match="restricted"):
            http.get_model_repository_index(headers={render.CONTROL_HEADER: "not-the-token"})
        assert urllib.request.urlopen(probe, timeout=5).status == 200
        http.unload_model("m", headers=CONTROL)
        wait_for(lambda: not http.is_model_ready("m", "2"), "m to unload", 30, every=0.2)
        # The pod's readiness probe now fails: it would leave the Service, while it stays live.
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(probe, timeout=5)
        assert http.is_server_live()
        http.load_model("m", headers=CONTROL)
        assert http.is_model_ready("m", "2")
    finally:
        http.close()
        grpc.close()


# -- the accuracy gate at verification (format onnx) ------------------------------------------

GATE_TENSORS = (Tensor("input", "FP32", (3, 224, 224)),), (Tensor("output", "FP32", (1000,)),)


@pytest.fixture(scope="module")
def served_resnet18(
    onnx_models: OnnxModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """Model ``m`` version 1 is resnet18, pinned as the operator publishes a version."""
    repository = tmp_path_factory.mktemp("gate-repository")
    config = onnx_config("m")
    config.version_policy.specific.versions.append(1)
    write_model(repository, config, onnx_models.path("resnet18"))
    with start_tritonserver(repository, "--model-control-mode=explicit", "--load-model=m") as server:
        yield server


def test_the_accuracy_gate_passes_the_served_model_its_reference_was_computed_from_with_onnxruntime_standin(
    served_resnet18: TritonServer, onnx_models: OnnxModels
) -> None:
    """The reference as an onnx build computes it (the builder's own function, onnxruntime on
    resnet18's file); Triton serves that file through the onnxruntime stand-in backend."""
    reference = accuracy.reference(onnx_models.onnx_file("resnet18"), GATE_TENSORS[0], 8)
    check = check_endpoint(served_resnet18.http_url, Expected("m", 1, *GATE_TENSORS, reference=reference))
    assert check.ok and not check.accuracy, check.message
    assert check.message == "model m v1 answered"


def test_the_accuracy_gate_fails_another_model_than_its_references_with_the_numbers_with_onnxruntime_standin(
    served_resnet18: TritonServer, onnx_models: OnnxModels
) -> None:
    """resnet50's reference stands in for a build of another model than the one served (the
    same inputs and outputs, so every other part of the check passes): the full check fails
    as an accuracy failure with the numbers; the cheap re-check does not repeat the gate."""
    reference = accuracy.reference(onnx_models.onnx_file("resnet50"), GATE_TENSORS[0], 8)
    tolerance = AccuracyTolerance(90, 1.0)
    expected = Expected("m", 1, *GATE_TENSORS, reference=reference, tolerance=tolerance)
    check = check_endpoint(served_resnet18.http_url, expected)
    assert not check.ok and check.accuracy and check.tolerance == tolerance
    found = re.search(
        r"the served model and onnxruntime disagree on 8 fixed inputs: top-5 agreement ([0-9.]+)% "
        r"\(at least 90% wanted\), max abs difference ([0-9.e+-]+) \(at most 1 wanted\)",
        check.message,
    )
    assert found, check.message
    assert float(found[1]) < 90 or float(found[2]) > 1.0
    assert check_endpoint(served_resnet18.http_url, expected, smoke=False).ok
