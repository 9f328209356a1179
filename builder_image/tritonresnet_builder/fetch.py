"""Fetch the source model: S3 (or an S3-compatible store) or a local path.

S3 objects are fetched as parallel ranged GETs written in place into one
preallocated file, so a 100 MB+ model streams to disk without holding it in
memory. Every range after the first is pinned to the first response's ETag,
so an object replaced mid-download fails instead of mixing two versions.

Credentials come only from the environment or boto3's default chain (IRSA,
instance profiles, ``AWS_*`` variables); no argument carries them.

Errors are sorted for the Job's ``podFailurePolicy``: a missing object or
bucket, denied credentials, a malformed URI and a digest mismatch are
``BAD_INPUT``; connection failures, throttling and 5xx are retried with
backoff and then reported ``TRANSIENT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as boto_errors
from botocore.config import Config

from tritonresnet_builder.contract import ExitCode, Source
from tritonresnet_builder.failures import BuilderError, bad_input, transient

log = logging.getLogger(__name__)

MiB = 1 << 20
URI_FIELD = "spec.source.uri"
ENDPOINT_FIELD = "spec.source.endpoint"
SHA256_FIELD = "spec.source.sha256"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# S3 error codes that mean "the user named something that is not there or not theirs".
_NOT_FOUND = {"NoSuchKey": "ObjectNotFound", "NoSuchBucket": "BucketNotFound", "404": "ObjectNotFound"}
_DENIED = {
    "AccessDenied",
    "403",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
}
# Codes worth a retry even though they arrive as a 4xx.
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "PreconditionFailed",
    "OperationAborted",
}
_CONNECTION_ERRORS = (
    boto_errors.EndpointConnectionError,
    boto_errors.ConnectTimeoutError,
    boto_errors.ReadTimeoutError,
    boto_errors.ConnectionClosedError,
    boto_errors.ResponseStreamingError,
    boto_errors.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def sibling(self, relative: str) -> S3Location:
        """An object next to this one (an ONNX external-data file)."""
        return S3Location(self.bucket, posixpath.join(posixpath.dirname(self.key), relative))


@dataclass(frozen=True)
class FetchSettings:
    part_bytes: int = 16 * MiB
    concurrency: int = 8
    attempts: int = 4  #: per part, on top of botocore's own retries of the request
    backoff_seconds: float = 0.5
    progress_every_seconds: float = 5.0


@dataclass(frozen=True)
class FetchedFile:
    path: Path
    sha256: str
    size: int
    etag: str = ""


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")


def parse_uri(uri: str) -> S3Location | Path:
    """``s3://bucket/key`` or a local path (``file://`` optional); anything else is BAD_INPUT."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not _BUCKET_RE.match(bucket) or not key or key.endswith("/"):
            raise bad_input(
                "InvalidSourceUri", f"source URI {uri!r} is not of the form s3://bucket/key", URI_FIELD
            )
        return S3Location(bucket, key)
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", uri) or not uri:
        raise bad_input(
            "InvalidSourceUri",
            f"source URI {uri!r} has an unsupported scheme; use s3://bucket/key or a local path",
            URI_FIELD,
        )
    return Path(uri)


def validate_sha256(pin: str) -> str:
    if pin and not SHA256_RE.match(pin):
        raise bad_input("InvalidDigest", f"sha256 pin {pin!r} is not 64 lowercase hex digits", SHA256_FIELD)
    return pin


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(fetched: FetchedFile, pin: str, uri: str) -> None:
    if pin and fetched.sha256 != pin:
        raise bad_input(
            "DigestMismatch",
            f"{uri} has sha256 {fetched.sha256}, but the spec pins {pin}",
            SHA256_FIELD,
        )


# -- error classification -------------------------------------------------------------


def classify(exc: BaseException, uri: str) -> BuilderError:
    """Turn a boto3/botocore/OS error into a BuilderError naming ``uri``."""
    if isinstance(exc, BuilderError):
        return exc
    if isinstance(exc, boto_errors.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return bad_input(_NOT_FOUND[code], f"{uri}: no such {what} ({code})", URI_FIELD)
        if code in _DENIED:
            return bad_input(
                "AccessDenied",
                f"{uri}: access denied with the credentials in the environment ({code})",
                URI_FIELD,
            )
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return transient(
                "StorageUnavailable", f"{uri}: S3 answered {code or status}, retries exhausted", URI_FIELD
            )
        return bad_input(
            "StorageError",
            f"{uri}: S3 refused the request ({code or status}: {error.get('Message', '')})",
            URI_FIELD,
        )
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
        return bad_input(
            "MissingCredentials",
            f"{uri}: no S3 credentials in the environment or the default chain",
            URI_FIELD,
        )
    if isinstance(exc, ValueError) and "endpoint" in str(exc).lower():
        return bad_input(
            "InvalidEndpoint", f"S3 endpoint for {uri} is not a valid URL: {exc}", ENDPOINT_FIELD
        )
    if isinstance(exc, _CONNECTION_ERRORS) or isinstance(exc, boto_errors.HTTPClientError):
        return transient(
            "StorageUnreachable",
            f"{uri}: could not reach the S3 endpoint after retries ({exc})",
            ENDPOINT_FIELD,
        )
    if isinstance(exc, OSError):
        return transient("VolumeError", f"writing {uri} to the volume failed: {exc}")
    raise exc


T = TypeVar("T")


def with_retries(action: Callable[[], T], uri: str, settings: FetchSettings) -> T:
    """Run ``action``; retry transient failures with jittered exponential backoff."""
    for attempt in range(settings.attempts):
        try:
            return action()
        except Exception as exc:
            error = classify(exc, uri)
            if error.exit_code != ExitCode.TRANSIENT or attempt == settings.attempts - 1:
                raise error from exc
            delay = settings.backoff_seconds * (2**attempt) * (0.5 + random.random())
            log.warning(
                "fetch %s: %s; retrying in %.1fs (attempt %d of %d)",
                uri,
                exc,
                delay,
                attempt + 2,
                settings.attempts,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- progress -------------------------------------------------------------------------


class Progress:
    """Thread-safe byte counter that logs at most every few seconds."""

    def __init__(self, uri: str, total: int, every_seconds: float) -> None:
        self.uri, self.total, self.every = uri, total, every_seconds
        self.done = 0
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()

    def add(self, count: int) -> None:
        with self.lock:
            self.done += count
            now = time.monotonic()
            if now - self.last < self.every:
                return
            self.last = now
        self.report()

    def report(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        percent = 100.0 * self.done / self.total if self.total else 100.0
        log.info(
            "fetch %s: %.1f/%.1f MiB (%.0f%%) at %.1f MiB/s",
            self.uri,
            self.done / MiB,
            self.total / MiB,
            percent,
            self.done / MiB / elapsed,
        )


# -- S3 -------------------------------------------------------------------------------


def s3_client(source: Source, settings: FetchSettings) -> Any:
    """A client from the default credential chain; never credentials from arguments."""
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=settings.concurrency + 2,
        connect_timeout=5,
        read_timeout=60,
        # S3-compatible stores (MinIO, Ceph) are usually addressed by path.
        s3={"addressing_style": "path" if source.endpoint else "auto"},
    )
    try:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=source.endpoint or None,
            region_name=source.region or None,
            config=config,
        )
    except ValueError as exc:
        raise bad_input(
            "InvalidEndpoint", f"S3 endpoint {source.endpoint!r} is not a valid URL: {exc}", ENDPOINT_FIELD
        ) from exc


def _total_size(response: dict[str, Any]) -> int:
    content_range = str(response.get("ContentRange", ""))
    if "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(response.get("ContentLength", 0))


def _stream_into(fd: int, offset: int, body: Any, progress: Progress | None) -> int:
    written = 0
    for chunk in body.iter_chunks(MiB):
        os.pwrite(fd, chunk, offset + written)
        written += len(chunk)
        if progress:
            progress.add(len(chunk))
    return written


def _ranges(total: int, part: int, start: int) -> Iterator[tuple[int, int]]:
    for begin in range(start, total, part):
        yield begin, min(begin + part, total) - 1


def fetch_s3(client: Any, location: S3Location, dest: Path, settings: FetchSettings) -> FetchedFile:
    """Download one object with parallel ranged GETs into ``dest``."""
    uri = location.uri
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:

        def first() -> tuple[int, str, int]:
            try:
                response = client.get_object(
                    Bucket=location.bucket, Key=location.key, Range=f"bytes=0-{settings.part_bytes - 1}"
                )
            except boto_errors.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                    return 0, "", 0  # an empty object: no byte range exists
                raise
            written = _stream_into(fd, 0, response["Body"], None)
            return _total_size(response), str(response.get("ETag", "")), written

        total, etag, head = with_retries(first, uri, settings)
        if head > total:
            raise transient("ObjectChanged", f"{uri} changed while it was being fetched", URI_FIELD)
        os.ftruncate(fd, total)
        progress = Progress(uri, total, settings.progress_every_seconds)
        progress.add(head)

        def part(span: tuple[int, int]) -> None:
            begin, end = span

            def attempt() -> None:
                extra = {"IfMatch": etag} if etag else {}
                response = client.get_object(
                    Bucket=location.bucket, Key=location.key, Range=f"bytes={begin}-{end}", **extra
                )
                got = _stream_into(fd, begin, response["Body"], progress)
                if got != end - begin + 1:
                    raise ConnectionError(f"short read of bytes {begin}-{end}: got {got}")

            with_retries(attempt, uri, settings)

        with ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="fetch") as pool:
            # list() re-raises the first failure; the pool waits for the others.
            list(pool.map(part, _ranges(total, settings.part_bytes, head)))
        os.fsync(fd)
        progress.report()
    except BuilderError:
        raise
    except Exception as exc:
        raise classify(exc, uri) from exc
    finally:
        os.close(fd)
    return FetchedFile(path=dest, sha256=file_sha256(dest), size=total, etag=etag.strip('"'))


# -- local ----------------------------------------------------------------------------


def fetch_local(path: Path, dest: Path) -> FetchedFile:
    """Copy a local file (a workstation run) while hashing it."""
    if not path.is_file():
        raise bad_input("ObjectNotFound", f"source file {path} does not exist or is not a file", URI_FIELD)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(4 * MiB):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return FetchedFile(path=dest, sha256=digest.hexdigest(), size=size)


# -- the source as a whole ------------------------------------------------------------


class SourceFetcher:
    """Fetches the model and, by relative name, the files next to it (external data)."""

    def __init__(self, source: Source, settings: FetchSettings | None = None) -> None:
        self.source = source
        self.settings = settings or FetchSettings()
        self.location = parse_uri(source.uri)
        validate_sha256(source.sha256)
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.source, self.settings)
        return self._client

    def fetch_model(self, dest: Path) -> FetchedFile:
        """The model file itself, checked against the sha256 pin."""
        fetched = self._fetch(self.location, dest)
        check_digest(fetched, self.source.sha256, self.source.uri)
        return fetched

    def fetch_sibling(self, relative: str, dest: Path) -> FetchedFile:
        """A file the model names relative to itself (validated by the caller)."""
        if isinstance(self.location, S3Location):
            return self._fetch(self.location.sibling(relative), dest)
        return self._fetch(self.location.parent / relative, dest)

    def _fetch(self, location: S3Location | Path, dest: Path) -> FetchedFile:
        started = time.monotonic()
        if isinstance(location, S3Location):
            fetched = fetch_s3(self._s3(), location, dest, self.settings)
            name = location.uri
        else:
            fetched = fetch_local(location, dest)
            name = str(location)
        seconds = max(time.monotonic() - started, 1e-6)
        log.info(
            "fetched %s: %d bytes in %.2fs (%.1f MiB/s), sha256 %s",
            name,
            fetched.size,
            seconds,
            fetched.size / MiB / seconds,
            fetched.sha256,
        )
        return fetched
