"""tensorrt_engine.py type-checks with ``mypy --strict`` against our TensorRT facade, tensorrt_api.py.

The second test plants API mistakes in a copy of the module and expects mypy to
catch each one: proof that the facade is really what the calls are checked
against (an untyped ``tensorrt`` would be ``Any`` and every mistake would pass).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "builder_image" / "tritonresnet_builder"
MODULE = PACKAGE / "tensorrt_engine.py"


def mypy_strict(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            *map(str, paths),
        ],
        cwd=ROOT,
        # The copies live outside the package; the editable install's import hook is
        # invisible to mypy, so point it at the package's folder. Without this the
        # facade would not resolve, and everything would be Any (and pass).
        env={**os.environ, "MYPYPATH": str(PACKAGE.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tensorrt_engine_passes_mypy_strict_against_the_facade() -> None:
    done = mypy_strict(MODULE, PACKAGE / "tensorrt_api.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success" in done.stdout


MISTAKES = {
    "misspelled flag": ("trt.BuilderFlag.FP16", "trt.BuilderFlag.FP61"),
    "misspelled method": ("profile.set_shape(", "profile.set_shapes("),
    "wrong pool enum": ("trt.MemoryPoolType.WORKSPACE", "trt.MemoryPoolType.WORKSPACE_SIZE"),
    "plan is IHostMemory, not bytes": (
        "size = write_atomic(plan_path, memoryview(serialized))",
        "size = len(serialized.decode())",
    ),
    "parser method": ("parser.parse_from_file(str(onnx_path))", "parser.parse_file(str(onnx_path))"),
    "dims from a list of str": ("trt.Dims([low, *rest])", "trt.Dims([str(low), *rest])"),
    "misspelled hardware level": (
        "trt.HardwareCompatibilityLevel.AMPERE_PLUS",
        "trt.HardwareCompatibilityLevel.AMPERE_PLUS_PLUS",
    ),
    "hardware level as a string": (
        "config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS",
        'config.hardware_compatibility_level = "AMPERE_PLUS"',
    ),
    "missing config": (
        "builder.build_serialized_network(network, config)",
        "builder.build_serialized_network(network)",
    ),
}


def test_mypy_catches_planted_tensorrt_api_mistakes(tmp_path: Path) -> None:
    source = MODULE.read_text()
    copies = []
    for index, (label, (good, bad)) in enumerate(MISTAKES.items()):
        assert good in source, f"{label}: the module no longer contains {good!r}; update the test"
        copy = tmp_path / f"planted_{index}.py"
        copy.write_text(source.replace(good, bad, 1))
        copies.append((label, copy))
    # one mypy run for all copies keeps this test quick
    done = mypy_strict(tmp_path)
    assert done.returncode == 1, done.stdout
    for label, copy in copies:
        assert f"{copy.name}:" in done.stdout, f"mypy did not catch: {label}\n{done.stdout}"
