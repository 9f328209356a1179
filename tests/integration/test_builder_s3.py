"""Fetching from moto's S3 server and building (format onnx) the test ground's ResNets, as the Job would."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testground.models import OnnxModels
from testground.s3 import S3Server
from tritonresnet_builder.contract import BuildArgs, EngineSettings, ExitCode, Source, Tensor, parse_result
from tritonresnet_builder.fetch import FetchSettings, S3Location, fetch_s3, s3_client


def run_builder(argv: list[str], s3: S3Server) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | s3.env
    return subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_s3_downloads_in_parallel_ranges_with_progress(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(9 * (1 << 20) + 12345))  # 9 MiB and change: 10 ranges of 1 MiB
    uri = s3.upload(blob, "fetch/blob.bin")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    settings = FetchSettings(part_bytes=1 << 20, concurrency=4, progress_every_seconds=0.0)
    client = s3_client(Source(uri=uri, endpoint=s3.endpoint), settings)
    with caplog.at_level(logging.INFO, logger="tritonresnet_builder.fetch"):
        fetched = fetch_s3(
            client, S3Location(s3.bucket, "fetch/blob.bin"), tmp_path / "out" / "blob.bin", settings
        )
    assert fetched.sha256 == sha256(blob) and fetched.size == blob.stat().st_size
    assert fetched.etag
    assert any("MiB/s" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["resnet18", "renamed", "fixed_batch"])
def test_build_fetches_resnet_from_s3_with_digest_pin(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path, name: str
) -> None:
    source = onnx_models.onnx_file(name)
    spec = onnx_models.spec(name)
    uri = s3.upload(source, f"models/{name}.onnx")
    repo = tmp_path / "repo"
    repo.mkdir()
    args = BuildArgs(
        repository=str(repo),
        engine_key=f"k-{name}",
        source=Source(uri=uri, sha256=sha256(source), endpoint=s3.endpoint),
        engine=EngineSettings(format="onnx", max_batch_size=8),
        result_file=str(tmp_path / "result"),
    )
    done = run_builder(args.to_argv(), s3)
    assert done.returncode == ExitCode.OK, done.stderr
    result = parse_result(done.stdout)
    assert result.source_sha256 == sha256(source)
    assert result.inputs == (Tensor(spec.input_name, "FP32", (3, 224, 224)),)
    assert result.outputs == (Tensor(spec.output_name, "FP32", (1000,)),)
    engine = repo / ".tritonresnet" / "engines" / f"k-{name}"
    assert sha256(engine / "model.onnx") == sha256(source)
    assert "fetched s3://" in done.stderr


def test_build_fetches_external_data_next_to_the_model(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    folder = onnx_models.path("external_data")
    uri = s3.upload(folder, "models/external")
    repo = tmp_path / "repo"
    repo.mkdir()
    args = BuildArgs(
        repository=str(repo),
        engine_key="k-ext",
        source=Source(uri=f"{uri}/model.onnx", endpoint=s3.endpoint),
        engine=EngineSettings(format="onnx"),
        result_file=str(tmp_path / "result"),
    )
    done = run_builder(args.to_argv(), s3)
    assert done.returncode == ExitCode.OK, done.stderr
    engine = repo / ".tritonresnet" / "engines" / "k-ext"
    for file in folder.iterdir():
        assert sha256(engine / file.name) == sha256(file)
    assert parse_result(done.stdout).artifact_bytes == sum(f.stat().st_size for f in folder.iterdir())
