"""Triton configs (triton_config.py), read back through Triton's own schema."""

from __future__ import annotations

import pytest
from tritonclient.grpc import model_config_pb2 as mc
from tritonresnet_builder import triton_config
from tritonresnet_builder.contract import Tensor

INPUTS = (Tensor("input", "FP32", (3, 224, 224)),)
OUTPUTS = (Tensor("output", "FP32", (1000,)),)


def config_for(fmt: str, **serving: object) -> mc.ModelConfig:
    plans = {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"} if fmt == "tensorrt" else {}
    config = triton_config.model_config(
        name="resnet",
        fmt=fmt,  # type: ignore[arg-type]
        inputs=INPUTS,
        outputs=OUTPUTS,
        serving=triton_config.ServingSettings(**serving),  # type: ignore[arg-type]
        version=7,
        plan_files=plans,
        default_model_filename="model.sm86.plan" if plans else "model.onnx",
    )
    return triton_config.parse(triton_config.render(config))


@pytest.mark.parametrize(("fmt", "platform"), [("tensorrt", "tensorrt_plan"), ("onnx", "onnxruntime_onnx")])
def test_model_config_round_trips_through_triton_schema_for_every_platform(fmt: str, platform: str) -> None:
    config = config_for(
        fmt,
        max_batch_size=16,
        max_queue_delay_us=250,
        preferred_batch_sizes=(8, 4, 32),
        instance_count=2,
        instance_kind="KIND_GPU",
    )
    assert config.name == "resnet"
    assert config.platform == platform
    assert config.max_batch_size == 16
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("input", mc.TYPE_FP32, [3, 224, 224])
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("output", mc.TYPE_FP32, [1000])]
    assert list(config.version_policy.specific.versions) == [7]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    # sizes above max_batch_size are dropped, the rest sorted
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, mc.ModelInstanceGroup.KIND_GPU)]


def test_model_config_maps_compute_capabilities_to_plan_files_for_tensorrt() -> None:
    config = config_for("tensorrt")
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan", "9.0": "model.sm90.plan"}
    assert config.default_model_filename == "model.sm86.plan"
    assert dict(config_for("onnx").cc_model_filenames) == {}
    assert config_for("onnx").default_model_filename == "model.onnx"


def test_model_config_has_no_dynamic_batching_when_batch_is_one() -> None:
    config = config_for("onnx", max_batch_size=1)
    assert config.max_batch_size == 1
    assert not config.HasField("dynamic_batching")


def test_model_config_instance_kind_defaults_to_auto() -> None:
    assert config_for("onnx").instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO


@pytest.mark.parametrize(
    ("datatype", "expected"),
    [("FP16", mc.TYPE_FP16), ("BYTES", mc.TYPE_STRING), ("INT64", mc.TYPE_INT64), ("BOOL", mc.TYPE_BOOL)],
)
def test_model_config_spells_datatypes_as_triton_config_types(datatype: str, expected: int) -> None:
    config = triton_config.model_config(
        name="m",
        fmt="onnx",
        inputs=(Tensor("x", datatype, (2,)),),
        outputs=(Tensor("y", datatype, ()),),
        serving=triton_config.ServingSettings(),
        version=1,
        default_model_filename="model.onnx",
    )
    parsed = triton_config.parse(triton_config.render(config))
    assert parsed.input[0].data_type == expected
    # a per-item scalar is served as [1] reshaped to [] (Triton wants at least one dim)
    assert list(parsed.output[0].dims) == [1]
    assert parsed.output[0].HasField("reshape") and list(parsed.output[0].reshape.shape) == []


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((3, 224, 224), mc.ModelInput.FORMAT_NCHW),
        ((224, 224, 3), mc.ModelInput.FORMAT_NHWC),
        ((3, 8, 3), mc.ModelInput.FORMAT_NCHW),  # both could be channels: first wins, as PyTorch exports
        ((1, 28, 28), mc.ModelInput.FORMAT_NONE),  # not three channels
        ((3, 224), mc.ModelInput.FORMAT_NONE),  # not an image
        ((), mc.ModelInput.FORMAT_NONE),
    ],
)
def test_image_inputs_carry_their_layout(shape: tuple[int, ...], expected: int) -> None:
    """Triton's image clients refuse FORMAT_NONE; the layout comes from where the 3 channels are."""
    config = triton_config.model_config(
        name="resnet",
        fmt="onnx",
        inputs=(Tensor("image", "FP32", shape),),
        outputs=OUTPUTS,
        serving=triton_config.ServingSettings(),
        version=1,
        default_model_filename="model.onnx",
    )
    parsed = triton_config.parse(triton_config.render(config))
    assert parsed.input[0].format == expected


# -- max_batch_size 0: the tutorial's layout -------------------------------------------------


def test_model_config_without_batching_reshapes_requests_to_batch_one() -> None:
    """max_batch_size 0: requests are [3, 224, 224] (no batch dim), the model sees [1, 3, 224, 224]."""
    config = config_for("tensorrt", max_batch_size=0, preferred_batch_sizes=(4,), max_queue_delay_us=500)
    assert config.max_batch_size == 0
    (image,) = config.input
    assert list(image.dims) == [3, 224, 224]
    assert image.HasField("reshape") and list(image.reshape.shape) == [1, 3, 224, 224]
    assert image.format == mc.ModelInput.FORMAT_NCHW
    (scores,) = config.output
    assert list(scores.dims) == [1000]
    assert list(scores.reshape.shape) == [1, 1000]
    # no batcher without batching, whatever the serving settings asked of it
    assert not config.HasField("dynamic_batching")


def test_model_config_without_batching_serves_a_per_item_scalar_as_one_element() -> None:
    """A model output [1] (one value per item) is served as dims [1] as it is: no reshape needed."""
    config = triton_config.model_config(
        name="m",
        fmt="onnx",
        inputs=INPUTS,
        outputs=(Tensor("score", "FP32", ()),),
        serving=triton_config.ServingSettings(max_batch_size=0),
        version=1,
        default_model_filename="model.onnx",
    )
    parsed = triton_config.parse(triton_config.render(config))
    assert list(parsed.output[0].dims) == [1] and not parsed.output[0].HasField("reshape")


def test_batched_config_has_no_reshape_on_image_tensors() -> None:
    config = config_for("onnx", max_batch_size=8)
    assert not config.input[0].HasField("reshape") and not config.output[0].HasField("reshape")


@pytest.mark.parametrize("max_batch", [0, 8])
def test_served_tensors_are_the_config_dims_triton_reports(max_batch: int) -> None:
    config = triton_config.model_config(
        name="m",
        fmt="onnx",
        inputs=(*INPUTS, Tensor("label", "BYTES", (2,))),
        outputs=(*OUTPUTS, Tensor("score", "FP16", ())),
        serving=triton_config.ServingSettings(max_batch_size=max_batch),
        version=1,
        default_model_filename="model.onnx",
    )
    inputs, outputs = triton_config.served_tensors(triton_config.parse(triton_config.render(config)))
    assert inputs == (Tensor("input", "FP32", (3, 224, 224)), Tensor("label", "BYTES", (2,)))
    # a per-item scalar is served as [1], batched or not
    assert outputs == (Tensor("output", "FP32", (1000,)), Tensor("score", "FP16", (1,)))


# -- warm-up: the model runs before Triton says the version is ready -------------------------------


def warmup_of(config: mc.ModelConfig) -> list[tuple[str, int, dict[str, tuple[int, list[int], str]]]]:
    return [
        (
            w.name,
            w.batch_size,
            {
                name: (i.data_type, list(i.dims), i.WhichOneof("input_data_type"))
                for name, i in w.inputs.items()
            },
        )
        for w in config.model_warmup
    ]


def test_a_batched_config_warms_up_at_batch_one_and_at_its_max_batch_with_random_data() -> None:
    image = {"input": (mc.TYPE_FP32, [3, 224, 224], "random_data")}
    assert warmup_of(config_for("tensorrt", max_batch_size=16)) == [
        ("batch-1", 1, image),
        ("batch-16", 16, image),
    ]
    assert [w.count for w in config_for("onnx", max_batch_size=16).model_warmup] == [1, 1]


@pytest.mark.parametrize("max_batch", [0, 1])
def test_a_config_without_batching_or_of_batch_one_warms_up_once_at_batch_one(max_batch: int) -> None:
    assert warmup_of(config_for("onnx", max_batch_size=max_batch)) == [
        ("batch-1", 1, {"input": (mc.TYPE_FP32, [3, 224, 224], "random_data")})
    ]


def test_warm_up_dims_are_the_config_dims_with_dynamic_ones_at_224_and_strings_are_zero_data() -> None:
    inputs = (Tensor("pixels", "UINT8", (-1, -1, 3)), Tensor("label", "BYTES", ()))
    config = triton_config.model_config(
        name="resnet",
        fmt="onnx",
        inputs=inputs,
        outputs=OUTPUTS,
        serving=triton_config.ServingSettings(max_batch_size=0),
        version=1,
        default_model_filename="model.onnx",
    )
    # Unbatched, the config dims are the whole request; a scalar is served as [1].
    assert warmup_of(triton_config.parse(triton_config.render(config))) == [
        (
            "batch-1",
            1,
            {
                "pixels": (mc.TYPE_UINT8, [224, 224, 3], "random_data"),
                "label": (mc.TYPE_STRING, [1], "zero_data"),
            },
        )
    ]


def test_warm_up_can_be_left_out() -> None:
    assert not config_for("onnx", max_batch_size=8, warmup=False).model_warmup
