"""The part of TensorRT 10's Python API the builder calls, as typed protocols.

``tensorrt`` ships without type information, so untyped it would be ``Any`` and
``mypy --strict`` would let a misspelt flag or a wrong argument through to the
GPU node. Instead :func:`import_tensorrt` hands the module out typed as
:class:`TensorRT`, and every call tensorrt_engine.py makes is checked against
the protocols below.

They declare only what the builder uses, spelt as TensorRT names it (class,
method, parameter and enum member names), so a call that type-checks here is
a call TensorRT has. Using another part of TensorRT means declaring it here
first. Nothing here is instantiated: at run time the objects are TensorRT's.
"""

from __future__ import annotations

import importlib
from typing import ClassVar, Protocol, cast

from tritonresnet_builder.failures import unsupported

# -- enumerations: only the members the builder uses ----------------------------------
# ``name`` and ``value`` are there so an enum is not satisfied by any object at all.


class LoggerSeverity(Protocol):
    """TensorRT's ``ILogger.Severity``."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class BuilderFlag(Protocol):
    FP16: ClassVar[BuilderFlag]
    BF16: ClassVar[BuilderFlag]
    FP8: ClassVar[BuilderFlag]

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class MemoryPoolType(Protocol):
    WORKSPACE: ClassVar[MemoryPoolType]

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class TensorIOMode(Protocol):
    INPUT: ClassVar[TensorIOMode]
    OUTPUT: ClassVar[TensorIOMode]

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


class DataType(Protocol):
    """TensorRT's ``DataType``; ``tensorrt.nptype`` turns one into a numpy type."""
class HardwareCompatibilityLevel(Protocol):
    """TensorRT's ``HardwareCompatibilityLevel`` (8.6 and later)."""

    NONE: ClassVar[HardwareCompatibilityLevel]
    #: One plan for every Ampere or newer GPU; built on an Ampere or newer GPU only.
    AMPERE_PLUS: ClassVar[HardwareCompatibilityLevel]

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...


# -- objects ------------------------------------------------------------------------


class Logger(Protocol):
    WARNING: ClassVar[LoggerSeverity]

    def __init__(self, min_severity: LoggerSeverity) -> None: ...


class Dims(Protocol):
    def __init__(self, shape: list[int]) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> int: ...


class IHostMemory(Protocol):
    """Memory TensorRT owns (a plan, a timing cache): a buffer, not ``bytes``."""

    # The buffer protocol is what lets ``memoryview(host_memory)`` type-check.
    def __buffer__(self, flags: int, /) -> memoryview: ...
    @property
    def nbytes(self) -> int: ...


class ITensor(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Dims: ...


class INetworkDefinition(Protocol):
    @property
    def num_inputs(self) -> int: ...
    def get_input(self, index: int) -> ITensor: ...


class IOptimizationProfile(Protocol):
    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None: ...


class ITimingCache(Protocol):
    def serialize(self) -> IHostMemory: ...


class IBuilderConfig(Protocol):
    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None: ...
    def set_flag(self, flag: BuilderFlag) -> None: ...
    def add_optimization_profile(self, profile: IOptimizationProfile) -> int: ...
    # TensorRT takes any buffer; the builder only ever passes bytes read from the volume.
    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache: ...
    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool: ...
    def get_timing_cache(self) -> ITimingCache: ...
    # A property in TensorRT's Python API (setHardwareCompatibilityLevel in C++).
    @property
    def hardware_compatibility_level(self) -> HardwareCompatibilityLevel: ...
    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, level: HardwareCompatibilityLevel) -> None: ...


class Builder(Protocol):
    def __init__(self, logger: Logger) -> None: ...
    def create_network(self, flags: int = 0) -> INetworkDefinition: ...
    def create_builder_config(self) -> IBuilderConfig: ...
    def create_optimization_profile(self) -> IOptimizationProfile: ...
    # None when the build fails (TensorRT's log says why), so callers must check.
    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> IHostMemory | None: ...


class ParserError(Protocol):
    def desc(self) -> str: ...


class OnnxParser(Protocol):
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None: ...
    def parse_from_file(self, model: str) -> bool: ...
    @property
    def num_errors(self) -> int: ...
    def get_error(self, index: int) -> ParserError: ...


class IExecutionContext(Protocol):
    def set_input_shape(self, name: str, shape: Dims | tuple[int, ...]) -> bool: ...
    def get_tensor_shape(self, name: str) -> Dims: ...
    def set_tensor_address(self, name: str, memory: int) -> bool: ...
    def execute_async_v3(self, stream_handle: int) -> bool: ...


class ICudaEngine(Protocol):
    @property
    def num_io_tensors(self) -> int: ...
    def get_tensor_name(self, index: int) -> str: ...
    def get_tensor_mode(self, name: str) -> TensorIOMode: ...
    def get_tensor_dtype(self, name: str) -> DataType: ...
    def create_execution_context(self) -> IExecutionContext: ...


class Runtime(Protocol):
    def __init__(self, logger: Logger) -> None: ...
    # None when the plan does not load (another TensorRT version or GPU kind).
    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None: ...


class TensorRT(Protocol):
    """The ``tensorrt`` module itself."""

    __version__: str
    Logger: type[Logger]
    Builder: type[Builder]
    OnnxParser: type[OnnxParser]
    Dims: type[Dims]
    BuilderFlag: type[BuilderFlag]
    MemoryPoolType: type[MemoryPoolType]
    Runtime: type[Runtime]
    TensorIOMode: type[TensorIOMode]

    # Returns a numpy scalar type; typed loosely so this module needs no numpy.
    def nptype(self, trt_type: DataType) -> type: ...
    HardwareCompatibilityLevel: type[HardwareCompatibilityLevel]


def import_tensorrt() -> TensorRT:
    """The ``tensorrt`` module, or UNSUPPORTED (TensorRTMissing) when TensorRT is not here.

    Imported on demand so the builder runs (``onnx`` format, publish, tests) on
    machines without TensorRT; only a TensorRT build needs it.
    """
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise unsupported(
            "TensorRTMissing",
            "TensorRT is not installed in this image; build with the "
            "tritonresnet-builder image or use format onnx",
        ) from exc
    # A stubs-only package or a leftover folder named tensorrt imports as an empty namespace.
    if not hasattr(module, "Builder"):
        raise unsupported(
            "TensorRTMissing",
            "the tensorrt module here has no Builder (type stubs only?); TensorRT itself is not installed",
        )
    return cast(TensorRT, module)
