"""Small, real ONNX models made with onnx.helper, for tests that need a model in a few milliseconds.

Each model is a valid ONNX file (onnxruntime runs the ones with a float input);
the ResNets of the test ground (``onnx_models`` fixture) cover the real-size cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
Dim = int | str


def save(model: onnx.ModelProto, path: Path, *, external: bool = False) -> Path:
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return path


def relocate_external_data(path: Path, location: str) -> Path:
    """Rewrite every external-data location the model at ``path`` names to ``location``
    (the files themselves stay as they are): a model that names a file it should not."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))
    return path


def classifier(
    path: Path,
    *,
    input_name: str = "input",
    output_name: str = "output",
    batch: Dim = "batch",
    image: Sequence[Dim] = (3, 4, 4),
    classes: int = 10,
    external: bool = False,
    seed: int = 0,
) -> Path:
    """``[batch, *image] -> Reshape -> MatMul -> [batch, classes]``: a stand-in classifier."""
    flat = int(np.prod([d for d in image if isinstance(d, int)]))
    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((flat, classes)).astype(np.float32), "weights")
    shape = numpy_helper.from_array(
        np.array([-1 if batch == "batch" else batch, flat], dtype=np.int64), "shape"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", [input_name, "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], [output_name]),
        ],
        "classifier",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, *image])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, classes])],
        [weights, shape],
    )
    return save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path, external=external
    )


def identity(path: Path, *, elem: int = TensorProto.FLOAT, dims: Sequence[Dim] = ("batch", 3)) -> Path:
    """``x -> Identity -> y`` with a chosen element type and shape."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, list(dims))],
        [helper.make_tensor_value_info("y", elem, list(dims))],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def no_inputs(path: Path) -> Path:
    """A model whose only output is a constant: nothing for a client to send."""
    value = numpy_helper.from_array(np.ones((1, 3), dtype=np.float32), "value")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["y"], value=value)],
        "constant",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)
