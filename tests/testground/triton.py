"""The real Triton Inference Server from the ``nvidia-pytriton`` wheel, run directly.

``nvidia-pytriton`` ships a real ``tritonserver`` (2.51) with the python
backend only. The test ground runs that binary on an ordinary model repository,
the way the ``nvcr.io/nvidia/tritonserver:<release>-py3`` image runs it in a
cluster. What it needs, assembled here:

* ``--backend-directory`` pointing at a folder with ``python/``
  (``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub
  built for the running Python) and the **stand-in** backends of
  ``testground/standin_backends``: ``onnxruntime/model.py`` is a python-based
  backend that runs ``model.onnx`` with onnxruntime on CPU, so configs with
  ``platform: "onnxruntime_onnx"`` load unchanged. It stands in for Triton's
  ONNX Runtime backend. ``tensorrt/model.py`` stands in for the TensorRT backend and serves
  only the stand-in TensorRT's plans (their ONNX bytes, with onnxruntime), picking the file
  from ``cc_model_filenames`` by the compute capability in the environment (see
  ``standin_backends/tensorrt_standin.py``): configs with ``platform: "tensorrt_plan"`` load
  unchanged, and no real plan is ever served here.
* ``LD_LIBRARY_PATH`` with the wheel's ``nvidia_pytriton.libs`` (else it fails
  on ``libcudart`` and hangs "loading") and the interpreter's own libpython
  directory (the stub picking up another libpython fails in ``threading``).
* the venv's ``bin`` first on ``PATH``: the stub runs the first ``python3`` it
  finds, and that environment must have numpy < 2 and onnxruntime.

``backends_dir()`` builds that folder once per machine under the user's cache
directory; ``tritonserver_command(args)`` gives argv and environment for a
server started by someone else (the node agent runs Triton pods with it);
``start_tritonserver(repository)`` runs one for a test.

Behaviour of this tritonserver 2.51 verified on a CPU-only machine
(tests/integration/test_triton.py holds a test for each):

* ``--model-control-mode=explicit --load-model=<m> --model-config-name=<c>``
  loads ``<m>/configs/<c>.pbtxt`` instead of ``<m>/config.pbtxt``; the served
  config is that file's. **A name with no such file is not an error**: Triton
  silently falls back to ``config.pbtxt`` (or, with none, to an auto-completed
  config) and serves the latest version, Ready. A verifier must check the
  served config or version, not only readiness.
* ``instance_group [{count: 1, kind: KIND_AUTO}]`` loads without a GPU: the
  instance becomes a CPU instance.
* ``version_policy: {specific: {versions: [2]}}`` serves version 2 only; the
  other version folders are not ready and inference on them fails.
* ``cc_model_filenames`` in an ``onnxruntime_onnx`` config does not break the
  load: Triton core accepts it and serves it back in the config (the stand-in,
  like the real ONNX Runtime backend, reads only ``default_model_filename``).
* For a model without batching (``max_batch_size: 0``) the classification
  extension ranks the whole output: ``class_count=5`` on ``[1, 1000]`` gives
  shape ``[5]``, not ``[1, 5]``.
* On SIGTERM the server waits up to ``--exit-timeout-secs`` (default 30) for
  open client connections; ``start_tritonserver`` passes 3 unless told.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testground import standin_backends
from testground.binaries import user_cache_dir

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
STANDIN_DIR = Path(standin_backends.__file__).resolve().parent
# A stub's shared-memory region, named after its backend: triton_<backend>_backend_shm_region_<uuid>.
_SHM_MARKER = "_backend_shm_region_"
_SHM_DIR = Path("/dev/shm")
# Without a bound, a server still holding a client's keep-alive connection waits 30 s on SIGTERM.
DEFAULT_EXIT_TIMEOUT_SECS = 3

_STANDIN_README = """\
Backends for the tritonserver of the nvidia-pytriton wheel, assembled by the
tritonresnet test ground (tests/testground/triton.py).

python/       the wheel's real python backend and the stub for Python {python}
{standins}
The folders other than python/ are STAND-INS: python-based backends that let
unchanged model configs load on a machine without the real backend. They are
not NVIDIA's backends and are never used outside tests.
"""


# -- locating the wheel ---------------------------------------------------------------


def pytriton_root() -> Path:
    """``<site-packages>/pytriton/tritonserver`` of the installed wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{PYTRITON_DISTRIBUTION} is not installed: pip install {PYTRITON_DISTRIBUTION}")
    return Path(spec.origin).parent / "tritonserver"


def tritonserver_binary() -> Path:
    return pytriton_root() / "bin" / "tritonserver"


def _server_libs() -> Path:
    return pytriton_root().parent.parent / "nvidia_pytriton.libs"


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _libpython_dir() -> str:
    return str(sysconfig.get_config_var("LIBDIR"))


# -- the backends folder --------------------------------------------------------------


def _standin_sources() -> dict[str, dict[str, Path]]:
    """Stand-in backend name -> {file name in its folder: source}: its model.py and companions."""
    testground = STANDIN_DIR.parent
    return {
        name: {"model.py": STANDIN_DIR / module}
        | {
            file: testground / source
            for file, source in standin_backends.STANDIN_COMPANIONS.get(name, {}).items()
        }
        for name, module in standin_backends.STANDIN_BACKENDS.items()
    }


def _backends_key() -> str:
    digest = hashlib.sha256()
    for name, files in sorted(_standin_sources().items()):
        for file, source in sorted(files.items()):
            digest.update(f"{name}/{file}".encode() + b"\0" + source.read_bytes() + b"\0")
    digest.update(_STANDIN_README.encode())
    version = importlib.metadata.version(PYTRITON_DISTRIBUTION)
    return f"pytriton-{version}_py{_python_tag()}_{digest.hexdigest()[:12]}"


def _cache_root() -> Path:
    return user_cache_dir() / "triton-backends"


def _assemble(folder: Path) -> None:
    root = pytriton_root()
    python = folder / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(root / "backends" / "python" / name, python / name)
    stub = root / "python_backend_stubs" / _python_tag() / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"{PYTRITON_DISTRIBUTION} has no python backend stub for Python {_python_tag()}")
    shutil.copy2(stub, python / stub.name)
    for name, files in _standin_sources().items():
        (folder / name).mkdir()
        for file, source in files.items():
            shutil.copy2(source, folder / name / file)
    listing = "".join(
        f"{name + '/':<14}STAND-IN for Triton's {name} backend\n" for name in _standin_sources()
    )
    (folder / "README").write_text(_STANDIN_README.format(python=_python_tag(), standins=listing))


def backends_dir() -> Path:
    """The ``--backend-directory`` for pytriton's tritonserver, assembled once and cached."""
    target = _cache_root() / _backends_key()
    if (target / "README").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _assemble(staging)
        staging.chmod(0o755)
        with contextlib.suppress(OSError):  # another process won the race: its copy is identical
            os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# -- command line and environment -----------------------------------------------------


def _prepend(value: str, existing: str | None) -> str:
    return f"{value}:{existing}" if existing else value


def tritonserver_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Argv and the environment variables to add (to ``os.environ``) to run ``tritonserver args``.

    ``--backend-directory`` is added unless ``args`` gives one. The variables
    returned already include the current values of ``LD_LIBRARY_PATH`` and
    ``PATH`` after the added entries.
    """
    argv = [str(tritonserver_binary()), *args]
    if not any(arg.startswith("--backend-directory") for arg in args):
        argv.append(f"--backend-directory={backends_dir()}")
    libraries = f"{_server_libs()}:{_libpython_dir()}"
    env = {
        "LD_LIBRARY_PATH": _prepend(libraries, os.environ.get("LD_LIBRARY_PATH")),
        # The stub execs the first python3 on PATH; it must be this venv's (numpy < 2, onnxruntime).
        "PATH": _prepend(str(Path(sys.executable).parent), os.environ.get("PATH")),
    }
    return argv, env


# -- a running server -----------------------------------------------------------------


@dataclass(frozen=True)
class TritonServer:
    """A tritonserver started by ``start_tritonserver``; URLs are ``host:port`` as tritonclient wants."""

    pid: int
    http_url: str
    grpc_url: str
    metrics_url: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_ready(process: subprocess.Popen[bytes], http_url: str, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {process.returncode}:\n{_tail(log_file)}")
        if _http_ok(f"http://{http_url}/v2/health/live") and _http_ok(f"http://{http_url}/v2/health/ready"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"tritonserver not ready after {timeout} s:\n{_tail(log_file)}")


def _tail(log_file: Path, lines: int = 40) -> str:
    return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])


def _stub_processes(server_pid: int) -> dict[int, str]:
    """The python backend stubs of a server: pid -> the shared-memory region passed in their argv."""
    stubs: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent != server_pid:
                continue
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        regions = [arg.decode() for arg in argv if _SHM_MARKER.encode() in arg]
        if regions:
            stubs[int(stat.parent.name)] = regions[0]
    return stubs


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    stubs = _stub_processes(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # Stubs notice their server is gone and exit; one that did not (server killed) is
    # ended by its own pid, and its shared-memory region removed, never another server's.
    for pid, region in stubs.items():
        if region in _cmdline(pid):  # still that stub, not a reused pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (_SHM_DIR / region).unlink()


@contextlib.contextmanager
def start_tritonserver(
    model_repository: Path | str,
    *args: str,
    host: str = "127.0.0.1",
    ready_timeout: float = 120.0,
    stop_grace: float = 15.0,
    log_file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[TritonServer]:
    """Run tritonserver on free ports until the block exits; yields once live and ready.

    ``args`` are extra tritonserver flags (``--model-control-mode=explicit`` ...).
    ``model_repository`` may be a folder or an ``s3://`` URL. The server's output
    goes to ``log_file`` when given (kept), else to a temporary file removed on exit.
    ``env`` adds variables (the AWS ones for an S3 repository, say).
    """
    http, grpc, metrics = free_port(host), free_port(host), free_port(host)
    if not any(arg.startswith("--exit-timeout-secs") for arg in args):
        args = (*args, f"--exit-timeout-secs={DEFAULT_EXIT_TIMEOUT_SECS}")
    argv, extra_env = tritonserver_command(
        [
            f"--model-repository={model_repository}",
            f"--http-address={host}",
            f"--http-port={http}",
            f"--grpc-address={host}",
            f"--grpc-port={grpc}",
            f"--metrics-address={host}",
            f"--metrics-port={metrics}",
            *args,
        ]
    )
    with tempfile.TemporaryDirectory(prefix="tritonserver-") as logs:
        log_file = log_file or Path(logs) / "tritonserver.log"
        with open(log_file, "wb") as log:
            process_env = os.environ | dict(env or {}) | extra_env
            process = subprocess.Popen(
                argv, env=process_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        try:
            _wait_ready(process, f"{host}:{http}", log_file, ready_timeout)
            yield TritonServer(
                pid=process.pid,
                http_url=f"{host}:{http}",
                grpc_url=f"{host}:{grpc}",
                metrics_url=f"{host}:{metrics}",
                log_file=log_file,
            )
        finally:
            _stop(process, stop_grace)


# -- a model for tests that need a Triton but no ONNX ----------------------------------

#: An image the node agent runs as pytriton's tritonserver.
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"


ADD_ONE_MODEL_PY = """\
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", value + 1)]))
        return out
"""


def add_one_model(repository: Path) -> None:
    """A tiny python-backend model ``add_one`` (so a test needs no ONNX): OUTPUT = INPUT + 1."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig(name="add_one", backend="python", max_batch_size=0)
    config.input.add(name="INPUT", data_type=model_config_pb2.TYPE_FP32, dims=[1])
    config.output.add(name="OUTPUT", data_type=model_config_pb2.TYPE_FP32, dims=[1])
    config.instance_group.add(count=1, kind=model_config_pb2.ModelInstanceGroup.KIND_CPU)
    (repository / "add_one" / "1").mkdir(parents=True)
    (repository / "add_one" / "config.pbtxt").write_text(text_format.MessageToString(config))
    (repository / "add_one" / "1" / "model.py").write_text(ADD_ONE_MODEL_PY)


def add_one_deployment(
    namespace: str, volume: dict[str, Any], placement: dict[str, Any], name: str = "triton"
) -> dict[str, Any]:
    """A one-replica Triton Deployment serving ``add_one`` from ``volume`` (a pod ``volumes`` entry
    without its name); ``placement``: the pod spec's nodeSelector, tolerations and the like."""
    labels = {"app": name}
    container = {
        "name": "triton",
        "image": TRITON_IMAGE,
        "command": ["tritonserver"],
        "args": [
            "--model-repository=/models",
            "--model-control-mode=explicit",
            "--load-model=add_one",
            "--strict-readiness=true",
        ],
        "ports": [
            {"name": "http", "containerPort": 8000},
            {"name": "grpc", "containerPort": 8001},
            {"name": "metrics", "containerPort": 8002},
        ],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 5,
            "initialDelaySeconds": 10,
        },
        "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": placement
                | {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [container],
                    "volumes": [{"name": "models", **volume}],
                },
            },
        },
    }


def infer_add_one(base_url: str, value: float, timeout: float = 30.0) -> float:
    """One HTTP inference of ``add_one`` at ``base_url`` (``http://host:port``)."""
    body = {"inputs": [{"name": "INPUT", "shape": [1], "datatype": "FP32", "data": [value]}]}
    request = urllib.request.Request(
        f"{base_url}/v2/models/add_one/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return float(json.load(response)["outputs"][0]["data"][0])
