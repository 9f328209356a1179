"""``python -m testground.standin_tensorrt.builder``: the real builder with a STAND-IN TensorRT and GPU.

See the package docstring. The CUDA driver answer is the emulated node's GPU, from
the environment the node agent sets; everything after it is the builder's own code.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testground.standin_tensorrt import GPU_CC_ENV, GPU_NAME_ENV, MODULE_DIR, onnx_of_standin_plan


def run_standin_plan(plan_path: Path, inputs: Mapping[str, Any]) -> Any:
    """The accuracy gate's plan runner, STAND-IN: a stand-in plan holds the ONNX bytes after its
    two header lines, so they run with onnxruntime on CPU (the gate then compares onnxruntime
    with itself: it checks the gate's wiring, never a plan's accuracy)."""
    from tritonresnet_builder import accuracy

    onnx_bytes = onnx_of_standin_plan(plan_path.read_bytes())
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "model.onnx"
        model.write_bytes(onnx_bytes)
        return accuracy.onnxruntime_runner(model, inputs)


def main() -> int:
    from tritonresnet_builder import cuda_device, tensorrt_engine

    device = cuda_device.Device(
        name=f"{os.environ[GPU_NAME_ENV]} (test ground stand-in)",
        compute_capability=os.environ[GPU_CC_ENV],
    )
    cuda_device.first_device = lambda: device  # the builder asks through the module attribute
    tensorrt_engine.run_plan = run_standin_plan  # build.py looks it up at the call
    sys.path.insert(0, str(MODULE_DIR))  # `import tensorrt` finds the stand-in package
    from tritonresnet_builder.cli import main as builder_main

    return builder_main()


if __name__ == "__main__":
    sys.exit(main())
