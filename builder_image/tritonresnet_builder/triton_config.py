"""Triton model configurations, built through Triton's own protobuf schema.

The config is assembled as a dict, parsed with ``json_format.ParseDict`` into
``model_config_pb2.ModelConfig`` (so a misspelt field fails here, not in
Triton) and written with ``text_format``.
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
    max_batch_size: int = 8
    max_queue_delay_us: int = 100
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    instance_kind: InstanceKind = "KIND_AUTO"


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


def _input(tensor: Tensor) -> dict[str, Any]:
    config = _tensor(tensor)
    layout = image_format(tensor.shape)
    if layout is not None:
        config["format"] = layout
    return config


def _tensor(tensor: Tensor) -> dict[str, Any]:
    # Triton needs at least one dim; a batched [N] tensor is served as dims [1] with reshape [].
    if tensor.shape:
        return {
            "name": tensor.name,
            "data_type": config_datatype(tensor.datatype),
            "dims": list(tensor.shape),
        }
    return {
        "name": tensor.name,
        "data_type": config_datatype(tensor.datatype),
        "dims": [1],
        "reshape": {"shape": []},
    }


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
    preferred = sorted({n for n in serving.preferred_batch_sizes if 0 < n <= serving.max_batch_size})
    config: dict[str, Any] = {
        "name": name,
        "platform": PLATFORMS[fmt],
        "max_batch_size": serving.max_batch_size,
        "input": [_input(t) for t in inputs],
        "output": [_tensor(t) for t in outputs],
        "version_policy": {"specific": {"versions": [version]}},
        "instance_group": [{"count": serving.instance_count, "kind": serving.instance_kind}],
        "default_model_filename": default_model_filename,
    }
    if serving.max_batch_size > 1:
        batching: dict[str, Any] = {"max_queue_delay_microseconds": serving.max_queue_delay_us}
        if preferred:
            batching["preferred_batch_size"] = preferred
        config["dynamic_batching"] = batching
    if plan_files:
        config["cc_model_filenames"] = dict(sorted(plan_files.items()))
    return json_format.ParseDict(config, model_config_pb2.ModelConfig())


def render(config: model_config_pb2.ModelConfig) -> str:
    return str(text_format.MessageToString(config))


def parse(text: str) -> model_config_pb2.ModelConfig:
    """Read a config.pbtxt back through the schema: how the tests read what :func:`render` wrote."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())
