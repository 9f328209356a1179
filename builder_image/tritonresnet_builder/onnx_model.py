"""Validate an ONNX model and describe its inputs and outputs the way Triton sees them.

What Triton and TensorRT can serve, and what we therefore accept:

* every input and output is a tensor with a known element type that has a
  Triton datatype (and, for TensorRT, a TensorRT type);
* the first dimension of every input is the batch: either dynamic (the usual
  export with ``dynamic_axes``) or fixed at 1 (served with a batch of at most 1);
* every other input dimension is fixed, so one optimization profile covers it;
* one sample of an input (batch 1) takes at most ``MAX_INPUT_SAMPLE_BYTES``;
* external-data files are named relative to the model, inside its folder.

Each refusal is a BAD_INPUT naming the tensor (or file) at fault.
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from tritonresnet_builder.contract import MAX_INPUT_SAMPLE_BYTES, Format, Tensor
from tritonresnet_builder.failures import bad_input

SOURCE_FIELD = "spec.source.uri"

#: ONNX element type -> Triton datatype (the API spelling; configs prefix ``TYPE_``).
TRITON_DATATYPES: dict[int, str] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "FP64",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.STRING: "BYTES",
}

#: Bytes per element of each fixed-size Triton datatype (BYTES has no fixed size).
ELEMENT_BYTES: dict[str, int] = {
    "FP32": 4,
    "FP16": 2,
    "BF16": 2,
    "FP64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "BOOL": 1,
}

#: Datatypes a TensorRT 10 engine can take as network inputs and outputs.
TENSORRT_DATATYPES = frozenset({"FP32", "FP16", "BF16", "INT8", "UINT8", "INT32", "INT64", "BOOL"})

DYNAMIC = -1


@dataclass(frozen=True)
class ModelInfo:
    inputs: tuple[Tensor, ...]  #: shapes without the batch dimension
    outputs: tuple[Tensor, ...]
    #: the largest batch the model itself allows: 0 when the batch dimension is
    #: dynamic (no limit), 1 when it was exported with a fixed batch of 1
    model_max_batch: int
    opset: int
    ir_version: int
    producer: str
    external_data: tuple[str, ...]  #: files next to the model, relative names

    def max_batch(self, requested: int) -> int:
        """The max_batch_size to build and serve with, given what the spec asks for.

        A fixed batch of 1 caps a batching request at 1. A request of 0 (no batch
        dimension in requests, the model run at batch 1) stays 0 for either kind of
        model: a fixed batch of 1 is that batch, and a dynamic one accepts it.
        """
        return min(requested, self.model_max_batch) if self.model_max_batch else requested


def load_graph(path: Path) -> onnx.ModelProto:
    """The model without its external data (cheap, and safe before the names are checked)."""
    if not path.is_file() or path.stat().st_size == 0:
        raise bad_input(
            "InvalidOnnx", f"the source model {path.name} is empty, not an ONNX model", SOURCE_FIELD
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise bad_input(
            "InvalidOnnx", f"the source model is not an ONNX model (or is truncated): {exc}", SOURCE_FIELD
        ) from exc
    if not model.HasField("graph"):
        raise bad_input("InvalidOnnx", "the source model is not an ONNX model: it has no graph", SOURCE_FIELD)
    return model


def _all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def external_data_files(model: onnx.ModelProto) -> tuple[str, ...]:
    """Relative names of the external-data files; refuses names that leave the model's folder."""
    names: set[str] = set()
    for tensor in _all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        normal = posixpath.normpath(location.replace("\\", "/"))
        if not location or normal.startswith(("/", "../")) or normal == ".." or ":" in normal:
            raise bad_input(
                "InvalidOnnx",
                f"tensor {tensor.name!r} keeps its data in {location!r}, outside the model's folder",
                SOURCE_FIELD,
            )
        names.add(normal)
    return tuple(sorted(names))


def check(path: Path) -> None:
    """onnx's checker, by path so external data (and models over 2 GB) are checked too."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, DecodeError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise bad_input("InvalidOnnx", f"the ONNX checker rejected the model: {first}", SOURCE_FIELD) from exc


def _dims(value: onnx.ValueInfoProto, kind: str) -> list[int]:
    tensor_type = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        raise bad_input("UnsupportedModel", f"{kind} {value.name!r} is not a tensor", SOURCE_FIELD)
    if not tensor_type.HasField("shape"):
        raise bad_input("UnsupportedModel", f"{kind} {value.name!r} has no shape", SOURCE_FIELD)
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else DYNAMIC for d in tensor_type.shape.dim
    ]


def _datatype(value: onnx.ValueInfoProto, kind: str, fmt: Format) -> str:
    elem = value.type.tensor_type.elem_type
    datatype = TRITON_DATATYPES.get(elem)
    type_name = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else str(elem)
    if datatype is None:
        raise bad_input(
            "UnsupportedModel",
            f"{kind} {value.name!r} has element type {type_name}, which Triton cannot serve",
            SOURCE_FIELD,
        )
    if fmt == "tensorrt" and datatype not in TENSORRT_DATATYPES:
        raise bad_input(
            "UnsupportedModel",
            f"{kind} {value.name!r} has element type {type_name}, which a TensorRT "
            "engine cannot take; serve it with format onnx or change the export",
            SOURCE_FIELD,
        )
    return datatype


def _model_max_batch(inputs: list[tuple[onnx.ValueInfoProto, list[int]]]) -> int:
    batch_dims = {dims[0] for _, dims in inputs}
    for value, dims in inputs:
        if dims[0] not in (DYNAMIC, 1):
            raise bad_input(
                "UnsupportedModel",
                f"input {value.name!r} has a fixed batch dimension of {dims[0]}; "
                "export it with a dynamic first dimension (or batch 1)",
                SOURCE_FIELD,
            )
    if len(batch_dims) > 1:
        names = ", ".join(repr(v.name) for v, _ in inputs)
        raise bad_input(
            "UnsupportedModel",
            f"inputs {names} disagree on whether the batch dimension is dynamic",
            SOURCE_FIELD,
        )
    return 0 if batch_dims == {DYNAMIC} else 1


def _refuse_oversized(tensor: Tensor) -> None:
    """An input whose single sample exceeds MAX_INPUT_SAMPLE_BYTES is not one we can serve."""
    element = ELEMENT_BYTES.get(tensor.datatype)
    if element is None:  # BYTES: the size is the request's, not the model's
        return
    size = math.prod(tensor.shape) * element
    if size > MAX_INPUT_SAMPLE_BYTES:
        shape = "x".join(str(d) for d in tensor.shape)
        raise bad_input(
            "UnsupportedModel",
            f"input {tensor.name!r} takes {size / (1 << 20):,.0f} MiB per sample ({shape} "
            f"{tensor.datatype}), above the {MAX_INPUT_SAMPLE_BYTES >> 20} MiB per input and "
            "batch-1 sample this builder accepts",
            SOURCE_FIELD,
        )


def describe(model: onnx.ModelProto, fmt: Format) -> ModelInfo:
    """Inputs, outputs and batch handling of a loaded model; refuses what cannot be served."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    # Older exporters also list initializers as graph inputs; those are weights, not inputs.
    raw_inputs = [v for v in graph.input if v.name not in initializers]
    if not raw_inputs:
        raise bad_input("UnsupportedModel", "the model has no inputs", SOURCE_FIELD)
    if not graph.output:
        raise bad_input("UnsupportedModel", "the model has no outputs", SOURCE_FIELD)

    shaped = []
    for value in raw_inputs:
        dims = _dims(value, "input")
        if not dims:
            raise bad_input(
                "UnsupportedModel",
                f"input {value.name!r} is a scalar; its first dimension must be the batch",
                SOURCE_FIELD,
            )
        for index, dim in enumerate(dims[1:], start=1):
            if dim == DYNAMIC:
                param = value.type.tensor_type.shape.dim[index].dim_param
                label = f" ({param!r})" if param else ""
                raise bad_input(
                    "UnsupportedModel",
                    f"input {value.name!r} has a dynamic dimension {index}{label}; "
                    "only the batch dimension (0) may be dynamic",
                    SOURCE_FIELD,
                )
        shaped.append((value, dims))
    model_max_batch = _model_max_batch(shaped)

    inputs = tuple(Tensor(v.name, _datatype(v, "input", fmt), tuple(dims[1:])) for v, dims in shaped)
    for tensor in inputs:
        _refuse_oversized(tensor)
    outputs = []
    for value in graph.output:
        dims = _dims(value, "output")
        if not dims:
            raise bad_input(
                "UnsupportedModel",
                f"output {value.name!r} is a scalar; it needs a batch dimension",
                SOURCE_FIELD,
            )
        outputs.append(Tensor(value.name, _datatype(value, "output", fmt), tuple(dims[1:])))

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return ModelInfo(
        inputs=inputs,
        outputs=tuple(outputs),
        model_max_batch=model_max_batch,
        opset=opset,
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        external_data=external_data_files(model),
    )


def inspect(path: Path, fmt: Format) -> ModelInfo:
    """Check the model at ``path`` (external data already next to it) and describe it."""
    model = load_graph(path)
    info = describe(model, fmt)
    missing = [name for name in info.external_data if not (path.parent / name).is_file()]
    if missing:
        raise bad_input(
            "InvalidOnnx", f"external data file {missing[0]!r} is missing next to the model", SOURCE_FIELD
        )
    check(path)
    return info
