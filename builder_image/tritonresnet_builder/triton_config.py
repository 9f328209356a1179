"""Triton model configurations, built through Triton's own protobuf schema.

The config is assembled as a dict, parsed with ``json_format.ParseDict`` into
``model_config_pb2.ModelConfig`` (so a misspelt field fails here, not in
Triton) and written with ``text_format``.

Two layouts, by ``max_batch_size``:

* above 0 (batching): ``dims`` leave out the batch dimension; Triton adds it,
  requests are ``[N, *dims]`` and the dynamic batcher may merge them.
* 0 (no batching, as NVIDIA's ResNet-50 tutorial serves it): requests carry no
  batch dimension at all. ``dims`` are then the whole request shape (the model's
  shape without its batch dimension) and ``reshape`` gives the model's full
  shape with batch 1, so Triton hands the backend ``[1, *dims]`` and turns the
  backend's ``[1, *dims]`` output back into ``dims``. The model itself may have a
  fixed batch of 1 or a dynamic one; either runs at batch 1.

Every config warms its model up (``model_warmup``): Triton runs the warm-up
requests while it loads the version, before it reports the version ready, so
the first client after Ready does not pay for lazy initialisation (CUDA
contexts, TensorRT's first enqueue, the ONNX Runtime session's first run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from tritonresnet_builder.contract import Format, Tensor

PLATFORMS: dict[Format, str] = {"tensorrt": "tensorrt_plan", "onnx": "onnxruntime_onnx"}

InstanceKind = Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU"]


def config_datatype(datatype: str) -> str:
    """API datatype (``FP32``) -> config datatype (``TYPE_FP32``); BYTES is TYPE_STRING in configs."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass(frozen=True)
class ServingSettings:
    #: 0: no batch dimension in requests, each run at batch 1; no dynamic batcher
    max_batch_size: int = 8
    max_queue_delay_us: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    instance_kind: InstanceKind = "KIND_AUTO"
    #: Warm the model up at load, at batch 1 and at the max batch (see :func:`warmups`).
    warmup: bool = True


#: A dynamic dimension gets this size in warm-up requests: the spatial size every ResNet takes
#: (the operator's smoke inference uses the same).
WARMUP_DYNAMIC_DIM = 224


def warmups(inputs: Sequence[Mapping[str, Any]], max_batch_size: int) -> list[dict[str, Any]]:
    """``model_warmup`` entries for the config inputs ``inputs``: one request at batch 1 and,
    when the version batches, one at its max batch.

    Both ends, because engines and kernels are picked per shape: batch 1 is what a lone
    client sends, the max batch what the dynamic batcher builds under load. ``dims`` are the
    config's (without the batch dimension when batched, the whole request when not), with
    dynamic ones at :data:`WARMUP_DYNAMIC_DIM`. The data is random, so no kernel sees only
    zeros; strings cannot be random in Triton's warm-up and are empty.
    """
    sizes = sorted({1, max_batch_size}) if max_batch_size > 0 else [1]
    requests: dict[str, Any] = {}
    for tensor in inputs:
        data = "zero_data" if tensor["data_type"] == "TYPE_STRING" else "random_data"
        requests[tensor["name"]] = {
            "data_type": tensor["data_type"],
            "dims": [d if d > 0 else WARMUP_DYNAMIC_DIM for d in tensor["dims"]],
            data: True,
        }
    return [{"name": f"batch-{n}", "batch_size": n, "inputs": requests, "count": 1} for n in sizes]


def image_format(shape: Sequence[int]) -> str | None:
    """The Triton layout of an image input, from its shape without the batch dimension.

    Triton's image clients refuse an input whose config says FORMAT_NONE, so an
    image input (three dims, three channels first or last) says which it is.
    3 x H x 3 is read as channels first, as PyTorch exports it and as
    ``tritonresnet classify`` reads it. Anything else is not an image: None.
    """
    if len(shape) != 3:
        return None
    if shape[0] == 3:
        return "FORMAT_NCHW"
    if shape[2] == 3:
        return "FORMAT_NHWC"
    return None


def _input(tensor: Tensor, batched: bool) -> dict[str, Any]:
    config = _tensor(tensor, batched)
    layout = image_format(tensor.shape)
    if layout is not None:
        config["format"] = layout
    return config


def _tensor(tensor: Tensor, batched: bool) -> dict[str, Any]:
    """One input or output; ``tensor.shape`` is the model's shape without its batch dimension."""
    config: dict[str, Any] = {"name": tensor.name, "data_type": config_datatype(tensor.datatype)}
    if not tensor.shape:
        # Triton needs at least one dim. Batched, the model's [N] is served as dims [1]
        # reshaped to [] per item; unbatched, its [1] is served as dims [1] as it is.
        config["dims"] = [1]
        if batched:
            config["reshape"] = {"shape": []}
        return config
    config["dims"] = list(tensor.shape)
    if not batched:
        # Without batching the reshape is the full shape the backend sees: batch 1.
        config["reshape"] = {"shape": [1, *tensor.shape]}
    return config


def model_config(
    *,
    name: str,
    fmt: Format,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    serving: ServingSettings,
    version: int,
    plan_files: Mapping[str, str] | None = None,
    default_model_filename: str,
) -> model_config_pb2.ModelConfig:
    """The config of one published version.

    ``plan_files`` maps compute capability (``8.6``) to the plan file name; Triton
    picks the file matching the GPU it runs on (``cc_model_filenames``).
    """
    batched = serving.max_batch_size > 0
    preferred = sorted({n for n in serving.preferred_batch_sizes if 0 < n <= serving.max_batch_size})
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORMS[fmt],
        "max_batch_size": serving.max_batch_size,
        "input": [_input(t, batched) for t in inputs],
        "output": [_tensor(t, batched) for t in outputs],
        "version_policy": {"specific": {"versions": [version]}},
        "instance_group": [{"count": serving.instance_count, "kind": serving.instance_kind}],
        "default_model_filename": default_model_filename,
    }
    # Nothing to merge at 1, and Triton has no batcher without batching (0).
    if serving.max_batch_size > 1:
        batching: dict[str, Any] = {"max_queue_delay_microseconds": serving.max_queue_delay_us}
        if preferred:
            batching["preferred_batch_size"] = preferred
        config["dynamic_batching"] = batching
    if plan_files:
        config["cc_model_filenames"] = dict(sorted(plan_files.items()))
    if serving.warmup:
        config["model_warmup"] = warmups(config["input"], serving.max_batch_size)
    return json_format.ParseDict(config, model_config_pb2.ModelConfig())


def _api_datatype(data_type: int) -> str:
    """Config datatype (``TYPE_FP32``) -> API datatype (``FP32``); the inverse of :func:`config_datatype`."""
    name = str(model_config_pb2.DataType.Name(data_type))
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


def served_tensors(config: model_config_pb2.ModelConfig) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Inputs and outputs as Triton's model metadata reports them for ``config``: its dims.

    That is what a client sends and gets (after a leading -1 when the config
    batches), so the operator's endpoint check compares the server with these,
    not with the model's own shapes (a per-item scalar is served as [1]).
    """

    def tensors(items: Sequence[Any]) -> tuple[Tensor, ...]:
        return tuple(Tensor(t.name, _api_datatype(t.data_type), tuple(int(d) for d in t.dims)) for t in items)

    return tensors(config.input), tensors(config.output)


def render(config: model_config_pb2.ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def parse(text: str) -> model_config_pb2.ModelConfig:
    """Read a config.pbtxt back through the schema: how the tests read what :func:`render` wrote."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())
