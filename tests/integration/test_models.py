"""The cached ResNet ONNX models have the contract the tests and the operator rely on."""

from __future__ import annotations

import onnx
import pytest
from testground.models import NUM_CLASSES, OnnxModels


def dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "renamed", "fixed_batch", "external_data"])
def test_model_has_declared_names_shapes_and_batch_dimension(onnx_models: OnnxModels, name: str) -> None:
    spec = onnx_models.spec(name)
    onnx.checker.check_model(str(onnx_models.onnx_file(name)))  # by path: finds external data too
    model = onnx.load(str(onnx_models.onnx_file(name)), load_external_data=False)

    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    batch: int | str = "batch" if spec.dynamic_batch else 1
    assert (graph_input.name, graph_output.name) == (spec.input_name, spec.output_name)
    assert dims(graph_input) == [batch, 3, 224, 224]
    assert dims(graph_output) == [batch, NUM_CLASSES]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.opset_import[0].version == 17


def test_external_data_model_keeps_its_weights_in_one_file_next_to_it(onnx_models: OnnxModels) -> None:
    folder = onnx_models.path("external_data")
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    locations = {
        entry.value
        for tensor in model.graph.initializer
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"model.onnx.data"}
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (folder / "model.onnx").stat().st_size < 100_000 < (folder / "model.onnx.data").stat().st_size


def test_resnet50_is_deeper_and_larger_than_resnet18(onnx_models: OnnxModels) -> None:
    small = onnx.load(str(onnx_models.path("resnet18")), load_external_data=False)
    large = onnx.load(str(onnx_models.path("resnet50")), load_external_data=False)
    convs = [sum(node.op_type == "Conv" for node in m.graph.node) for m in (small, large)]
    assert convs == [20, 53]  # 17 + 3 downsample convs; 49 + 4 downsample convs
