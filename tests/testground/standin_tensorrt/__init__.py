"""STAND-IN for TensorRT and the GPU in the builder pods of emulated GPU nodes (no TensorRT, no GPU here).

Used only when a node of the test ground is started with ``NodeSpec.standin_tensorrt``
(the GPU fleet e2e test): the node agent then runs a builder pod's container as
``python -m testground.standin_tensorrt.builder <args>`` instead of
``python -m tritonresnet_builder <args>``. That module answers the builder's CUDA
driver query with the node's GPU (its product and compute capability, as GPU
feature discovery labels them) and puts the stand-in ``tensorrt`` module of the
``tensorrt/`` folder first on the import path; then it runs the real builder.

The builder's accuracy gate runs the plan through ``run_plan``, which the module
replaces with a stand-in that runs the ONNX bytes inside the stand-in plan with
onnxruntime on CPU: the gate's wiring is exercised, no plan's accuracy is.

So everything around the plan is real: fetching from S3, validating the ONNX,
the TensorRT calls tensorrt_engine.py makes (with their arguments), the engine
folder, the result JSON, the publish step and its ``cc_model_filenames``. The
plan file is NOT a TensorRT plan: it is a header saying so, followed by the
ONNX bytes. The real tritonserver serves it only through the test ground's STAND-IN
TensorRT backend (``testground.standin_backends.tensorrt_standin``), which runs those ONNX
bytes with onnxruntime: a test serving one says so and never claims a plan was served.

This module is also copied beside that backend (it imports the standard library only), so
the plan's layout and the GPU variable have one home for the builder and the server.
"""

from pathlib import Path

#: The folder that holds the stand-in ``tensorrt`` package (put first on the builder's path).
MODULE_DIR = Path(__file__).resolve().parent
#: Environment of the builder process and of Triton's: the emulated node's GPU (the node agent
#: sets them from the node's GPU feature discovery labels; there is no GPU to ask).
GPU_NAME_ENV = "TESTGROUND_STANDIN_GPU_NAME"
GPU_CC_ENV = "TESTGROUND_STANDIN_GPU_COMPUTE_CAPABILITY"
#: The first bytes of every stand-in plan.
PLAN_HEADER = b"TRITONRESNET TEST GROUND STAND-IN PLAN: not built by TensorRT\n"


def standin_plan(onnx_bytes: bytes, hardware_level: str) -> bytes:
    """A stand-in plan file: the header, a line naming the hardware compatibility level, the ONNX."""
    return PLAN_HEADER + f"hardware compatibility {hardware_level}\n".encode() + onnx_bytes


def onnx_of_standin_plan(data: bytes) -> bytes:
    """The ONNX bytes inside a stand-in plan; ValueError for anything else (a real plan, say)."""
    if not data.startswith(PLAN_HEADER):
        raise ValueError("not a test ground stand-in plan")
    return data[len(PLAN_HEADER) :].split(b"\n", 1)[1]  # after the hardware level line
