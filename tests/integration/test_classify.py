"""``tritonresnet.client.classify`` through the real tritonserver over HTTP and gRPC.

The server is the real ``tritonserver`` of the nvidia-pytriton wheel; the ONNX
models run in the test ground's STAND-IN for Triton's ONNX Runtime backend (a
python backend calling onnxruntime on CPU, see testground/triton.py), because
that wheel has no ONNX Runtime backend. The models are ResNets with random
weights (testground/models.py), so the expected classes come from running the
same ONNX file with onnxruntime here, not from what a picture shows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from google.protobuf import text_format
from PIL import Image
from testground.models import ensure_models
from testground.triton import TritonServer, free_port, start_tritonserver
from tritonclient.grpc import model_config_pb2
from tritonresnet import cli
from tritonresnet.client import classify as cl
from tritonresnet.client.preprocess import preprocess

pytestmark = pytest.mark.triton

SAMPLE = Path(cl.__file__).parent / "data" / "sample.jpg"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "preprocess_reference.npz"
TOP = 5
PROTOCOLS = ("http", "grpc")


def model_config(name: str, input_name: str, output_name: str, max_batch_size: int, labels: str = "") -> str:
    config = model_config_pb2.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        input=[
            model_config_pb2.ModelInput(
                name=input_name, data_type=model_config_pb2.TYPE_FP32, dims=[3, 224, 224]
            )
        ],
        output=[
            model_config_pb2.ModelOutput(
                name=output_name, data_type=model_config_pb2.TYPE_FP32, dims=[1000], label_filename=labels
            )
        ],
        instance_group=[
            model_config_pb2.ModelInstanceGroup(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
        ],
    )
    config.parameters["intra_op_thread_count"].string_value = "1"
    return text_format.MessageToString(config)


# name in the repository -> (ONNX variant, input, output, max_batch_size, label file)
MODELS = {
    "resnet18": ("resnet18", "input", "output", 8, ""),
    "resnet18_mb2": ("resnet18", "input", "output", 2, ""),
    "renamed": ("renamed", "data", "logits", 8, ""),
    "labelled": ("resnet18", "input", "output", 8, "labels.txt"),
}
SERVER_LABELS = [f"server-class-{i}" for i in range(1000)]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = ensure_models()
    root = tmp_path_factory.mktemp("model-repository")
    for name, (variant, input_name, output_name, max_batch, labels) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        shutil.copy2(models.onnx_file(variant), root / name / "1" / "model.onnx")
        config = model_config(name, input_name, output_name, max_batch, labels)
        (root / name / "config.pbtxt").write_text(config)
        if labels:
            (root / name / labels).write_text("\n".join(SERVER_LABELS) + "\n")
    return root


@pytest.fixture(scope="module")
def triton(repository: Path) -> Iterator[TritonServer]:
    with start_tritonserver(repository) as server:
        yield server


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The bundled sample JPEG and two synthetic fixture images (portrait gray, RGBA) as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    paths = [SAMPLE]
    with np.load(FIXTURE) as data:
        for name in ("portrait_gray", "square_rgba"):
            path = folder / f"{name}.png"
            Image.fromarray(data[f"{name}/pixels"], str(data[f"{name}/mode"])).save(path)
            paths.append(path)
    return paths


def url(server: TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def onnxruntime_top(variant: str, paths: list[Path], top: int) -> list[list[tuple[int, float]]]:
    """Top-k (index, score) per image from plain onnxruntime on the same preprocessing."""
    session = onnxruntime.InferenceSession(
        str(ensure_models().onnx_file(variant)), providers=["CPUExecutionProvider"]
    )
    batch = np.stack([preprocess(p) for p in paths])
    (scores,) = session.run(None, {session.get_inputs()[0].name: batch})
    return [[(int(i), float(row[i])) for i in np.argsort(-row)[:top]] for row in scores]


def assert_matches_onnxruntime(
    predictions: list[list[cl.Prediction]], expected: list[list[tuple[int, float]]]
) -> None:
    assert len(predictions) == len(expected)
    for got, want in zip(predictions, expected, strict=True):
        assert [p.index for p in got] == [index for index, _ in want]
        np.testing.assert_allclose([p.score for p in got], [score for _, score in want], rtol=1e-4, atol=1e-4)
        assert [p.label for p in got] == [cl.imagenet_label(p.index) for p in got]
        assert all(p.label for p in got)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_top5_equals_onnxruntime_when_served_by_triton(
    triton: TritonServer, images: list[Path], protocol: cl.Protocol
) -> None:
    predictions = cl.classify(images, url(triton, protocol), "resnet18", protocol=protocol, top=TOP)
    assert_matches_onnxruntime(predictions, onnxruntime_top("resnet18", images, TOP))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_batches_three_images_when_max_batch_size_is_2(
    triton: TritonServer, images: list[Path], protocol: cl.Protocol
) -> None:
    predictions = cl.classify(images, url(triton, protocol), "resnet18_mb2", protocol=protocol, top=3)
    assert_matches_onnxruntime(predictions, onnxruntime_top("resnet18", images, 3))


def test_classify_honours_a_smaller_batch_and_rejects_a_larger_one(
    triton: TritonServer, images: list[Path]
) -> None:
    one_by_one = cl.classify(images, triton.http_url, "resnet18", batch=1)
    assert_matches_onnxruntime(one_by_one, onnxruntime_top("resnet18", images, TOP))
    with pytest.raises(cl.ClassifyError, match="more than the model's batch limit 2"):
        cl.classify(images, triton.http_url, "resnet18_mb2", batch=3)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_reads_input_and_output_names_from_metadata_when_model_is_renamed(
    triton: TritonServer, images: list[Path], protocol: cl.Protocol
) -> None:
    predictions = cl.classify(images[:1], url(triton, protocol), "renamed", protocol=protocol)
    assert_matches_onnxruntime(predictions, onnxruntime_top("renamed", images[:1], TOP))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_says_model_is_missing_and_lists_models_when_name_is_wrong(
    triton: TritonServer, protocol: cl.Protocol
) -> None:
    with pytest.raises(cl.ClassifyError, match=r"model 'resnet-missing' is not on Triton .*resnet18"):
        cl.classify([SAMPLE], url(triton, protocol), "resnet-missing", protocol=protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_says_server_is_unreachable_when_nothing_listens(protocol: cl.Protocol) -> None:
    with pytest.raises(cl.ClassifyError, match=r"cannot reach Triton at 127\.0\.0\.1:\d+ over " + protocol):
        cl.classify([SAMPLE], f"127.0.0.1:{free_port()}", "resnet18", protocol=protocol, timeout=10)


def test_read_model_io_gives_the_same_contract_over_http_and_grpc(triton: TritonServer) -> None:
    """gRPC's JSON renders dims as strings and wraps the config; both must read the same."""
    found = [cl.read_model_io(url(triton, p), "renamed", protocol=p) for p in PROTOCOLS]  # type: ignore[arg-type]
    assert found[0] == found[1]
    assert (found[0].input_name, found[0].output_name, found[0].layout) == ("data", "logits", "CHW")
    assert (found[0].max_batch_size, found[0].classes, found[0].input_shape) == (8, 1000, (3, 224, 224))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_classify_uses_the_servers_labels_when_the_model_has_a_label_file(
    triton: TritonServer, images: list[Path], protocol: cl.Protocol
) -> None:
    predictions = cl.classify(images[:1], url(triton, protocol), "labelled", protocol=protocol)
    expected = onnxruntime_top("resnet18", images[:1], TOP)[0]
    assert [(p.index, p.label) for p in predictions[0]] == [(i, SERVER_LABELS[i]) for i, _ in expected]


def test_cli_classify_prints_top5_lines_and_json_from_triton(
    triton: TritonServer, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = onnxruntime_top("resnet18", images[:2], TOP)
    argv = ["classify", str(images[0]), str(images[1]), "--url", triton.http_url, "--model", "resnet18"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(images[0]) and lines[6] == str(images[1])
    index, score = expected[0][0]
    assert lines[1] == f"  1. {score:.4f}  (index {index}) {cl.imagenet_label(index)}"

    argv = ["classify", str(images[0]), "--url", triton.grpc_url, "--grpc", "--model", "renamed", "--top=3"]
    assert cli.main([*argv, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    want = onnxruntime_top("renamed", images[:1], 3)[0]
    assert [p["index"] for p in data[0]["predictions"]] == [index for index, _ in want]
