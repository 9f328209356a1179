"""S3 for tests: moto's standalone server on loopback, behind a proxy that can cut it off.

No MinIO server is available from the package registries; moto's server speaks
the S3 REST API that boto3, the builder and tritonserver's S3 model repository
use. It keeps its buckets in memory, so to make S3 unavailable for a while a
test pauses the small TCP proxy in front of it instead of stopping moto:

* ``pause("refuse")`` closes the proxy's listening socket and every open
  connection: new connections are refused, as with a server that is down;
* ``pause("hang")`` keeps accepting but forwards nothing: requests hang until
  ``resume()`` (then they go through) or until the client's timeout.

``S3Server.endpoint`` goes through the proxy; ``direct_endpoint`` does not.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from botocore.config import Config

DEFAULT_BUCKET = "models"
REGION = "us-east-1"
# moto accepts any credentials; these are the values its documentation uses.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

PauseMode = Literal["refuse", "hang"]

_RUNNING_ON = re.compile(r"Running on (http://[\w.\-]+:(\d+))")


# -- the proxy ------------------------------------------------------------------------


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass  # the other side or pause() closed the connection
    finally:
        _close(source)
        _close(sink)


class PausableProxy:
    """A TCP forwarder on ``host:port`` to ``upstream`` that tests can pause and resume."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self.host = host
        self._lock = threading.Lock()
        self._mode: PauseMode | None = None
        self._open: set[socket.socket] = set()
        self._parked: list[socket.socket] = []
        self._stopping = False
        self._listener = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._thread = self._start_accepting()

    @property
    def paused(self) -> PauseMode | None:
        return self._mode

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        # Lets resume() bind the same port again while closed connections sit in TIME_WAIT.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        listener.settimeout(0.2)  # so the accept loop notices pause("refuse") and stop()
        return listener

    def _start_accepting(self) -> threading.Thread:
        thread = threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True)
        thread.start()
        return thread

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed: paused with "refuse" or stopped
            with self._lock:
                if self._mode == "hang":
                    self._parked.append(client)
                    continue
            self._forward(client)

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        client.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump_and_forget, args=(source, sink), daemon=True).start()

    def _pump_and_forget(self, source: socket.socket, sink: socket.socket) -> None:
        _pump(source, sink)
        with self._lock:
            self._open.discard(source)
            self._open.discard(sink)

    def _close_open_connections(self) -> None:
        with self._lock:
            connections, self._open = list(self._open), set()
        for sock in connections:
            _close(sock)

    def pause(self, mode: PauseMode = "refuse") -> None:
        """Cut the service off: refuse new connections, or accept and hang them."""
        with self._lock:
            if self._mode is not None:
                raise RuntimeError(f"proxy already paused ({self._mode})")
            self._mode = mode
        # Open keep-alive connections would bypass the pause: drop them either way.
        self._close_open_connections()
        if mode == "refuse":
            self._listener.close()
            self._thread.join()

    def resume(self) -> None:
        """Serve again on the same port; connections parked by ``pause("hang")`` go through now."""
        with self._lock:
            mode, self._mode = self._mode, None
            parked, self._parked = self._parked, []
        if mode == "refuse":
            self._listener = self._listen(self.port)
            self._thread = self._start_accepting()
        for client in parked:
            self._forward(client)

    def stop(self) -> None:
        self._listener.close()
        self._thread.join()
        self._close_open_connections()
        for client in self._parked:
            _close(client)


# -- moto -----------------------------------------------------------------------------


@dataclass
class S3Server:
    """A running moto server with one bucket, reached through a ``PausableProxy``."""

    pid: int
    direct_endpoint: str
    proxy: PausableProxy
    log_file: Path
    bucket: str = DEFAULT_BUCKET
    region: str = REGION
    env: dict[str, str] = field(default_factory=lambda: {**CREDENTIALS, "AWS_DEFAULT_REGION": REGION})

    @property
    def endpoint(self) -> str:
        return f"http://{self.proxy.host}:{self.proxy.port}"

    def credentials_secret(self, namespace: str, name: str = "s3-credentials") -> dict[str, Any]:
        """A Secret holding this server's AWS_* keys, as a user makes one for ``credentialsSecret``."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {k: v for k, v in self.env.items() if k.startswith("AWS_")},
        }

    def pause(self, mode: PauseMode = "refuse") -> None:
        self.proxy.pause(mode)

    def resume(self) -> None:
        self.proxy.resume()

    def client(self, config: Config | None = None, *, direct: bool = False) -> Any:
        """A boto3 S3 client for this server (through the proxy unless ``direct``)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.direct_endpoint if direct else self.endpoint,
            region_name=self.region,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=config,
        )

    def uri(self, key: str, bucket: str | None = None) -> str:
        return f"s3://{bucket or self.bucket}/{key}"

    def upload(self, path: Path, key: str, bucket: str | None = None) -> str:
        """Upload a file to ``key``, or a folder's files under ``key/``; returns ``s3://bucket/key``."""
        bucket = bucket or self.bucket
        client = self.client()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            target = f"{key.rstrip('/')}/{file.relative_to(path).as_posix()}" if path.is_dir() else key
            client.upload_file(str(file), bucket, target)
        return self.uri(key, bucket)

    def triton_repository(self, prefix: str = "", bucket: str | None = None) -> str:
        """A ``--model-repository`` value for tritonserver: ``s3://http://host:port/bucket/prefix``."""
        return f"s3://{self.endpoint}/{bucket or self.bucket}/{prefix}".rstrip("/")


def _wait_for_port(process: subprocess.Popen[bytes], log_file: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = _RUNNING_ON.search(log_file.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}:\n{log_file.read_text()}")
        time.sleep(0.05)
    raise TimeoutError(f"moto server did not report its port in {timeout} s:\n{log_file.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def start_s3(workdir: Path, host: str = "127.0.0.1", start_timeout: float = 60.0) -> Iterator[S3Server]:
    """Run moto's server with the ``models`` bucket until the block exits (log in ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_file = workdir / "moto.log"
    with open(log_file, "wb") as log:
        # Port 0: moto binds a free port and prints it, so no race with another process.
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    proxy: PausableProxy | None = None
    try:
        direct = _wait_for_port(process, log_file, start_timeout)
        proxy = PausableProxy((host, int(direct.rsplit(":", 1)[1])), host=host)
        server = S3Server(pid=process.pid, direct_endpoint=direct, proxy=proxy, log_file=log_file)
        server.client(direct=True).create_bucket(Bucket=server.bucket)
        yield server
    finally:
        if proxy is not None:
            proxy.stop()
        _stop(process)
