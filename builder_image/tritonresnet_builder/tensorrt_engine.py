"""Build one TensorRT plan from a validated ONNX model with the TensorRT 10 Python API.

``tensorrt`` is imported when a build starts (:func:`tensorrt_api.import_tensorrt`),
so the module imports on machines without TensorRT, and every call into it is
type-checked (``mypy --strict``) against the protocols in tensorrt_api.py.
Only a real build needs the library and a GPU; without either the build fails
with ``ExitCode.UNSUPPORTED`` and says which is missing.

A plan is tied to the GPU's compute capability and to the TensorRT version
that built it; both are recorded, and the timing cache on the volume is kept
per (compute capability, TensorRT version) so a rebuild reuses its timings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tritonresnet_builder import cuda_device
from tritonresnet_builder.contract import (
    AMPERE_MAJOR,
    ExitCode,
    HardwareCompatibility,
    Precision,
    plan_filename,
)
from tritonresnet_builder.failures import BuilderError, bad_input, unsupported
from tritonresnet_builder.tensorrt_api import (
    Builder,
    BuilderFlag,
    IBuilderConfig,
    ICudaEngine,
    IExecutionContext,
    INetworkDefinition,
    IOptimizationProfile,
    ITimingCache,
    OnnxParser,
    TensorRT,
    import_tensorrt,
)
from tritonresnet_builder.volume import write_atomic

log = logging.getLogger(__name__)

PRECISION_FIELD = "spec.engine.precision"
MiB = 1 << 20


@dataclass(frozen=True)
class PlanRequest:
    onnx_path: Path
    out_dir: Path  #: the plan is written here as model.sm<XY>.plan
    timing_cache_dir: Path
    precision: Precision
    #: the optimization profile spans batch 1..max; 0: the version is served without
    #: batching, so Triton only ever runs batch 1 and the profile is batch 1 alone
    max_batch_size: int
    opt_batch_size: int
    workspace_mib: int
    hardware_compatibility: HardwareCompatibility = "none"

    def batches(self) -> tuple[int, int, int]:
        """The profile's (min, opt, max) batch."""
        if self.max_batch_size == 0:
            return 1, 1, 1
        return 1, self.opt_batch_size, self.max_batch_size


@dataclass(frozen=True)
class BuiltPlan:
    path: Path
    size: int
    compute_capability: str
    tensorrt_version: str
    gpu_name: str
    seconds: float
    hardware_compatibility: HardwareCompatibility = "none"  #: what the plan was built with


def require_gpu() -> cuda_device.Device:
    try:
        return cuda_device.first_device()
    except cuda_device.NoGpu as exc:
        raise unsupported("NoGpu", f"a TensorRT build needs a GPU: {exc}") from exc


def refuse_uncalibrated(precision: Precision) -> None:
    """int8 without calibration data would build a plan with made-up scales; refuse it."""
    if precision == "int8":
        raise bad_input(
            "CalibrationRequired",
            "precision int8 needs calibration data, which this builder does "
            "not take; use fp16, bf16 or fp8 (for a model with Q/DQ nodes)",
            PRECISION_FIELD,
        )


def timing_cache_path(cache_dir: Path, compute_capability: str, tensorrt_version: str) -> Path:
    return cache_dir / f"sm{compute_capability.replace('.', '')}-trt{tensorrt_version}.cache"


def _precision_flags(trt: TensorRT, precision: Precision) -> list[BuilderFlag]:
    flags: dict[str, list[BuilderFlag]] = {
        "fp32": [],
        "fp16": [trt.BuilderFlag.FP16],
        "bf16": [trt.BuilderFlag.BF16],
        "fp8": [trt.BuilderFlag.FP8],
    }
    return flags[precision]


def hardware_level(request: PlanRequest, compute_capability: str) -> HardwareCompatibility:
    """The level to build with: ``ampere_plus`` only on an Ampere or newer GPU, where TensorRT
    can build it; an older GPU (a T4 in the same fleet) gets a plan of its own instead."""
    major = int(compute_capability.split(".")[0])
    return request.hardware_compatibility if major >= AMPERE_MAJOR else "none"


def _parse(parser: OnnxParser, onnx_path: Path) -> None:
    # parse_from_file resolves external data relative to the model's folder.
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
    raise bad_input(
        "UnsupportedModel", "TensorRT could not parse the model: " + "; ".join(errors[:3]), "spec.source.uri"
    )


def _profile(
    trt: TensorRT, builder: Builder, network: INetworkDefinition, request: PlanRequest
) -> IOptimizationProfile:
    """Batch 1..max with the optimum in between (batch 1 alone for max 0); every other
    dimension as exported."""
    low, opt, high = request.batches()
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        rest = [tensor.shape[d] for d in range(1, len(tensor.shape))]
        profile.set_shape(
            tensor.name, trt.Dims([low, *rest]), trt.Dims([opt, *rest]), trt.Dims([high, *rest])
        )
    return profile


def _load_timing_cache(config: IBuilderConfig, path: Path) -> ITimingCache:
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception:  # a damaged cache only costs time: start afresh
        log.warning("timing cache %s is unreadable; starting an empty one", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log.info("timing cache %s: %d bytes loaded", path, len(data))
    return cache


def build_plan(request: PlanRequest) -> BuiltPlan:
    """Parse, configure and build one plan; returns what it built and on which GPU."""
    refuse_uncalibrated(request.precision)
    trt = import_tensorrt()
    version = trt.__version__
    device = require_gpu()
    started = time.monotonic()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; the old flag is deprecated, so none is passed.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    _parse(parser, request.onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_mib * MiB)
    for flag in _precision_flags(trt, request.precision):
        config.set_flag(flag)
    config.add_optimization_profile(_profile(trt, builder, network, request))
    level = hardware_level(request, device.compute_capability)
    if level == "ampere_plus":
        # Fewer tactics, no cuDNN/cuBLAS tactic sources and 48 KiB of shared memory: one
        # plan for every Ampere or newer GPU, possibly slower than a plan for each.
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    cache_path = timing_cache_path(request.timing_cache_dir, device.compute_capability, version)
    _load_timing_cache(config, cache_path)

    low, opt, high = request.batches()
    log.info(
        "building a %s TensorRT %s plan for %s (sm %s), batch %d..%d (opt %d), workspace %d MiB",
        request.precision,
        version,
        device.name,
        device.compute_capability,
        low,
        high,
        opt,
        request.workspace_mib,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuilderError(
            ExitCode.INTERNAL, "EngineBuildFailed", "TensorRT did not build an engine; its log above says why"
        )
    plan_path = request.out_dir / plan_filename(device.compute_capability)
    size = write_atomic(plan_path, memoryview(serialized))
    cache_size = write_atomic(cache_path, memoryview(config.get_timing_cache().serialize()))
    log.info("timing cache %s: %d bytes saved", cache_path, cache_size)
    return BuiltPlan(
        path=plan_path,
        size=size,
        compute_capability=device.compute_capability,
        tensorrt_version=version,
        gpu_name=device.name,
        seconds=time.monotonic() - started,
        hardware_compatibility=level,
    )


def run_plan(plan_path: Path, inputs: Mapping[str, npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """Run a built plan once on the GPU and return its first output (the accuracy gate's runner).

    Inputs are copied to device memory, every output gets device memory of the shape
    the context reports for these inputs, and the first output is copied back.
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise BuilderError(ExitCode.INTERNAL, "EngineLoadFailed", f"TensorRT could not load {plan_path.name}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    if not outputs:
        raise BuilderError(ExitCode.INTERNAL, "EngineRunFailed", f"{plan_path.name} has no outputs")
    try:
        with cuda_device.DeviceSession() as session:
            for name, value in inputs.items():
                host: npt.NDArray[Any] = np.ascontiguousarray(
                    value, dtype=trt.nptype(engine.get_tensor_dtype(name))
                )
                context.set_input_shape(name, tuple(host.shape))
                pointer = session.allocate(host.nbytes)
                session.to_device(pointer, host.data.cast("B"))
                context.set_tensor_address(name, pointer)
            # Every output needs memory of the shape these inputs give; only the first is read back.
            pointers = []
            for name in outputs:
                pointers.append(session.allocate(_nbytes(trt, engine, context, name)))
                context.set_tensor_address(name, pointers[-1])
            if not context.execute_async_v3(session.stream):
                raise BuilderError(
                    ExitCode.INTERNAL, "EngineRunFailed", f"TensorRT could not run {plan_path.name}"
                )
            session.synchronize()
            first: npt.NDArray[Any] = np.empty(
                _shape(context, outputs[0]), trt.nptype(engine.get_tensor_dtype(outputs[0]))
            )
            session.to_host(first.data.cast("B"), pointers[0])
    except cuda_device.NoGpu as exc:
        raise unsupported("NoGpu", f"running the plan for the accuracy check failed: {exc}") from exc
    return first


def _shape(context: IExecutionContext, name: str) -> list[int]:
    dims = context.get_tensor_shape(name)
    return [dims[d] for d in range(len(dims))]


def _nbytes(trt: TensorRT, engine: ICudaEngine, context: IExecutionContext, name: str) -> int:
    item = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
    return int(np.prod(_shape(context, name), dtype=np.int64)) * item
