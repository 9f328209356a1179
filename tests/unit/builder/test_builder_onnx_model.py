"""Validation and inspection of ONNX models (onnx_model.py) on small real models."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from tritonresnet_builder import onnx_model
from tritonresnet_builder.contract import MAX_INPUT_SAMPLE_BYTES, ExitCode, Tensor
from tritonresnet_builder.failures import BuilderError
from unit.builder import onnx_graphs


def refusal(path: Path, fmt: str = "tensorrt") -> BuilderError:
    with pytest.raises(BuilderError) as caught:
        onnx_model.inspect(path, fmt)  # type: ignore[arg-type]
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert caught.value.field == "spec.source.uri"
    return caught.value


def test_inspect_describes_tensors_without_batch_dim_when_batch_is_dynamic(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "m.onnx", input_name="data", output_name="logits")
    info = onnx_model.inspect(path, "tensorrt")
    assert info.inputs == (Tensor("data", "FP32", (3, 4, 4)),)
    assert info.outputs == (Tensor("logits", "FP32", (10,)),)
    assert info.model_max_batch == 0
    assert info.max_batch(16) == 16
    assert info.opset == onnx_graphs.OPSET
    assert info.external_data == ()


def test_inspect_serves_fixed_batch_one_with_max_batch_one(tmp_path: Path) -> None:
    info = onnx_model.inspect(onnx_graphs.classifier(tmp_path / "m.onnx", batch=1), "onnx")
    assert info.model_max_batch == 1
    assert info.max_batch(8) == 1
    assert info.inputs == (Tensor("input", "FP32", (3, 4, 4)),)


def test_inspect_lists_external_data_next_to_the_model(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "m.onnx", external=True)
    info = onnx_model.inspect(path, "onnx")
    assert info.external_data == ("m.onnx.data",)


def test_inspect_refuses_missing_external_data_file(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "m.onnx", external=True)
    (tmp_path / "m.onnx.data").unlink()
    assert "m.onnx.data" in refusal(path).message


def test_inspect_refuses_external_data_outside_the_model_folder(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "sub" / "m.onnx", external=True)
    onnx_graphs.relocate_external_data(path, "../../etc/passwd")
    error = refusal(path)
    assert "weights" in error.message or "shape" in error.message
    assert "outside the model's folder" in error.message


def test_inspect_refuses_dynamic_non_batch_dimension_naming_tensor(tmp_path: Path) -> None:
    path = onnx_graphs.identity(tmp_path / "m.onnx", dims=("batch", 3, "height", "width"))
    error = refusal(path)
    assert "'x'" in error.message and "dimension 2" in error.message and "'height'" in error.message


def test_inspect_refuses_fixed_batch_above_one(tmp_path: Path) -> None:
    error = refusal(onnx_graphs.classifier(tmp_path / "m.onnx", batch=4))
    assert "fixed batch dimension of 4" in error.message


@pytest.mark.parametrize("fmt", ["tensorrt", "onnx"])
def test_inspect_refuses_element_type_triton_cannot_serve(tmp_path: Path, fmt: str) -> None:
    error = refusal(onnx_graphs.identity(tmp_path / "m.onnx", elem=TensorProto.COMPLEX64), fmt)
    assert "'x'" in error.message and "COMPLEX64" in error.message


def test_inspect_refuses_double_for_tensorrt_but_serves_it_as_onnx(tmp_path: Path) -> None:
    path = onnx_graphs.identity(tmp_path / "m.onnx", elem=TensorProto.DOUBLE)
    assert "TensorRT" in refusal(path, "tensorrt").message
    assert onnx_model.inspect(path, "onnx").inputs == (Tensor("x", "FP64", (3,)),)


def test_inspect_refuses_a_model_without_inputs(tmp_path: Path) -> None:
    assert "no inputs" in refusal(onnx_graphs.no_inputs(tmp_path / "m.onnx")).message


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty"), (b"this is not a protobuf \xff\xfe", "not an ONNX model")],
    ids=["empty", "text"],
)
def test_inspect_refuses_files_that_are_not_onnx(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    assert expected in refusal(path).message


def test_inspect_refuses_truncated_model(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "m.onnx", image=(3, 32, 32))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert refusal(path).kind == "InvalidOnnx"


def test_inspect_ignores_initializers_listed_as_inputs(tmp_path: Path) -> None:
    path = onnx_graphs.classifier(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    weights = next(t for t in model.graph.initializer if t.name == "weights")
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("weights", TensorProto.FLOAT, list(weights.dims))
    )
    onnx.save_model(model, str(path))
    assert [t.name for t in onnx_model.inspect(path, "tensorrt").inputs] == ["input"]


def test_inspect_refuses_an_absurd_input_naming_it_and_the_bound(tmp_path: Path) -> None:
    """A tiny graph that declares [N, 3, 100000, 100000] FP32 (112 GiB a sample) is refused."""
    error = refusal(onnx_graphs.identity(tmp_path / "m.onnx", dims=("batch", 3, 100000, 100000)))
    assert error.kind == "UnsupportedModel"
    assert "'x'" in error.message and "3x100000x100000 FP32" in error.message
    assert "114,441 MiB" in error.message and "64 MiB" in error.message


def test_inspect_takes_an_input_of_exactly_the_bound_and_refuses_one_more_element(tmp_path: Path) -> None:
    elements = MAX_INPUT_SAMPLE_BYTES  # UINT8: one byte each
    fits = onnx_graphs.identity(tmp_path / "fits.onnx", elem=TensorProto.UINT8, dims=("batch", elements))
    assert onnx_model.inspect(fits, "onnx").inputs == (Tensor("x", "UINT8", (elements,)),)
    over = onnx_graphs.identity(tmp_path / "over.onnx", elem=TensorProto.UINT8, dims=("batch", elements + 1))
    assert "'x'" in refusal(over, "onnx").message


def test_inspect_counts_the_element_size_of_every_fixed_size_datatype() -> None:
    assert set(onnx_model.ELEMENT_BYTES) == set(onnx_model.TRITON_DATATYPES.values()) - {"BYTES"}


@pytest.mark.parametrize("batch", ["batch", 1], ids=["dynamic", "fixed-1"])
def test_max_batch_zero_serves_dynamic_and_batch_one_models_unbatched(
    tmp_path: Path, batch: str | int
) -> None:
    """maxBatchSize 0 (the tutorial's layout) takes both exports: each runs at batch 1."""
    info = onnx_model.inspect(onnx_graphs.classifier(tmp_path / "m.onnx", batch=batch), "tensorrt")
    assert info.max_batch(0) == 0
    assert info.inputs == (Tensor("input", "FP32", (3, 4, 4)),)
    assert info.outputs == (Tensor("output", "FP32", (10,)),)
