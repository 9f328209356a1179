"""moto's S3 server and the test ground's pausable proxy in front of it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from testground.models import OnnxModels
from testground.s3 import S3Server

# One attempt and short timeouts: a cut-off S3 must fail fast, not be retried for a minute.
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1, read_timeout=1)


@pytest.fixture
def paused_cleanly(s3: S3Server) -> Iterator[S3Server]:
    """The session's S3, guaranteed resumed after the test even when it fails mid-pause."""
    yield s3
    if s3.proxy.paused:
        s3.resume()


def test_upload_and_download_through_proxy_round_trip_a_model(
    s3: S3Server, onnx_models: OnnxModels, tmp_path: Path
) -> None:
    uri = s3.upload(onnx_models.path("resnet18"), "round-trip/model.onnx")
    assert uri == f"s3://{s3.bucket}/round-trip/model.onnx"

    copy = tmp_path / "model.onnx"
    s3.client().download_file(s3.bucket, "round-trip/model.onnx", str(copy))
    assert copy.read_bytes() == onnx_models.path("resnet18").read_bytes()


def test_upload_of_a_folder_puts_each_file_under_the_key(s3: S3Server, onnx_models: OnnxModels) -> None:
    uri = s3.upload(onnx_models.path("external_data"), "folder-upload")
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="folder-upload/")
    assert uri == f"s3://{s3.bucket}/folder-upload"
    assert sorted(item["Key"] for item in listed["Contents"]) == [
        "folder-upload/model.onnx",
        "folder-upload/model.onnx.data",
    ]


def test_pause_refuse_makes_requests_fail_and_resume_serves_same_state(
    paused_cleanly: S3Server, tmp_path: Path
) -> None:
    s3 = paused_cleanly
    (tmp_path / "marker").write_text("kept while paused")
    s3.upload(tmp_path / "marker", "pause/marker")
    client = s3.client(NO_RETRIES)

    s3.pause("refuse")
    with pytest.raises((EndpointConnectionError, BotocoreConnectionError)):
        client.head_object(Bucket=s3.bucket, Key="pause/marker")
    # moto itself was never stopped: the direct endpoint still answers.
    assert s3.client(NO_RETRIES, direct=True).head_object(Bucket=s3.bucket, Key="pause/marker")

    s3.resume()
    body = client.get_object(Bucket=s3.bucket, Key="pause/marker")["Body"].read()
    assert body == b"kept while paused"


def test_pause_hang_times_out_requests_and_resume_lets_a_waiting_one_through(
    paused_cleanly: S3Server, tmp_path: Path
) -> None:
    s3 = paused_cleanly
    (tmp_path / "marker").write_text("x")
    s3.upload(tmp_path / "marker", "hang/marker")

    s3.pause("hang")
    with pytest.raises(ReadTimeoutError):
        s3.client(NO_RETRIES).head_object(Bucket=s3.bucket, Key="hang/marker")

    patient = s3.client(Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=30))
    resumer = threading.Timer(0.5, s3.resume)
    resumer.start()
    try:
        assert patient.head_object(Bucket=s3.bucket, Key="hang/marker")["ContentLength"] == 1
    finally:
        resumer.join()
    assert s3.proxy.paused is None


def test_env_holds_the_aws_variables_a_subprocess_needs(s3: S3Server) -> None:
    assert set(s3.env) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
    assert s3.triton_repository("a/b") == f"s3://{s3.endpoint}/{s3.bucket}/a/b"
