"""Fetching from moto's S3 server and building (format onnx) the test ground's ResNets, as the Job would.

The fault cases reach moto for real; where moto has no such fault (a 503, an
object replaced between two ranges), a botocore ``before-send`` hook on the
fetch's own client answers or acts in its place, so the retries and the
412 are botocore's and s3transfer's own handling.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from testground.models import EXTERNAL_DATA_FILE, EXTERNAL_MODEL_FILE, OnnxModels
from testground.s3 import S3Server
from tritonresnet_builder.contract import (
    BuildArgs,
    EngineSettings,
    ExitCode,
    Source,
    SourceFile,
    Tensor,
    parse_result,
)
from tritonresnet_builder.failures import BuilderError
from tritonresnet_builder.fetch import (
    CONCURRENCY_ENV,
    MAX_AUTO_PART,
    MIN_AUTO_PART,
    PART_MIB_ENV,
    FetchSettings,
    S3Location,
    fetch_s3,
    s3_client,
)

MiB = 1 << 20


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


def build_external_data_model(
    s3: S3Server, folder: Path, tmp_path: Path, **pins: Any
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Upload the external-data ResNet and build it (onnx) with ``pins`` (Source's fields);
    returns the builder's run and the engine folder."""
    uri = s3.upload(folder, f"models/{tmp_path.name}")
    repo = tmp_path / "repo"
    repo.mkdir()
    args = BuildArgs(
        repository=str(repo),
        engine_key="k-ext",
        source=Source(uri=f"{uri}/{EXTERNAL_MODEL_FILE}", endpoint=s3.endpoint, **pins),
        engine=EngineSettings(format="onnx"),
        result_file=str(tmp_path / "result"),
    )
    return run_builder(args.to_argv(), s3), repo / ".tritonresnet" / "engines" / "k-ext"


def test_build_fetches_external_data_next_to_the_model_and_records_each_files_digest(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    """Unpinned: every file is fetched, and the result lists each with the digest and size the
    builder hashed while fetching it, the model first."""
    folder = onnx_models.path("external_data")
    done, engine = build_external_data_model(s3, folder, tmp_path)
    assert done.returncode == ExitCode.OK, done.stderr
    for file in folder.iterdir():
        assert sha256(engine / file.name) == sha256(file)
    result = parse_result(done.stdout)
    assert result.artifact_bytes == sum(f.stat().st_size for f in folder.iterdir())
    assert result.source_files == tuple(
        SourceFile(f.name, sha256(f), f.stat().st_size)
        for f in (folder / EXTERNAL_MODEL_FILE, folder / EXTERNAL_DATA_FILE)
    )
    assert parse_result((tmp_path / "result").read_text()).source_files == result.source_files


def test_build_with_the_graph_and_its_external_data_pinned_passes_both_pins(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    folder = onnx_models.path("external_data")
    graph, data = folder / EXTERNAL_MODEL_FILE, folder / EXTERNAL_DATA_FILE
    done, engine = build_external_data_model(
        s3, folder, tmp_path, sha256=sha256(graph), external_data_sha256={EXTERNAL_DATA_FILE: sha256(data)}
    )
    assert done.returncode == ExitCode.OK, done.stderr
    assert [f.sha256 for f in parse_result(done.stdout).source_files] == [sha256(graph), sha256(data)]
    assert sha256(engine / EXTERNAL_DATA_FILE) == sha256(data)


# -- faults on the way -------------------------------------------------------------------


class _Body(io.BytesIO):
    """The raw body botocore reads from an AWSResponse."""

    def stream(self, amt: int = 1024, decode_content: bool | None = None) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


def _slow_down(request: Any) -> AWSResponse:
    body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Body(body))


@pytest.fixture
def blob(s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A 6 MiB object under a key of its own (so replacing it touches no other test)."""
    path = tmp_path / "blob.bin"
    path.write_bytes(os.urandom(6 * MiB + 321))
    key = f"faults/{tmp_path.name}.bin"
    s3.upload(path, key)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return key, path


def _fetch_client(s3: S3Server, key: str, settings: FetchSettings) -> Any:
    return s3_client(Source(uri=s3.uri(key), endpoint=s3.endpoint), settings)


def _ranged_gets(client: Any, act: Any) -> list[str]:
    """Call ``act(request, n)`` before the n-th ranged GET is sent; returns the Range headers seen."""
    seen: list[str] = []

    def before_send(request: Any, **_: Any) -> AWSResponse | None:
        if request.method != "GET" or "Range" not in request.headers:
            return None
        value = request.headers["Range"]
        seen.append(value.decode() if isinstance(value, bytes) else value)
        return act(request, len(seen))  # type: ignore[no-any-return]

    client.meta.events.register("before-send.s3.GetObject", before_send)
    return seen


def test_fetch_s3_retries_a_503_and_says_so(
    s3: S3Server, blob: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, path = blob
    settings = FetchSettings(part_bytes=2 * MiB, concurrency=2)
    client = _fetch_client(s3, key, settings)
    # The first two ranged GETs answer 503 SlowDown; botocore's standard retries go on.
    _ranged_gets(client, lambda request, n: _slow_down(request) if n <= 2 else None)
    with caplog.at_level(logging.INFO, logger="tritonresnet_builder.fetch"):
        fetched = fetch_s3(client, S3Location(s3.bucket, key), tmp_path / "out.bin", settings)
    assert fetched.sha256 == sha256(path) and fetched.size == path.stat().st_size
    retries = [r.getMessage() for r in caplog.records if "retrying (request attempt" in r.getMessage()]
    assert len(retries) == 2 and all("HTTP 503 SlowDown" in line for line in retries), retries


def test_fetch_s3_reports_a_lasting_503_as_transient(
    s3: S3Server, blob: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, _ = blob
    settings = FetchSettings(part_bytes=2 * MiB, concurrency=2, attempts=2, backoff_seconds=0.01)
    client = _fetch_client(s3, key, settings)
    _ranged_gets(client, lambda request, n: _slow_down(request))
    with caplog.at_level(logging.INFO, logger="tritonresnet_builder.fetch"):
        with pytest.raises(BuilderError) as raised:
            fetch_s3(client, S3Location(s3.bucket, key), tmp_path / "out.bin", settings)
    assert raised.value.exit_code == ExitCode.TRANSIENT
    assert raised.value.kind == "StorageUnavailable" and "SlowDown" in raised.value.message
    assert any("retrying in" in r.getMessage() for r in caplog.records)  # the whole object, once


def test_fetch_s3_fails_when_the_object_is_replaced_mid_download(
    s3: S3Server, blob: tuple[str, Path], tmp_path: Path
) -> None:
    key, _ = blob
    settings = FetchSettings(part_bytes=1 * MiB, concurrency=2)
    client = _fetch_client(s3, key, settings)
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(6 * MiB + 321))  # the same length: only the ETag tells them apart
    replaced: list[int] = []

    def replace_before_the_fourth(request: Any, n: int) -> None:
        if n == 4 and not replaced:
            s3.upload(other, key)
            replaced.append(n)

    seen = _ranged_gets(client, replace_before_the_fourth)
    with pytest.raises(BuilderError) as raised:
        fetch_s3(client, S3Location(s3.bucket, key), tmp_path / "out.bin", settings)
    assert replaced, seen
    assert raised.value.exit_code == ExitCode.TRANSIENT and raised.value.kind == "ObjectChanged"
    assert "changed while it was being fetched" in raised.value.message
    # Not retried in this pod (no range asked twice): the Job's next one fetches the new version whole.
    assert len(seen) == len(set(seen)), seen


def test_fetch_s3_pins_a_one_part_object_too(s3: S3Server, blob: tuple[str, Path], tmp_path: Path) -> None:
    key, _ = blob
    settings = FetchSettings(part_bytes=64 * MiB)  # the whole object in one GET
    client = _fetch_client(s3, key, settings)
    other = tmp_path / "other.bin"
    other.write_bytes(os.urandom(6 * MiB + 321))
    _ranged_gets(client, lambda request, n: s3.upload(other, key) and None)
    with pytest.raises(BuilderError) as raised:
        fetch_s3(client, S3Location(s3.bucket, key), tmp_path / "out.bin", settings)
    assert raised.value.kind == "ObjectChanged"


# -- settings ----------------------------------------------------------------------------


def test_auto_part_size_is_one_part_per_thread_within_bounds() -> None:
    settings = FetchSettings(concurrency=8)
    assert settings.part_size(10 * MiB) == MIN_AUTO_PART
    assert settings.part_size(512 * MiB) == 64 * MiB
    assert settings.part_size(100 * MiB) == MIN_AUTO_PART  # 12.5 MiB a thread: the floor
    assert settings.part_size(200 * MiB + 1) == 26 * MiB  # rounded up to whole MiB
    assert settings.part_size(8 * 1024 * MiB) == MAX_AUTO_PART
    assert FetchSettings(part_bytes=5 * MiB).part_size(512 * MiB) == 5 * MiB


def test_fetch_settings_from_the_environment() -> None:
    assert FetchSettings.from_env({}) == FetchSettings()
    tuned = FetchSettings.from_env({PART_MIB_ENV: "32", CONCURRENCY_ENV: "4"})
    assert tuned.part_bytes == 32 * MiB and tuned.concurrency == 4
    for bad in ({PART_MIB_ENV: "lots"}, {PART_MIB_ENV: str(16 * MiB)}, {CONCURRENCY_ENV: "0"}):
        with pytest.raises(BuilderError) as raised:
            FetchSettings.from_env(bad)
        assert raised.value.exit_code == ExitCode.USAGE and raised.value.kind == "InvalidFetchSetting"


def test_fetch_s3_gets_over_a_connection_cut_mid_stream_and_says_so(
    s3: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(16 * MiB))
    key = f"faults/{tmp_path.name}-cut.bin"
    s3.upload(path, key)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    settings = FetchSettings(part_bytes=8 * MiB, concurrency=2, progress_every_seconds=0.0)
    client = _fetch_client(s3, key, settings)
    cut: list[threading.Timer] = []

    class CutOnce(logging.Handler):
        """At the first progress line past 1 MiB, drop every connection and refuse new ones for 1 s."""

        def emit(self, record: logging.LogRecord) -> None:
            progress = str(record.msg).startswith("fetch %s: %.1f/%.1f MiB")
            if progress and not cut and isinstance(record.args, tuple) and float(record.args[1]) >= 1.0:
                s3.pause("refuse")
                cut.append(threading.Timer(1.0, s3.resume))
                cut[0].start()

    handler = CutOnce()
    logging.getLogger("tritonresnet_builder.fetch").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="tritonresnet_builder.fetch"):
            fetched = fetch_s3(client, S3Location(s3.bucket, key), tmp_path / "out.bin", settings)
    finally:
        logging.getLogger("tritonresnet_builder.fetch").removeHandler(handler)
        for timer in cut:
            timer.join()
        if s3.proxy.paused:
            s3.resume()
    assert cut, "the download ended before the cut"
    assert fetched.sha256 == sha256(path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("stream broke" in w or "retrying" in w for w in warnings), warnings
