"""STAND-IN ``tensorrt`` module (the test ground has no TensorRT): see ``testground.standin_tensorrt``.

It has the names and signatures ``tritonresnet_builder/tensorrt_api.py`` declares (the
part of TensorRT 10's Python API the builder calls) and does nothing a GPU would:
the parser reads the ONNX graph's inputs with ``onnx`` so the optimization profile
is set on the real tensor names and shapes, and the "serialized network" is
``PLAN_HEADER`` followed by the ONNX bytes.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import onnx

from testground.standin_tensorrt import standin_plan

__version__ = "10.8.0.43-standin"


class _Enum(Enum):
    pass


class BuilderFlag(_Enum):
    FP16 = 0
    BF16 = 1
    FP8 = 2


class MemoryPoolType(_Enum):
    WORKSPACE = 0


class HardwareCompatibilityLevel(_Enum):
    NONE = 0
    AMPERE_PLUS = 1


class _Severity(_Enum):
    WARNING = 2


class Logger:
    WARNING = _Severity.WARNING

    def __init__(self, min_severity: Any) -> None:
        self.min_severity = min_severity


class Dims(tuple[int, ...]):
    def __new__(cls, shape: list[int]) -> Dims:
        return super().__new__(cls, shape)


class ITensor:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name = name
        self.shape = Dims(shape)


class INetworkDefinition:
    def __init__(self) -> None:
        self.inputs: list[ITensor] = []
        self.onnx_path: Path | None = None

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> ITensor:
        return self.inputs[index]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def desc(self) -> str:
        return self.text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network = network
        self.errors: list[_ParserError] = []

    def parse_from_file(self, model: str) -> bool:
        try:
            graph = onnx.load(model, load_external_data=False).graph
        except Exception as error:
            self.errors.append(_ParserError(str(error)))
            return False
        weights = {init.name for init in graph.initializer}
        for value in graph.input:
            if value.name in weights:
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            self.network.inputs.append(ITensor(value.name, dims))
        self.network.onnx_path = Path(model)
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> _ParserError:
        return self.errors[index]


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min: Dims, opt: Dims, max: Dims) -> None:  # TensorRT's parameter names
        self.shapes[input] = (min, opt, max)


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data or b"stand-in timing cache\n"


class IBuilderConfig:
    def __init__(self) -> None:
        self.flags: list[BuilderFlag] = []
        self.profiles: list[IOptimizationProfile] = []
        self.cache = ITimingCache(b"")
        self.hardware_compatibility_level = HardwareCompatibilityLevel.NONE

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.workspace = pool_size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.append(flag)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self.cache


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition()

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        if network.onnx_path is None or not config.profiles:
            return None  # as TensorRT: no engine without a parsed network and a profile
        return standin_plan(network.onnx_path.read_bytes(), config.hardware_compatibility_level.name)
