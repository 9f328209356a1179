"""The ``tritonresnet`` command line, and the pure parts of classify it prints from.

Nothing runs here: no server, no cluster. Error paths use addresses where
nothing listens (real connection refusals, not mocks); classification through a
real Triton is in tests/integration/test_classify.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonresnet.controller
import yaml
from PIL import Image
from tritonresnet import cli
from tritonresnet.client import classify as cl
from tritonresnet.client.preprocess import preprocess
from tritonresnet.controller.settings import Settings
from tritonresnet_builder import contract

SAMPLE = Path(cl.__file__).parent / "data" / "sample.jpg"


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- output formats -----------------------------------------------------------------

RESULTS = [
    cl.ImageResult(
        Path("dog.jpg"),
        (cl.Prediction(0.8123, 207, "golden retriever"), cl.Prediction(0.1, 208, "Labrador retriever")),
    ),
    cl.ImageResult(Path("bird.png"), (cl.Prediction(12.472842, 90, "lorikeet"),)),
]
FAILED = cl.ImageResult(Path("notes.jpg"), error="cannot read image notes.jpg: cannot identify image file")


def test_format_result_prints_rank_score_index_and_label_per_image() -> None:
    assert "".join(cli.format_result(r) for r in RESULTS) == (
        "dog.jpg\n"
        "  1. 0.8123  (index 207) golden retriever\n"
        "  2. 0.1000  (index 208) Labrador retriever\n"
        "bird.png\n"
        "  1. 12.4728  (index 90) lorikeet\n"
    )


def test_result_json_is_one_line_with_full_scores_and_ranks() -> None:
    lines = [cli.result_json(r) for r in RESULTS]
    assert all("\n" not in line for line in lines)
    data = [json.loads(line) for line in lines]
    assert data[0]["image"] == "dog.jpg"
    assert data[0]["predictions"][1] == {"rank": 2, "score": 0.1, "index": 208, "label": "Labrador retriever"}
    assert data[1] == {
        "image": "bird.png",
        "predictions": [{"rank": 1, "score": 12.472842, "index": 90, "label": "lorikeet"}],
    }


def test_result_json_of_a_failed_image_has_an_error_and_no_predictions() -> None:
    assert json.loads(cli.result_json(FAILED)) == {
        "image": "notes.jpg",
        "predictions": [],
        "error": "cannot read image notes.jpg: cannot identify image file",
    }


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_redraws_one_line_at_most_every_interval_and_clears_it() -> None:
    now = [100.0]
    terminal = Terminal()
    progress = cli.Progress(200, terminal, clock=lambda: now[0])
    now[0] += 1.0
    progress.show(40, 0)
    now[0] += 0.05
    progress.show(41, 0)  # too soon: not redrawn
    assert terminal.getvalue() == "\r 40/200 images  40.0/s\x1b[K"
    progress.clear()
    progress.show(42, 1)  # cleared: drawn again at once
    assert terminal.getvalue().endswith("\r\x1b[K\r 42/200 images  40.0/s  1 failed\x1b[K")
    now[0] += 3.95
    progress.finish(200, 1)
    assert terminal.getvalue().endswith(
        "\r\x1b[Kclassified 200 of 200 images in 5.0 s (40.0 images/s), 1 failed\n"
    )


# -- what classify reads ----------------------------------------------------------------


def solid_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """PNGs of distinct grey levels, so a tensor tells which file it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(start, start + count):
        path = folder / f"{index:03d}.png"
        Image.new("RGB", (64 + index, 48), (index * 5, 100, 200)).save(path)
        paths.append(path)
    return paths


def test_collect_images_searches_folders_recursively_sorted_and_keeps_input_order(tmp_path: Path) -> None:
    (tmp_path / "b" / "deeper").mkdir(parents=True)
    (tmp_path / "b" / ".cache").mkdir()
    for name in ("b/z.JPG", "b/a.png", "b/deeper/m.jpeg", "b/notes.txt", "b/.hidden.jpg", "b/.cache/x.jpg"):
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "scan.dat"  # named explicitly: read whatever its suffix
    single.write_bytes(b"")
    found = cl.collect_images([single, tmp_path / "b"])
    assert found == [single, tmp_path / "b/a.png", tmp_path / "b/deeper/m.jpeg", tmp_path / "b/z.JPG"]


def test_collect_images_refuses_missing_inputs_and_folders_without_images(tmp_path: Path) -> None:
    with pytest.raises(cl.ClassifyError, match=r"no such image file or folder: .*nope\.jpg"):
        cl.collect_images([tmp_path / "nope.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(cl.ClassifyError, match=r"folder .*empty has no image files \(.*\.jpg"):
        cl.collect_images([tmp_path / "empty"])


# -- the stream, with a stand-in for the server ------------------------------------------

SPEC = cl.DecodeSpec(224, 224, "CHW", "FP32")


def fingerprint(tensor: npt.NDArray[Any]) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor).tobytes()).hexdigest()


class Recorder:
    """Stands in for Triton: answers each image with its tensor's fingerprint as the label."""

    def __init__(self, parties: int = 0) -> None:
        self.batches: list[int] = []
        self.active = self.most_active = 0
        self.lock = threading.Lock()
        # A barrier only passes when `parties` calls are inside at the same time.
        self.barrier = threading.Barrier(parties, timeout=60) if parties else None

    def __call__(self, batch: npt.NDArray[Any]) -> list[tuple[cl.Prediction, ...]]:
        with self.lock:
            self.batches.append(len(batch))
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait()
            return [(cl.Prediction(0.0, 0, fingerprint(sample)),) for sample in batch]
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_sends_full_batches_in_order_with_tensors_equal_to_the_reference_path(
    tmp_path: Path, workers: int
) -> None:
    """Through the decoding processes too (workers=2): bit-identical tensors, input order."""
    paths = solid_images(tmp_path, 7)
    recorder = Recorder()
    results = list(cl.stream_batches(paths, SPEC, recorder, batch=3, workers=workers, in_flight=2))
    assert [r.image for r in results] == paths
    assert [r.predictions[0].label for r in results] == [fingerprint(preprocess(p)) for p in paths]
    assert recorder.batches == [3, 3, 1]


def test_stream_reports_a_bad_file_in_the_middle_and_goes_on(tmp_path: Path) -> None:
    paths = solid_images(tmp_path, 5)
    bad = tmp_path / "002.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    recorder = Recorder()
    results = list(cl.stream_batches(paths, SPEC, recorder, batch=2, workers=0))
    assert [r.image for r in results] == paths
    assert [r.ok for r in results] == [True, True, False, True, True]
    assert results[2].error.startswith(f"cannot read image {bad}: ")
    good = [p for p in paths if p != bad]
    assert [r.predictions[0].label for r in results if r.ok] == [fingerprint(preprocess(p)) for p in good]
    assert recorder.batches == [2, 2]  # the bad file took no place in a batch


def test_stream_with_only_unreadable_files_sends_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not a picture")
    recorder = Recorder()
    results = list(cl.stream_batches([bad, bad], SPEC, recorder, batch=4, workers=0))
    assert [r.ok for r in results] == [False, False] and recorder.batches == []


@pytest.mark.parametrize("in_flight", [2, 3])
def test_stream_keeps_in_flight_requests_on_the_wire_at_once_and_no_more(
    tmp_path: Path, in_flight: int
) -> None:
    """Each round of `in_flight` calls meets at a barrier: it breaks (and the stream fails)
    unless that many requests really are outstanding together."""
    paths = solid_images(tmp_path, 4 * in_flight)
    recorder = Recorder(parties=in_flight)
    results = list(cl.stream_batches(paths, SPEC, recorder, batch=2, workers=0, in_flight=in_flight))
    assert [r.image for r in results] == paths
    assert recorder.most_active == in_flight


def test_stream_reads_its_input_lazily_and_holds_a_bounded_number_of_images(tmp_path: Path) -> None:
    paths = solid_images(tmp_path, 3)
    pulled = 0

    def many() -> Iterator[Path]:
        nonlocal pulled
        for index in range(1000):
            pulled += 1
            yield paths[index % 3]

    batch, in_flight, workers = 2, 2, 0
    stream = cl.stream_batches(many(), SPEC, Recorder(), batch=batch, workers=workers, in_flight=in_flight)
    first = next(stream)
    assert first.image == paths[0]
    # The documented bound: (in_flight + 2) batches and two images per decoding process.
    assert pulled <= (in_flight + 2) * batch + 2 * max(workers, 1)
    stream.close()


def test_stream_ends_with_the_servers_error(tmp_path: Path) -> None:
    def refuse(batch: npt.NDArray[Any]) -> list[tuple[cl.Prediction, ...]]:
        raise cl.ClassifyError("inference on 'm' at h:1 failed: boom")

    with pytest.raises(cl.ClassifyError, match="boom"):
        list(cl.stream_batches(solid_images(tmp_path, 3), SPEC, refuse, batch=2, workers=0))


# -- classify subcommand errors ------------------------------------------------------


def test_classify_exits_1_and_names_the_file_when_an_image_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.jpg"
    code = cli.main(["classify", str(missing), "--url", "127.0.0.1:1", "--model", "resnet"])
    assert code == 1
    assert f"error: no such image file or folder: {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [[], ["--grpc"]])
def test_classify_exits_1_with_a_clear_message_when_no_server_listens(
    flag: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"127.0.0.1:{closed_port()}"
    code = cli.main(["classify", str(SAMPLE), "--url", url, "--model", "resnet", "--timeout", "5", *flag])
    assert code == 1
    err = capsys.readouterr().err
    assert f"error: cannot reach Triton at {url} over {'grpc' if flag else 'http'}" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "x.jpg", "--model", "m"],
        ["classify", "x.jpg", "--url", "h:1", "--model", "m", "--top", "0"],
        ["classify", "x.jpg", "--url", "h:1", "--model", "m", "--in-flight", "0"],
        ["classify", "x.jpg", "--url", "h:1", "--model", "m", "--workers", "-1"],
        ["status"],
        [],
    ],
)
def test_main_exits_2_on_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2


def test_python_dash_m_runs_the_same_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "tritonresnet", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for command in ("classify", "status", "operator", "build", "inspect"):
        assert command in done.stdout


# -- status subcommand errors --------------------------------------------------------


def kubeconfig(path: Path, server: str, namespace: str = "") -> Path:
    context: dict[str, Any] = {"cluster": "c", "user": "u"} | ({"namespace": namespace} if namespace else {})
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "ctx", "context": context}],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_status_exits_1_when_the_api_server_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = f"http://127.0.0.1:{closed_port()}"
    config = kubeconfig(tmp_path / "config", server)
    assert cli.main(["status", "resnet", "-n", "vision", "--kubeconfig", str(config)]) == 1
    assert f"error: cannot reach the Kubernetes API at {server}" in capsys.readouterr().err


def test_status_exits_1_when_the_kubeconfig_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "resnet", "--kubeconfig", str(tmp_path / "missing")]) == 1
    assert "error: cannot load a Kubernetes configuration" in capsys.readouterr().err


def test_current_namespace_is_the_contexts_namespace_or_default(tmp_path: Path) -> None:
    assert cli._current_namespace(str(kubeconfig(tmp_path / "a", "http://h", "vision"))) == "vision"
    assert cli._current_namespace(str(kubeconfig(tmp_path / "b", "http://h"))) == "default"


# -- operator subcommand ---------------------------------------------------------------


def fake_handlers(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """A stand-in for the kopf wiring whose ``run`` only records the Settings it is given.

    Nothing of kopf is imported: this tests what the CLI hands over, not the operator.
    """
    ran: list[Settings] = []
    fake = types.ModuleType("tritonresnet.controller.handlers")
    fake.run = ran.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(tritonresnet.controller, "handlers", fake, raising=False)
    return ran


def test_operator_builds_settings_from_env_and_flags_and_runs_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran = fake_handlers(monkeypatch)
    monkeypatch.setenv("TRITONRESNET_WORKERS", "4")
    monkeypatch.setenv("TRITONRESNET_LOG_FORMAT", "json")
    assert (
        cli.main(["operator", "-n", "vision", "--log-format", "plain", "--liveness", "http://0.0.0.0:8080/h"])
        == 0
    )
    assert ran == [
        Settings(
            namespaces=("vision",), log_format="plain", liveness_endpoint="http://0.0.0.0:8080/h", workers=4
        )
    ]


@pytest.mark.parametrize(
    ("env", "argv", "named"),
    [
        ({"TRITONRESNET_VERIFY_INTERVAL_SECONDS": "soon"}, [], "TRITONRESNET_VERIFY_INTERVAL_SECONDS"),
        ({}, ["--workers", "0"], "--workers"),
    ],
)
def test_operator_exits_2_naming_a_bad_variable_or_flag_before_starting(
    env: dict[str, str],
    argv: list[str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ran = fake_handlers(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["operator", *argv]) == 2
    assert f"tritonresnet operator: error: {named}: " in capsys.readouterr().err
    assert ran == []


# -- build subcommand: the builder argv for a workstation ----------------------------------


def manifest(model_format: str) -> dict[str, Any]:
    return {
        "apiVersion": "tritonresnet.io/v1alpha1",
        "kind": "TritonResNet",
        "metadata": {"name": "resnet", "namespace": "vision"},
        "spec": {
            "source": {"uri": "s3://models/resnet50.onnx", "endpoint": "http://s3.local:9000"},
            "model": {"name": "resnet50", "format": model_format},
            "engine": {"maxBatchSize": 4},
            "repository": {"claimName": "models"},
        },
    }


@pytest.mark.parametrize("model_format", ["onnx", "tensorrt"])
def test_workstation_plan_builds_then_publishes_into_the_local_repository(
    model_format: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    build_argv, publish_argv = cli.workstation_plan(manifest(model_format), repo, Settings(), tmp_path)
    build, publish = contract.parse_args(build_argv), contract.parse_args(publish_argv)
    assert isinstance(build, contract.BuildArgs) and isinstance(publish, contract.PublishArgs)
    assert build.repository == publish.repository == str(repo)
    assert build.result_file == str(tmp_path / "build.json")
    assert publish.result_file == str(tmp_path / "publish.json")
    assert build.source.uri == "s3://models/resnet50.onnx" and build.source.endpoint == "http://s3.local:9000"
    assert build.engine.format == model_format and build.engine.max_batch_size == 4
    assert publish.engine_keys == (build.engine_key,)
    assert publish.model_name == "resnet50" and publish.max_batch_size == 4


def test_workstation_plan_keys_follow_the_release(tmp_path: Path) -> None:
    def plan(default_release: str, spec_release: str = "") -> list[list[str]]:
        trn = manifest("tensorrt")
        if spec_release:
            trn["spec"]["serving"] = {"release": spec_release}
        steps: list[list[str]] = cli.workstation_plan(
            trn, tmp_path, Settings(default_release=default_release), tmp_path
        )
        return steps

    assert plan("25.01") != plan("25.02")
    assert plan("25.01") == plan("25.01")
    # The spec's own release wins over the default, as in a cluster (Settings.release_for).
    assert plan("25.01", "25.02") == plan("25.02") == plan("24.12", "25.02")


def test_build_exits_1_on_a_bad_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "trn.yaml"
    path.write_text(yaml.safe_dump(manifest("onnx")))
    assert (
        cli.main(["build", "-f", str(path), "--repository", str(tmp_path / "repo"), "--release", "25"]) == 1
    )
    assert "error: --release: '25' is not an NGC release" in capsys.readouterr().err


def test_build_exits_1_when_the_manifest_holds_no_tritonresnet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert cli.main(["build", "-f", str(path), "--repository", str(tmp_path / "repo")]) == 1
    assert "holds no TritonResNet" in capsys.readouterr().err


# -- classify helpers the CLI prints from ------------------------------------------------


def metadata(shape: list[Any], datatype: str = "FP32", name: str = "input") -> dict[str, Any]:
    return {
        "name": "m",
        "inputs": [{"name": name, "datatype": datatype, "shape": shape}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}],
    }


def test_model_io_reads_a_batching_chw_model_with_grpc_string_dims() -> None:
    io = cl.model_io(metadata(["-1", "3", "224", "224"]), {"max_batch_size": 8})
    assert io == cl.ModelIO("input", "FP32", "CHW", 224, 224, 8, (3, 224, 224), "output", 1000)


def test_model_io_derives_hwc_from_the_shape_and_fills_dynamic_sides() -> None:
    io = cl.model_io(metadata([-1, -1, -1, 3], "FP16"), {"max_batch_size": 4})
    assert (io.layout, io.height, io.width, io.input_shape) == ("HWC", 224, 224, (224, 224, 3))


def test_model_io_of_a_non_batching_model_keeps_its_leading_1() -> None:
    output_meta = metadata([1, 3, 224, 224])
    output_meta["outputs"][0]["shape"] = [1, 1000]
    io = cl.model_io(output_meta, {})
    assert (io.max_batch_size, io.batch_limit, io.input_shape, io.classes) == (0, 1, (1, 3, 224, 224), 1000)


@pytest.mark.parametrize(
    ("shape", "datatype", "message"),
    [
        ([-1, 1, 224, 224], "FP32", "needs 3 x H x W or H x W x 3"),
        ([-1, 3, 16, 16], "FP32", "too small"),
        ([-1, 3, 224, 224], "INT8", "classify can send FP32 or FP16"),
        ([-1, 1000], "FP32", "needs 3 x H x W"),
    ],
)
def test_model_io_explains_inputs_that_are_not_images(shape: list[int], datatype: str, message: str) -> None:
    with pytest.raises(cl.ClassifyError, match=message):
        cl.model_io(metadata(shape, datatype), {"max_batch_size": 8})


def test_parse_classification_uses_imagenet_names_unless_the_server_has_labels() -> None:
    assert cl.parse_classification(b"12.472842:90") == cl.Prediction(12.472842, 90, "lorikeet")
    assert cl.parse_classification(b"10.0:1:dog") == cl.Prediction(10.0, 1, "dog")
    assert cl.parse_classification("0.5:3", classes=10) == cl.Prediction(0.5, 3, "")
    with pytest.raises(cl.ClassifyError, match="unexpected classification result"):
        cl.parse_classification(b"garbage")


@pytest.mark.parametrize(
    ("index", "label"),
    [(0, "tench"), (207, "golden retriever"), (281, "tabby"), (999, "toilet tissue"), (1000, "")],
)
def test_imagenet_label_gives_the_first_wordnet_name(index: int, label: str) -> None:
    assert cl.imagenet_label(index) == label


def test_batch_size_defaults_to_the_models_limit_and_refuses_more() -> None:
    io = cl.model_io(metadata([-1, 3, 224, 224]), {"max_batch_size": 2})
    assert cl.batch_size(io, None) == 2 and cl.batch_size(io, 1) == 1
    with pytest.raises(cl.ClassifyError, match="more than the model's batch limit 2"):
        cl.batch_size(io, 3)


@pytest.mark.parametrize("url", ["localhost:8000", "http://localhost:8000/", "grpc://localhost:8000"])
def test_host_port_accepts_pasted_urls(url: str) -> None:
    assert cl.host_port(url) == "localhost:8000"
