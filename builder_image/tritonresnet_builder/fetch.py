"""Fetch the source model: S3 (or an S3-compatible store) or a local path.

The transfer itself is boto3's transfer manager (``s3transfer``): parallel
ranged GETs written in place into one file, so a 100 MB+ model streams to disk
without being held in memory, every range pinned with ``If-Match`` to one
ETag, so an object replaced mid-download fails (412) instead of mixing two
versions. This module adds what the builder needs around it: the part size
and concurrency (``TRITONRESNET_FETCH_PART_MIB``,
``TRITONRESNET_FETCH_CONCURRENCY``), the sha256 hashed while the download
runs, progress lines, a log line for every retry, and the sorting of errors
into exit codes.

Credentials come only from the environment or boto3's default chain (IRSA,
instance profiles, ``AWS_*`` variables); no argument carries them.

Errors are sorted for the Job's ``podFailurePolicy``: a missing object or
bucket, denied credentials, a malformed URI and a digest mismatch are
``BAD_INPUT``; connection failures, throttling and 5xx are retried with
backoff and then reported ``TRANSIENT``, as is an object replaced during the
download (the Job's next pod fetches the new version whole).
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.exceptions as boto_errors
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer import exceptions as transfer_errors
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from tritonresnet_builder.contract import ExitCode, Source
from tritonresnet_builder.failures import BuilderError, bad_input, transient, usage

log = logging.getLogger(__name__)

MiB = 1 << 20
URI_FIELD = "spec.source.uri"
ENDPOINT_FIELD = "spec.source.endpoint"
SHA256_FIELD = "spec.source.sha256"
EXTERNAL_DATA_FIELD = "spec.source.externalData"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

PART_MIB_ENV = "TRITONRESNET_FETCH_PART_MIB"
CONCURRENCY_ENV = "TRITONRESNET_FETCH_CONCURRENCY"

#: Bounds of the automatic part size (see :meth:`FetchSettings.part_size`).
MIN_AUTO_PART = 16 * MiB
MAX_AUTO_PART = 128 * MiB
#: botocore's attempts per request (standard mode), the retries of a refused or failed request.
REQUEST_ATTEMPTS = 3

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
    #: 0: about one part per thread, between MIN_AUTO_PART and MAX_AUTO_PART (see part_size)
    part_bytes: int = 0
    concurrency: int = 8
    #: whole-object attempts, on top of botocore's per request and s3transfer's per part
    attempts: int = 3
    backoff_seconds: float = 0.5
    progress_every_seconds: float = 5.0

    def part_size(self, total: int) -> int:
        """The part size for an object of ``total`` bytes.

        Without a fixed size, one part per thread keeps every connection busy
        with the fewest requests. Few requests matter on stores that pay per
        request (moto's server copies the whole object for every ranged GET,
        so 32 parts of 512 MiB took 13 s and 8 parts 4 s); the 16 MiB floor
        keeps the requests of a small model few, and the 128 MiB ceiling keeps
        a part that s3transfer fetches again after a broken stream short.
        """
        if self.part_bytes:
            return self.part_bytes
        per_thread = -(-total // max(self.concurrency, 1))
        return min(max(-(-per_thread // MiB) * MiB, MIN_AUTO_PART), MAX_AUTO_PART)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FetchSettings:
        """Defaults, with the part size and concurrency a deployment may set in the environment.

        Environment variables, not builder arguments: the argv is the
        operator's versioned contract, and these are tuning of one image.
        """
        env = os.environ if env is None else env

        def number(name: str, low: int, high: int) -> int | None:
            text = env.get(name, "").strip()
            if not text:
                return None
            if not text.isdigit() or not low <= int(text) <= high:
                raise usage("InvalidFetchSetting", f"{name}={text!r} is not a whole number in {low}..{high}")
            return int(text)

        part_mib = number(PART_MIB_ENV, 1, 1024)  # bounds that refuse a size written in bytes
        concurrency = number(CONCURRENCY_ENV, 1, 64)
        defaults = cls()
        return cls(
            part_bytes=part_mib * MiB if part_mib else defaults.part_bytes,
            concurrency=concurrency or defaults.concurrency,
        )


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


def validate_sha256(pin: str, field: str = SHA256_FIELD) -> str:
    if pin and not SHA256_RE.match(pin):
        raise bad_input("InvalidDigest", f"sha256 pin {pin!r} is not 64 lowercase hex digits", field)
    return pin


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(fetched: FetchedFile, pin: str, uri: str, field: str = SHA256_FIELD) -> None:
    if pin and fetched.sha256 != pin:
        raise bad_input(
            "DigestMismatch",
            f"{uri} has sha256 {fetched.sha256}, but the spec pins {pin}",
            field,
        )


# -- error classification -------------------------------------------------------------


def _client_error_code(exc: BaseException | None) -> str:
    if isinstance(exc, boto_errors.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _object_changed(uri: str) -> BuilderError:
    return transient("ObjectChanged", f"{uri} changed while it was being fetched", URI_FIELD)


def classify(exc: BaseException, uri: str) -> BuilderError:
    """Turn a boto3/botocore/s3transfer/OS error into a BuilderError naming ``uri``."""
    if isinstance(exc, BuilderError):
        return exc
    if isinstance(exc, transfer_errors.RetriesExceededError) and exc.last_exception is not None:
        return classify(exc.last_exception, uri)  # s3transfer gave up re-reading a broken stream
    if isinstance(exc, transfer_errors.S3DownloadFailedError):
        # s3transfer raises it, from the 412, when a part no longer matches the pinned ETag.
        if _client_error_code(exc.__context__) == "PreconditionFailed" or "ETag" in str(exc):
            return _object_changed(uri)
        return transient("StorageUnavailable", f"{uri}: the download failed ({exc})", URI_FIELD)
    if isinstance(exc, transfer_errors.S3ValidationError):
        # A range answered with other bytes than asked for: a confused proxy or server, not the user.
        return transient("StorageUnavailable", f"{uri}: S3 answered a wrong range ({exc})", URI_FIELD)
    if isinstance(exc, boto_errors.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "PreconditionFailed" or status == 412:
            return _object_changed(uri)
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
    """Run ``action``; retry transient failures with jittered exponential backoff.

    A changed object is not retried here: it fails the fetch, and the Job's
    next pod starts over on the new version.
    """
    for attempt in range(settings.attempts):
        try:
            return action()
        except Exception as exc:
            error = classify(exc, uri)
            final = attempt == settings.attempts - 1 or error.kind == "ObjectChanged"
            if error.exit_code != ExitCode.TRANSIENT or final:
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


# -- progress and retries -------------------------------------------------------------


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


class _TransferWatch(BaseSubscriber):  # type: ignore[misc]  # s3transfer ships no type hints
    """s3transfer's subscriber: hands it the object's size and ETag, and counts progress.

    Giving both spares s3transfer its own HEAD and pins every range to the
    ETag we read. A negative progress is s3transfer starting a part again
    after its stream broke; it says nothing else about it, so we do.
    """

    def __init__(self, progress: Progress, size: int, etag: str) -> None:
        self.progress, self.size, self.etag = progress, size, etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)
        future.meta.provide_object_etag(self.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if bytes_transferred < 0:
            log.warning(
                "fetch %s: a part's stream broke; fetching its %.1f MiB again",
                self.progress.uri,
                -bytes_transferred / MiB,
            )
        self.progress.add(bytes_transferred)


_RETRY_REASON = "tritonresnet_retry_reason"


def _report_request_retries(client: Any, uri: str) -> Callable[[], None]:
    """Log each request botocore retries, with what went wrong; returns the undo.

    botocore retries a 5xx, a throttle or a dropped connection silently. Its
    ``needs-retry`` event sees the failure; the ``request-created`` event of
    the next attempt is where we know the retry happens.
    """
    events = client.meta.events
    tag = f"tritonresnet-fetch-{id(events)}-{time.monotonic_ns()}"

    def remember(request_dict: dict[str, Any], response: Any, caught_exception: Any, **_: Any) -> None:
        reason = ""
        if caught_exception is not None:
            reason = f"{type(caught_exception).__name__} ({caught_exception})"
        elif response is not None and response[0].status_code >= 300:
            code = response[1].get("Error", {}).get("Code", "")
            reason = f"HTTP {response[0].status_code}" + (f" {code}" if code else "")
        request_dict["context"][_RETRY_REASON] = reason

    def announce(request: Any, operation_name: str, **_: Any) -> None:
        attempt = int(request.context.get("retries", {}).get("attempt", 1))
        if attempt > 1:
            where = request.headers.get("Range", "")
            log.warning(
                "fetch %s: %s%s failed with %s; retrying (request attempt %d of %d)",
                uri,
                operation_name,
                f" {where.decode() if isinstance(where, bytes) else where}" if where else "",
                request.context.get(_RETRY_REASON) or "an error",
                attempt,
                REQUEST_ATTEMPTS,
            )

    events.register("needs-retry.s3", remember, unique_id=tag + "-needs")
    events.register("request-created.s3", announce, unique_id=tag + "-created")

    def undo() -> None:
        events.unregister("needs-retry.s3", unique_id=tag + "-needs")
        events.unregister("request-created.s3", unique_id=tag + "-created")

    return undo


# -- the file being downloaded --------------------------------------------------------


class HashingFile:
    """The download's file: writes land in place, and a thread hashes the written prefix.

    s3transfer writes each part's chunks in order, but the parts out of order
    (a seek, then a write, from its one IO thread). A thread follows the
    prefix written so far and hashes it from the page cache, so by the last
    byte the sha256 is nearly done instead of costing a full read after it.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._position = 0
        self._runs: list[tuple[int, int]] = []  #: written [start, end), sorted and merged
        self._changed = threading.Condition()
        self._finished = False
        self._digest = hashlib.sha256()
        self._hashed = 0
        self._failure: BaseException | None = None
        self._hasher = threading.Thread(target=self._hash_prefix, name="fetch-sha256", daemon=True)
        self._hasher.start()

    # the file-object methods s3transfer calls
    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence != os.SEEK_SET:
            raise OSError("HashingFile seeks from the start or the current position only")
        self._position = offset
        return offset

    def tell(self) -> int:
        return self._position

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], self._position + done)
        with self._changed:
            self._add_run(self._position, self._position + done)
            self._changed.notify()
        self._position += done
        return done

    def _add_run(self, start: int, end: int) -> None:
        merged: list[tuple[int, int]] = []
        for begin, stop in sorted([*self._runs, (start, end)]):
            if merged and begin <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((begin, stop))
        self._runs = merged

    def _prefix(self) -> int:
        return self._runs[0][1] if self._runs and self._runs[0][0] == 0 else 0

    def _hash_prefix(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._finished and self._prefix() <= self._hashed:
                        self._changed.wait()
                    end = self._prefix()
                    if end <= self._hashed:
                        return  # finished, and all of the prefix is hashed
                while self._hashed < end:
                    chunk = os.pread(self._fd, min(4 * MiB, end - self._hashed), self._hashed)
                    if not chunk:
                        raise OSError(f"read {self._hashed} of {end} written bytes back")
                    self._digest.update(chunk)
                    self._hashed += len(chunk)
        except BaseException as exc:  # handed to finish(), which runs in the fetching thread
            self._failure = exc

    def _stop(self) -> None:
        with self._changed:
            self._finished = True
            self._changed.notify()
        self._hasher.join()

    def finish(self) -> tuple[str, int]:
        """Flush to disk and wait for the hash: the sha256 and length of the bytes in place from 0."""
        os.fsync(self._fd)
        self._stop()
        if self._failure is not None:
            raise self._failure
        return self._digest.hexdigest(), self._hashed

    def close(self) -> None:
        if self._hasher.is_alive():
            self._stop()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- S3 -------------------------------------------------------------------------------


def s3_client(source: Source, settings: FetchSettings) -> Any:
    """A client from the default credential chain; never credentials from arguments."""
    config = Config(
        retries={"max_attempts": REQUEST_ATTEMPTS, "mode": "standard"},
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


def _head(client: Any, location: S3Location) -> tuple[int, str]:
    """The object's size and ETag; a 404 is told apart into a missing bucket or key.

    A HEAD answer has no body, so S3 cannot say which was missing; asking for
    the bucket (only on this failure) can.
    """
    try:
        response = client.head_object(Bucket=location.bucket, Key=location.key)
    except boto_errors.ClientError as exc:
        if _client_error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
        try:
            client.head_bucket(Bucket=location.bucket)
        except boto_errors.ClientError as bucket_exc:
            if _client_error_code(bucket_exc) in ("404", "NoSuchBucket", "NotFound"):
                raise bad_input(
                    "BucketNotFound", f"{location.uri}: no such bucket (NoSuchBucket)", URI_FIELD
                ) from exc
        raise bad_input("ObjectNotFound", f"{location.uri}: no such object (NoSuchKey)", URI_FIELD) from exc
    return int(response.get("ContentLength", 0)), str(response.get("ETag", ""))


def transfer_config(settings: FetchSettings, total: int) -> TransferConfig:
    part = settings.part_size(total)
    return TransferConfig(
        # Ranged GETs for any object that has a byte: s3transfer pins those to the ETag
        # (its single-GET path for a small object has no If-Match).
        multipart_threshold=1,
        multipart_chunksize=part,
        max_concurrency=settings.concurrency,
        # The classic manager, never the CRT one: the errors, the ETag pin and the
        # retries sorted here are botocore's, and boto3's CRT path speaks to AWS only.
        preferred_transfer_client="classic",
    )


def fetch_s3(client: Any, location: S3Location, dest: Path, settings: FetchSettings) -> FetchedFile:
    """Download one object with boto3's transfer manager into ``dest``, hashing it on the way."""
    uri = location.uri
    dest.parent.mkdir(parents=True, exist_ok=True)
    undo = _report_request_retries(client, uri)

    def attempt() -> FetchedFile:
        total, etag = _head(client, location)
        progress = Progress(uri, total, settings.progress_every_seconds)
        target = HashingFile(dest)
        try:
            with TransferManager(client, transfer_config(settings, total)) as manager:
                future = manager.download(
                    location.bucket, location.key, target, subscribers=[_TransferWatch(progress, total, etag)]
                )
                future.result()
            digest, written = target.finish()
        finally:
            target.close()
        if written != total:
            # Every range is pinned to the HEAD's ETag; this is the last word if
            # a store ignored the pin and answered another version's length.
            raise _object_changed(uri)
        progress.report()
        return FetchedFile(path=dest, sha256=digest, size=total, etag=etag.strip('"'))

    try:
        return with_retries(attempt, uri, settings)
    finally:
        undo()


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
    """Fetches the model and, by relative name, the files next to it (external data), each
    checked against its pin."""

    def __init__(self, source: Source, settings: FetchSettings | None = None) -> None:
        self.source = source
        self.settings = settings or FetchSettings.from_env()
        self.location = parse_uri(source.uri)
        validate_sha256(source.sha256)
        for location, pin in source.external_data_sha256.items():
            if not pin:  # an empty pin would pin nothing, silently
                raise bad_input("InvalidDigest", f"the pin of {location!r} is empty", EXTERNAL_DATA_FIELD)
            validate_sha256(pin, EXTERNAL_DATA_FIELD)
        self._client: Any = None

    @property
    def model_name(self) -> str:
        """The model file's own name: the last part of its key or path."""
        if isinstance(self.location, S3Location):
            return posixpath.basename(self.location.key)
        return self.location.name

    def _sibling(self, relative: str) -> S3Location | Path:
        if isinstance(self.location, S3Location):
            return self.location.sibling(relative)
        return self.location.parent / relative

    def refuse_unused_pins(self, locations: tuple[str, ...]) -> None:
        """A pin of a location the model does not read would cover nothing: most likely a typo."""
        unused = sorted(set(self.source.external_data_sha256) - set(locations))
        if unused:
            used = ", ".join(repr(name) for name in locations) or "none"
            raise bad_input(
                "UnknownExternalData",
                f"the spec pins external data {unused[0]!r}, but the model {self.source.uri} keeps "
                f"no tensor data there (its external-data locations: {used})",
                EXTERNAL_DATA_FIELD,
            )

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
        """A file the model names relative to itself (validated by the caller), checked
        against its pin in ``external_data_sha256`` if it has one."""
        location = self._sibling(relative)
        fetched = self._fetch(location, dest)
        uri = location.uri if isinstance(location, S3Location) else str(location)
        check_digest(fetched, self.source.external_data_sha256.get(relative, ""), uri, EXTERNAL_DATA_FIELD)
        return fetched

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
