"""``tritonresnet.client.classify`` through the real tritonserver over HTTP and gRPC.

The server is the real ``tritonserver`` of the nvidia-pytriton wheel; the ONNX
models run in the test ground's STAND-IN for Triton's ONNX Runtime backend (a
python backend calling onnxruntime on CPU, see testground/triton.py), because
that wheel has no ONNX Runtime backend. The models are ResNets with random
weights (testground/models.py), so the expected classes come from running the
same ONNX file with onnxruntime here, not from what a picture shows. Requests
are counted with Triton's statistics extension (``get_inference_statistics``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tritonclient.http
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
    # Without batching the whole tensor is declared, the ONNX file's batch of one included.
    batch_dims = [] if max_batch_size else [1]
    config = model_config_pb2.ModelConfig(
        name=name,
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        input=[
            model_config_pb2.ModelInput(
                name=input_name, data_type=model_config_pb2.TYPE_FP32, dims=[*batch_dims, 3, 224, 224]
            )
        ],
        output=[
            model_config_pb2.ModelOutput(
                name=output_name,
                data_type=model_config_pb2.TYPE_FP32,
                dims=[*batch_dims, 1000],
                label_filename=labels,
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
    "resnet18_nobatch": ("resnet18", "input", "output", 0, ""),
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


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, images: list[Path]) -> Path:
    """A tree in which sorting puts an unreadable file second: top/00-sample.jpg, top/01-broken.jpg,
    top/sub/02-gray.png, top/sub/03-rgba.png; plus a text file that is not picked up."""
    top = tmp_path_factory.mktemp("folder") / "top"
    (top / "sub").mkdir(parents=True)
    shutil.copy2(images[0], top / "00-sample.jpg")
    (top / "01-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG header and nothing else")
    shutil.copy2(images[1], top / "sub" / "02-gray.png")
    shutil.copy2(images[2], top / "sub" / "03-rgba.png")
    (top / "sub" / "README.txt").write_text("not an image")
    return top


def url(server: TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def served(server: TritonServer, model: str) -> tuple[int, int]:
    """(requests, images) Triton has answered for ``model`` so far, from its statistics."""
    client = tritonclient.http.InferenceServerClient(server.http_url)
    try:
        stats = client.get_inference_statistics(model)["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_stats"]["success"]["count"]), int(stats["inference_count"])


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


def test_cli_classify_prints_top5_lines_and_json_lines_from_triton(
    triton: TritonServer, images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = onnxruntime_top("resnet18", images[:2], TOP)
    argv = ["classify", str(images[0]), str(images[1]), "--url", triton.http_url, "--model", "resnet18"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(images[0]) and lines[6] == str(images[1])
    index, score = expected[0][0]
    assert lines[1] == f"  1. {score:.4f}  (index {index}) {cl.imagenet_label(index)}"

    # --json is JSON Lines: one object per image and line (it was one array before).
    argv = ["classify", str(images[0]), "--url", triton.grpc_url, "--grpc", "--model", "renamed", "--top=3"]
    assert cli.main([*argv, "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    want = onnxruntime_top("renamed", images[:1], 3)[0]
    assert data["image"] == str(images[0])
    assert [p["index"] for p in data["predictions"]] == [index for index, _ in want]
    assert [p["rank"] for p in data["predictions"]] == [1, 2, 3]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_classify_dir_streams_json_lines_in_order_past_a_broken_file(
    triton: TritonServer,
    images: list[Path],
    folder: Path,
    protocol: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A folder through the decoding processes and several requests in flight (batch 1 makes
    three requests of the three readable images); the broken file is a line of its own."""
    argv = ["classify", str(folder), "--url", url(triton, protocol), "--model", "resnet18", "--json"]
    argv += [
        "--batch",
        "1",
        "--in-flight",
        "3",
        "--workers",
        "2",
        *(["--grpc"] if protocol == "grpc" else []),
    ]
    before = served(triton, "resnet18")
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    names = ["00-sample.jpg", "01-broken.jpg", "sub/02-gray.png", "sub/03-rgba.png"]
    assert [r["image"] for r in records] == [str(folder / name) for name in names]
    broken = records[1]
    assert broken["predictions"] == [] and broken["error"].startswith(
        f"cannot read image {folder}/01-broken.jpg"
    )
    good = [r for r in records if "error" not in r]
    for record, want in zip(good, onnxruntime_top("resnet18", images, TOP), strict=True):
        assert [p["index"] for p in record["predictions"]] == [index for index, _ in want]
        np.testing.assert_allclose(
            [p["score"] for p in record["predictions"]], [s for _, s in want], atol=1e-4
        )
    assert f"error: cannot read image {folder}/01-broken.jpg" in err
    assert "error: 1 of 4 images could not be read" in err
    after = served(triton, "resnet18")
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)


@pytest.mark.parametrize(
    ("model", "extra", "requests"),
    [
        ("resnet18_mb2", [], 3),
        ("resnet18", [], 1),
        ("resnet18", ["--batch", "2"], 3),
        ("resnet18_nobatch", [], 5),
    ],
)
def test_cli_classify_fills_batches_to_max_batch_size_as_triton_counts_them(
    triton: TritonServer,
    images: list[Path],
    tmp_path: Path,
    model: str,
    extra: list[str],
    requests: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Five images: 2+2+1 with max_batch_size 2, one request of 5 with 8, one each without batching."""
    for index in range(5):
        shutil.copy2(images[index % 3], tmp_path / f"{index}{images[index % 3].suffix}")
    before = served(triton, model)
    assert (
        cli.main(["classify", str(tmp_path), "--url", triton.http_url, "--model", model, "--json", *extra])
        == 0
    )
    after = served(triton, model)
    assert (after[0] - before[0], after[1] - before[1]) == (requests, 5)
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    files = sorted(tmp_path.iterdir())
    assert [r["image"] for r in records] == [str(f) for f in files]
    expected = onnxruntime_top("resnet18", files, TOP)
    assert [[p["index"] for p in r["predictions"]] for r in records] == [[i for i, _ in e] for e in expected]


def test_classify_raises_for_a_broken_file_when_asked_for_a_list(triton: TritonServer, folder: Path) -> None:
    with pytest.raises(cl.ClassifyError, match=r"cannot read image .*01-broken\.jpg"):
        cl.classify(cl.collect_images([folder]), triton.http_url, "resnet18")


def test_classify_fast_decode_answers_every_image(triton: TritonServer, images: list[Path]) -> None:
    """Its agreement with the exact path is measured by benchmarks/classify_throughput.py, not here."""
    fast = cl.classify(images, triton.http_url, "resnet18", fast_decode=True)
    assert [len(p) for p in fast] == [TOP] * len(images)
    # The PNGs are not JPEGs: draft mode does not apply and they take the exact path.
    assert fast[1:] == cl.classify(images[1:], triton.http_url, "resnet18")
