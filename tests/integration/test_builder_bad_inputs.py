"""Bad inputs to the real builder CLI (a subprocess): exit code, message and an untouched repository.

The user's mistakes exit BAD_INPUT (3), never retried; an unreachable S3 endpoint
exits TRANSIENT (4), retried by the Job. Sources are real: the test ground's moto
server, ResNet ONNX files, and small ONNX graphs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from onnx import TensorProto
from testground.models import EXTERNAL_DATA_FILE, EXTERNAL_MODEL_FILE, OnnxModels
from testground.s3 import S3Server, start_s3
from tritonresnet_builder.contract import (
    BuildArgs,
    EngineSettings,
    ExitCode,
    PublishArgs,
    Source,
    parse_result,
)
from unit.builder import onnx_graphs


@dataclass(frozen=True)
class World:
    """Everything a case needs: the S3 servers, models, a scratch folder and a prepared repository."""

    s3: S3Server
    s3_auth: S3Server  #: a second moto server that checks credentials
    models: OnnxModels
    scratch: Path
    repo: Path


@dataclass(frozen=True)
class Case:
    argv: Callable[[World], list[str]]
    exit_code: ExitCode
    kind: str
    message: str  #: a fragment the message must contain
    field: str = ""
    env: Callable[[World], dict[str, str]] = lambda w: w.s3.env


def build(
    source: Callable[[World], str],
    *,
    sha256: str = "",
    pins: Callable[[World], dict[str, str]] = lambda w: {},
    endpoint: Callable[[World], str] | None = None,
    fmt: str = "onnx",
    precision: str = "fp16",
    max_batch: int = 8,
    opt_batch: int = 0,
) -> Callable[[World], list[str]]:
    def argv(world: World) -> list[str]:
        uri = source(world)
        return BuildArgs(
            repository=str(world.repo),
            engine_key="bad-input",
            source=Source(
                uri=uri,
                sha256=sha256,
                external_data_sha256=pins(world),
                endpoint=endpoint(world)
                if endpoint
                else (world.s3.endpoint if uri.startswith("s3://") else ""),
            ),
            engine=EngineSettings(
                format=fmt,  # type: ignore[arg-type]
                precision=precision,  # type: ignore[arg-type]
                max_batch_size=max_batch,
                opt_batch_size=opt_batch,
            ),
            result_file=str(world.scratch / "result.json"),
        ).to_argv()

    return argv


def uploaded(name: str, content: Callable[[World], bytes]) -> Callable[[World], str]:
    def uri(world: World) -> str:
        path = world.scratch / name
        path.write_bytes(content(world))
        return world.s3.upload(path, f"bad-inputs/{name}")

    return uri


def local(make: Callable[[Path], Path]) -> Callable[[World], str]:
    return lambda world: str(make(world.scratch / "graphs" / f"{id(make)}.onnx"))


def resnet18_bytes(world: World) -> bytes:
    return world.models.path("resnet18").read_bytes()


def free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def no_credentials(world: World) -> dict[str, str]:
    missing = str(world.scratch / "missing")
    return {
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_CONFIG_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def traversal_external_data(path: Path) -> Path:
    return onnx_graphs.relocate_external_data(
        onnx_graphs.classifier(path, external=True), "../../../etc/passwd"
    )


def tampered_external_data(world: World) -> str:
    """The test ground's external-data ResNet with its weights file changed after the pin was taken."""
    folder = world.models.tampered_external_data(world.scratch / "tampered")
    return world.s3.upload(folder, "bad-inputs/tampered") + "/" + EXTERNAL_MODEL_FILE


def original_weights_pin(world: World) -> dict[str, str]:
    data = world.models.path("external_data") / EXTERNAL_DATA_FILE
    return {EXTERNAL_DATA_FILE: hashlib.sha256(data.read_bytes()).hexdigest()}


def data_named_like_the_model(world: World) -> str:
    """graph.onnx keeps its weights in "model.onnx", the name the builder keeps the graph under;
    next to it a different graph under that name (the test ground's ResNet-18)."""
    folder = world.scratch / "collide"
    onnx_graphs.relocate_external_data(
        onnx_graphs.classifier(folder / "graph.onnx", external=True), "model.onnx"
    )
    (folder / "graph.onnx.data").unlink()
    shutil.copyfile(world.models.path("resnet18"), folder / "model.onnx")
    return world.s3.upload(folder, "bad-inputs/collide") + "/graph.onnx"


CASES: dict[str, Case] = {
    "truncated file": Case(
        build(uploaded("truncated.onnx", lambda w: resnet18_bytes(w)[:1_000_000])),
        ExitCode.BAD_INPUT,
        "InvalidOnnx",
        "",
        "spec.source.uri",
    ),
    "not onnx": Case(
        build(uploaded("readme.onnx", lambda w: b"# just a README\n" * 100)),
        ExitCode.BAD_INPUT,
        "InvalidOnnx",
        "not an ONNX model",
        "spec.source.uri",
    ),
    "empty object": Case(
        build(uploaded("empty.onnx", lambda w: b"")),
        ExitCode.BAD_INPUT,
        "InvalidOnnx",
        "empty",
        "spec.source.uri",
    ),
    "wrong digest": Case(
        build(uploaded("r18.onnx", resnet18_bytes), sha256="0" * 64),
        ExitCode.BAD_INPUT,
        "DigestMismatch",
        "but the spec pins 000",
        "spec.source.sha256",
    ),
    "tampered external data": Case(
        build(tampered_external_data, pins=original_weights_pin),
        ExitCode.BAD_INPUT,
        "DigestMismatch",
        f"bad-inputs/tampered/{EXTERNAL_DATA_FILE} has sha256",
        "spec.source.externalData",
    ),
    "external data named like the model": Case(
        build(data_named_like_the_model),
        ExitCode.BAD_INPUT,
        "ExternalDataCollision",
        "keeps tensor data in 'model.onnx', which collides with the model's own file name",
        "spec.source.uri",
    ),
    "external data pin the model does not read": Case(
        build(uploaded("r18.onnx", resnet18_bytes), pins=lambda w: {"weights.bin": "a" * 64}),
        ExitCode.BAD_INPUT,
        "UnknownExternalData",
        "pins external data 'weights.bin', but the model",
        "spec.source.externalData",
    ),
    "malformed external data pin": Case(
        build(uploaded("r18.onnx", resnet18_bytes), pins=lambda w: {EXTERNAL_DATA_FILE: "ABC"}),
        ExitCode.BAD_INPUT,
        "InvalidDigest",
        "'ABC'",
        "spec.source.externalData",
    ),
    "malformed digest": Case(
        build(uploaded("r18.onnx", resnet18_bytes), sha256="not-a-digest"),
        ExitCode.BAD_INPUT,
        "InvalidDigest",
        "not-a-digest",
        "spec.source.sha256",
    ),
    "missing key": Case(
        build(lambda w: w.s3.uri("no/such/model.onnx")),
        ExitCode.BAD_INPUT,
        "ObjectNotFound",
        "no/such/model.onnx",
        "spec.source.uri",
    ),
    "missing bucket": Case(
        build(lambda w: "s3://no-such-bucket/model.onnx"),
        ExitCode.BAD_INPUT,
        "BucketNotFound",
        "s3://no-such-bucket/model.onnx",
        "spec.source.uri",
    ),
    "denied credentials": Case(
        build(lambda w: w.s3_auth.uri("model.onnx"), endpoint=lambda w: w.s3_auth.endpoint),
        ExitCode.BAD_INPUT,
        "AccessDenied",
        "access denied",
        "spec.source.uri",
        env=lambda w: w.s3_auth.env,
    ),
    "no credentials": Case(
        build(lambda w: w.s3.uri("bad-inputs/r18.onnx")),
        ExitCode.BAD_INPUT,
        "MissingCredentials",
        "no S3 credentials",
        "spec.source.uri",
        env=no_credentials,
    ),
    "unreachable endpoint": Case(
        build(lambda w: "s3://models/model.onnx", endpoint=lambda w: free_endpoint()),
        ExitCode.TRANSIENT,
        "StorageUnreachable",
        "could not reach",
        "spec.source.endpoint",
    ),
    "bad uri scheme": Case(
        build(lambda w: "gs://models/model.onnx"),
        ExitCode.BAD_INPUT,
        "InvalidSourceUri",
        "gs://models/model.onnx",
        "spec.source.uri",
    ),
    "s3 uri without key": Case(
        build(lambda w: "s3://models/"),
        ExitCode.BAD_INPUT,
        "InvalidSourceUri",
        "s3://bucket/key",
        "spec.source.uri",
    ),
    "unsupported input type": Case(
        build(local(lambda p: onnx_graphs.identity(p, elem=TensorProto.COMPLEX64))),
        ExitCode.BAD_INPUT,
        "UnsupportedModel",
        "input 'x' has element type COMPLEX64",
        "spec.source.uri",
    ),
    "non-batch dynamic dims": Case(
        build(local(lambda p: onnx_graphs.identity(p, dims=("n", 3, "h", "w")))),
        ExitCode.BAD_INPUT,
        "UnsupportedModel",
        "input 'x' has a dynamic dimension 2",
        "spec.source.uri",
    ),
    "absurd input size": Case(
        build(local(lambda p: onnx_graphs.identity(p, dims=("n", 3, 100000, 100000)))),
        ExitCode.BAD_INPUT,
        "UnsupportedModel",
        "input 'x' takes 114,441 MiB per sample",
        "spec.source.uri",
    ),
    "zero inputs": Case(
        build(local(onnx_graphs.no_inputs)),
        ExitCode.BAD_INPUT,
        "UnsupportedModel",
        "no inputs",
        "spec.source.uri",
    ),
    "external data outside the folder": Case(
        build(local(traversal_external_data)),
        ExitCode.BAD_INPUT,
        "InvalidOnnx",
        "outside the model's folder",
        "spec.source.uri",
    ),
    "fixed batch of 4 with max batch 0": Case(
        # max batch 0 runs the model at batch 1, so only a dynamic or batch-1 export will do
        build(local(lambda p: onnx_graphs.classifier(p, batch=4)), max_batch=0),
        ExitCode.BAD_INPUT,
        "UnsupportedModel",
        "fixed batch dimension of 4",
        "spec.source.uri",
    ),
    "negative max batch": Case(
        build(local(onnx_graphs.classifier), max_batch=-1),
        ExitCode.USAGE,
        "InvalidArgument",
        "max batch size -1 is below 0",
        "spec.engine.maxBatchSize",
    ),
    "optimum batch above 1 with max batch 0": Case(
        build(local(onnx_graphs.classifier), max_batch=0, opt_batch=2),
        ExitCode.USAGE,
        "InvalidArgument",
        "optimum batch 2 is outside 1..1",
        "spec.engine.optBatchSize",
    ),
    "publish with a negative max batch": Case(
        lambda w: PublishArgs(
            repository=str(w.repo),
            model_name="resnet",
            version_key="v",
            engine_keys=("prebuilt",),
            max_batch_size=-1,
            result_file=str(w.scratch / "result.json"),
        ).to_argv(),
        ExitCode.USAGE,
        "InvalidArgument",
        "max batch size and queue delay must be at least 0",
    ),
    "int8 without calibration": Case(
        build(local(onnx_graphs.classifier), fmt="tensorrt", precision="int8"),
        ExitCode.BAD_INPUT,
        "CalibrationRequired",
        "calibration",
        "spec.engine.precision",
    ),
    "missing local file": Case(
        build(lambda w: str(w.scratch / "nowhere.onnx")),
        ExitCode.BAD_INPUT,
        "ObjectNotFound",
        "nowhere.onnx",
        "spec.source.uri",
    ),
    "path traversal model name": Case(
        lambda w: PublishArgs(
            repository=str(w.repo),
            model_name="../../etc",
            version_key="v",
            engine_keys=("prebuilt",),
            result_file=str(w.scratch / "result.json"),
        ).to_argv(),
        ExitCode.BAD_INPUT,
        "InvalidModelName",
        "'../../etc'",
        "spec.model.name",
    ),
    "publish of an engine never built": Case(
        lambda w: PublishArgs(
            repository=str(w.repo),
            model_name="resnet",
            version_key="v",
            engine_keys=("never-built",),
            result_file=str(w.scratch / "result.json"),
        ).to_argv(),
        ExitCode.BAD_INPUT,
        "EngineMissing",
        "never-built",
    ),
}


@pytest.fixture(scope="module")
def s3_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto checking credentials: after its first action (creating the bucket) it wants an IAM user."""
    previous = os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "1"
    try:
        server_cm = start_s3(tmp_path_factory.mktemp("s3-auth"))
        server = server_cm.__enter__()
    finally:
        if previous is None:
            del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
        else:
            os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = previous
    try:
        yield server
    finally:
        server_cm.__exit__(None, None, None)


@pytest.fixture
def world(s3: S3Server, s3_auth: S3Server, onnx_models: OnnxModels, tmp_path: Path) -> World:
    repo = tmp_path / "repo"
    repo.mkdir()
    # an earlier good build, so "untouched" also covers an existing engine folder
    args = BuildArgs(
        repository=str(repo),
        engine_key="prebuilt",
        source=Source(uri=str(onnx_graphs.classifier(tmp_path / "good.onnx"))),
        engine=EngineSettings(format="onnx"),
        result_file="",
    )
    subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *args.to_argv()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return World(s3=s3, s3_auth=s3_auth, models=onnx_models, scratch=scratch, repo=repo)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root, with a digest of each file (folders too: an empty one is a change)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in root.rglob("*")
    }


def test_bad_inputs_cover_at_least_twelve_cases() -> None:
    assert len(CASES) >= 12


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_exits_with_code_and_message_and_leaves_repository_untouched(
    world: World, case: Case
) -> None:
    argv = case.argv(world)
    before = snapshot(world.repo)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | case.env(world)
    done = subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *argv],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == case.exit_code, done.stdout + done.stderr
    result = parse_result(done.stdout)
    assert result.exit_code == case.exit_code and not result.ok
    assert result.error is not None
    assert result.error.kind == case.kind, result.error
    assert case.message in result.error.message, result.error.message
    assert result.error.field == case.field
    assert parse_result((world.scratch / "result.json").read_text()) == result
    assert snapshot(world.repo) == before
