"""The TensorRT build step, reached with a stand-in ``tensorrt`` module (no TensorRT or GPU here).

Nothing here claims a plan was built: the stand-in records the calls
tensorrt_engine.py makes and returns placeholder bytes, and the tests check the
parameters of those calls. The real build runs only in the builder image on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tritonresnet_builder import accuracy, cuda_device, tensorrt_engine
from tritonresnet_builder.contract import (
    ONNX_FILENAME,
    AccuracyTolerance,
    BuildArgs,
    EngineSettings,
    ExitCode,
    Precision,
    Source,
    parse_result,
)
from tritonresnet_builder.failures import BuilderError
from unit.builder import onnx_graphs

ROOT = Path(__file__).resolve().parents[3]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __call__(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for call, args in self.calls if call == name]


def stand_in_tensorrt(
    record: Recorder, input_shape: tuple[int, ...], saved_cache: bytes = b""
) -> types.ModuleType:
    """A recording stand-in for the ``tensorrt`` module: the subset tensorrt_engine.py calls."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.8.0.43"  # type: ignore[attr-defined]

    class Enum:
        def __init__(self, name: str) -> None:
            self.name = name

        def __repr__(self) -> str:
            return self.name

    trt.BuilderFlag = types.SimpleNamespace(FP16=Enum("FP16"), BF16=Enum("BF16"), FP8=Enum("FP8"))  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=Enum("WORKSPACE"))  # type: ignore[attr-defined]

    class Logger:
        WARNING = Enum("WARNING")

        def __init__(self, severity: Enum) -> None:
            record("Logger", severity)

    class Dims(list):  # type: ignore[type-arg]
        pass

    class Tensor:
        name = "input"
        shape = Dims(input_shape)

    class Network:
        num_inputs = 1

        def get_input(self, index: int) -> Tensor:
            return Tensor()

    class Parser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            record("OnnxParser")

        def parse_from_file(self, path: str) -> bool:
            record("parse_from_file", path)
            return True

    class Profile:
        def set_shape(self, name: str, low: Dims, opt: Dims, high: Dims) -> None:
            record("set_shape", name, list(low), list(opt), list(high))

    class Cache:
        def serialize(self) -> bytes:
            return b"stand-in timing cache"

    class Config:
        def set_memory_pool_limit(self, pool: Enum, size: int) -> None:
            record("set_memory_pool_limit", pool.name, size)

        def set_flag(self, flag: Enum) -> None:
            record("set_flag", flag.name)

        def add_optimization_profile(self, profile: Profile) -> int:
            record("add_optimization_profile")
            return 0

        def create_timing_cache(self, data: bytes) -> Cache:
            record("create_timing_cache", bytes(data))
            return Cache()

        def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
            record("set_timing_cache", ignore_mismatch)
            return True

        def get_timing_cache(self) -> Cache:
            return Cache()

    class Builder:
        def __init__(self, logger: Logger) -> None:
            record("Builder")

        def create_network(self, flags: int) -> Network:
            record("create_network", flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            record("build_serialized_network")
            return b"stand-in serialized engine"

    trt.Logger, trt.Dims, trt.OnnxParser, trt.Builder = Logger, Dims, Parser, Builder  # type: ignore[attr-defined]
    return trt


def classifier_build(tmp_path: Path, key: str, engine: EngineSettings, result_file: str = "") -> BuildArgs:
    """A build of the small classifier into a new repository under ``tmp_path``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    return BuildArgs(
        repository=str(repo),
        engine_key=key,
        source=Source(uri=str(onnx_graphs.classifier(tmp_path / "m.onnx"))),
        engine=engine,
        result_file=result_file,
    )


@pytest.fixture
def stand_in_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA driver query answers as an sm 8.6 GPU would (stand-in: there is no GPU here)."""
    monkeypatch.setattr(cuda_device, "first_device", lambda: cuda_device.Device("stand-in GPU", "8.6"))


def test_tensorrt_build_reaches_builder_with_stand_in_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_gpu: None
) -> None:
    """A recording stand-in module is inserted as ``tensorrt``: the test checks the build
    parameters (flags, profile, workspace, timing cache), not that a plan exists."""
    record = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(record, (-1, 3, 4, 4)))
    cache_dir = tmp_path / "timing-cache"
    cache_dir.mkdir()
    (cache_dir / "sm86-trt10.8.0.43.cache").write_bytes(b"earlier timings")
    model = onnx_graphs.classifier(tmp_path / "model.onnx")

    built = tensorrt_engine.build_plan(
        tensorrt_engine.PlanRequest(
            onnx_path=model,
            out_dir=tmp_path / "out",
            timing_cache_dir=cache_dir,
            precision="fp16",
            max_batch_size=16,
            opt_batch_size=4,
            workspace_mib=2048,
        )
    )

    assert record.named("create_network") == [(0,)]  # TensorRT 10: explicit batch is the only mode
    assert record.named("parse_from_file") == [(str(model),)]
    assert record.named("set_flag") == [("FP16",)]
    assert record.named("set_memory_pool_limit") == [("WORKSPACE", 2048 << 20)]
    assert record.named("set_shape") == [("input", [1, 3, 4, 4], [4, 3, 4, 4], [16, 3, 4, 4])]
    assert record.named("add_optimization_profile") == [()]
    assert record.named("create_timing_cache") == [(b"earlier timings",)]
    assert record.named("set_timing_cache") == [(False,)]
    assert (cache_dir / "sm86-trt10.8.0.43.cache").read_bytes() == b"stand-in timing cache"
    assert (built.compute_capability, built.tensorrt_version) == ("8.6", "10.8.0.43")
    assert built.path.name == "model.sm86.plan"


@pytest.mark.parametrize(("precision", "flags"), [("fp32", []), ("bf16", [("BF16",)]), ("fp8", [("FP8",)])])
def test_tensorrt_precision_flags_with_stand_in_tensorrt(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stand_in_gpu: None,
    precision: Precision,
    flags: list[tuple[str]],
) -> None:
    """Stand-in ``tensorrt`` module again: only the flags set for each precision are checked."""
    record = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(record, (-1, 3, 4, 4)))
    tensorrt_engine.build_plan(
        tensorrt_engine.PlanRequest(
            onnx_path=onnx_graphs.classifier(tmp_path / "m.onnx"),
            out_dir=tmp_path,
            timing_cache_dir=tmp_path / "c",
            precision=precision,
            max_batch_size=8,
            opt_batch_size=4,
            workspace_mib=64,
        )
    )
    assert record.named("set_flag") == flags
    assert record.named("create_timing_cache") == [(b"",)]  # no cache yet: start empty


def test_int8_is_refused_without_calibration_data() -> None:
    with pytest.raises(BuilderError) as caught:
        tensorrt_engine.refuse_uncalibrated("int8")
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    assert caught.value.field == "spec.engine.precision"


def test_build_without_tensorrt_exits_unsupported_and_writes_no_plan(tmp_path: Path) -> None:
    """The real CLI on this machine, which has neither TensorRT nor a GPU."""
    args = classifier_build(tmp_path, "k", EngineSettings(format="tensorrt"), str(tmp_path / "result"))
    repo = Path(args.repository)
    done = subprocess.run(
        [sys.executable, "-m", "tritonresnet_builder", *args.to_argv()],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == ExitCode.UNSUPPORTED, done.stderr
    result = parse_result(done.stdout)
    assert result.error is not None and result.error.kind in ("TensorRTMissing", "NoGpu")
    assert "TensorRT" in result.error.message or "GPU" in result.error.message
    assert json.loads((tmp_path / "result").read_text())["exit_code"] == ExitCode.UNSUPPORTED
    assert list(repo.rglob("*")) == []


def test_product_code_writes_plans_only_from_tensorrt_serialized_engines() -> None:
    """No builder module but tensorrt_engine.py names a plan file for writing, and it writes
    exactly what ``build_serialized_network`` returned."""
    package = ROOT / "builder_image" / "tritonresnet_builder"
    engine_source = (package / "tensorrt_engine.py").read_text()
    assert "serialized = builder.build_serialized_network(network, config)" in engine_source
    assert "write_atomic(plan_path, memoryview(serialized))" in engine_source
    for module in package.glob("*.py"):
        # contract.py names plan files; tensorrt_api.py declares the TensorRT calls, never makes them.
        if module.name in ("tensorrt_engine.py", "contract.py", "tensorrt_api.py"):
            continue
        text = module.read_text()
        assert '.plan"' not in text.replace('"model.plan"', ""), module.name
        assert "build_serialized_network" not in text, module.name


@pytest.fixture
def stand_in_plan_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accuracy gate's plan runner replaced by a stand-in (there is no TensorRT to run a
    plan here): it answers exactly as onnxruntime does on the ONNX file next to the plan."""
    monkeypatch.setattr(tensorrt_engine, "run_plan", _answers_as_onnxruntime)


def _answers_as_onnxruntime(plan: Path, feed: Mapping[str, Any]) -> Any:
    return accuracy.onnxruntime_runner(plan.parent / ONNX_FILENAME, feed)


@pytest.mark.parametrize(
    ("input_shape", "export"), [((-1, 3, 4, 4), "batch"), ((1, 3, 4, 4), 1)], ids=["dynamic", "fixed-1"]
)
def test_max_batch_zero_builds_a_batch_one_profile_with_stand_in_tensorrt(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stand_in_gpu: None,
    stand_in_plan_runner: None,
    input_shape: tuple[int, ...],
    export: str | int,
) -> None:
    """The whole build step with max batch 0, through a recording stand-in ``tensorrt``: the
    profile is batch 1 alone, for a dynamic export and for the tutorial's fixed batch of 1."""
    from tritonresnet_builder.build import MODEL_INFO, build

    record = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(record, input_shape))
    repo = tmp_path / "repo"
    repo.mkdir()
    result = build(
        BuildArgs(
            repository=str(repo),
            engine_key="k0",
            source=Source(uri=str(onnx_graphs.classifier(tmp_path / "m.onnx", batch=export))),
            engine=EngineSettings(format="tensorrt", max_batch_size=0),
            result_file="",
        )
    )
    assert result.ok and result.artifact == "model.sm86.plan"
    assert record.named("set_shape") == [("input", [1, 3, 4, 4], [1, 3, 4, 4], [1, 3, 4, 4])]
    info = json.loads((repo / ".tritonresnet/engines/k0" / MODEL_INFO).read_text())
    assert info["max_batch_size"] == 0


def test_max_batch_zero_renders_an_optimum_of_one() -> None:
    """--opt-batch-size is rendered from optimum_batch(): 1 with max batch 0, which the build accepts."""
    engine = EngineSettings(max_batch_size=0)
    assert (engine.optimum_batch(), engine.largest_batch()) == (1, 1)
    argv = BuildArgs(repository="/m", engine_key="k", source=Source(uri="/m/x.onnx"), engine=engine).to_argv()
    assert "--max-batch-size=0" in argv and "--opt-batch-size=1" in argv


def _build_with(tmp_path: Path, tolerance: AccuracyTolerance) -> tuple[Path, Any]:
    from tritonresnet_builder.build import build

    engine = EngineSettings(format="tensorrt", max_batch_size=4, accuracy=tolerance)
    args = classifier_build(tmp_path, "gate", engine)
    return Path(args.repository) / ".tritonresnet/engines/gate", build(args)


def test_accuracy_gate_passes_a_plan_that_answers_as_onnxruntime_with_stand_in_tensorrt_and_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_gpu: None, stand_in_plan_runner: None
) -> None:
    """Stand-ins for TensorRT and for running the plan: the gate runs between the build and
    the install, in batches the plan's profile takes (max batch 4: two runs of 4 inputs)."""
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(Recorder(), (-1, 3, 4, 4)))
    batches: list[int] = []

    def counting(plan: Path, feed: Mapping[str, Any]) -> Any:
        batches.append(len(next(iter(feed.values()))))
        return _answers_as_onnxruntime(plan, feed)

    monkeypatch.setattr(tensorrt_engine, "run_plan", counting)
    engine_dir, result = _build_with(tmp_path, AccuracyTolerance(100, 0.0))
    assert result.ok and "accuracy" in result.seconds
    assert batches == [4, 4]
    assert (engine_dir / "model.sm86.plan").is_file()


def test_accuracy_gate_fails_a_drifting_plan_with_the_numbers_and_installs_nothing_with_stand_in_tensorrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_gpu: None
) -> None:
    """Stand-ins for TensorRT and for running the plan: the stand-in plan answers onnxruntime's
    outputs rounded to fp16 plus a drift that reverses every ranking (what a broken fp16 build
    would do); the build fails AccuracyCheckFailed naming both numbers, and no engine folder exists."""
    monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(Recorder(), (-1, 3, 4, 4)))

    def drifting(plan: Path, feed: Mapping[str, Any]) -> Any:
        return -_answers_as_onnxruntime(plan, feed).astype("float16").astype("float32")

    monkeypatch.setattr(tensorrt_engine, "run_plan", drifting)
    with pytest.raises(BuilderError) as error:
        _build_with(tmp_path, AccuracyTolerance())
    assert (error.value.kind, error.value.exit_code) == ("AccuracyCheckFailed", ExitCode.BAD_INPUT)
    assert error.value.field == "spec.engine.accuracy"
    assert "top-5 agreement 0.0% (at least 90% wanted)" in error.value.message
    assert "max abs difference" in error.value.message and "fp16 plan" in error.value.message
    assert not (tmp_path / "repo/.tritonresnet/engines/gate").exists()
