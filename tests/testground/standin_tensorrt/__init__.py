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
ONNX bytes. No Triton can load it (the test ground has no TensorRT backend,
stand-in or real), so tests that use this never claim a model was served.
"""

from pathlib import Path

#: The folder that holds the stand-in ``tensorrt`` package (put first on the builder's path).
MODULE_DIR = Path(__file__).resolve().parent
#: Environment of the builder process: the emulated node's GPU.
GPU_NAME_ENV = "TESTGROUND_STANDIN_GPU_NAME"
GPU_CC_ENV = "TESTGROUND_STANDIN_GPU_COMPUTE_CAPABILITY"
#: The first bytes of every stand-in plan.
PLAN_HEADER = b"TRITONRESNET TEST GROUND STAND-IN PLAN: not built by TensorRT\n"
