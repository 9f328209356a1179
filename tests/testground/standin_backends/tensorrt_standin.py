"""STAND-IN for Triton's TensorRT backend: serves the test ground's stand-in plans with onnxruntime on CPU.

Copied by ``testground.triton.backends_dir()`` to ``<backends>/tensorrt/model.py``, with
``testground/standin_tensorrt/__init__.py`` beside it as ``standin_plan.py`` (the plan's
layout and the GPU variable have their home there). Triton resolves ``platform:
"tensorrt_plan"`` to the backend ``tensorrt``, so a config the builder publishes for a
TensorRT version loads unchanged. It is not TensorRT and never runs a real plan: a stand-in
plan (``testground.standin_tensorrt``) is a header followed by the ONNX bytes it was
"built" from, and this backend runs those bytes through the onnxruntime stand-in
(``<backends>/onnxruntime/model.py``, loaded by its file).

Which file it loads, as the real backend picks one (``cc_model_filenames``):

* the GPU's compute capability: there is no GPU, so the stand-in reads it from
  ``TESTGROUND_STANDIN_GPU_COMPUTE_CAPABILITY`` (``standin_plan.GPU_CC_ENV``), which the
  node agent sets for a Triton pod from its node's ``nvidia.com/gpu.compute.major`` and
  ``.minor`` labels; unset, the load fails, as TensorRT's does without a GPU;
* ``cc_model_filenames[<capability>]`` when the config maps it, else
  ``default_model_filename``, else ``model.plan``; in ``<model>/<version>/``;
* a file that is not a stand-in plan fails the load (a real plan cannot run here).

Runs inside Triton's python backend stub; ``triton_python_backend_utils`` is importable only there.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

_HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loaded by file: the stub's import path is not the test ground's.
standin_plan = _load("testground_standin_plan", _HERE / "standin_plan.py")
onnxruntime_standin = _load("testground_onnxruntime_standin", _HERE.parent / "onnxruntime" / "model.py")

DEFAULT_PLAN_FILENAME = "model.plan"


def plan_filename(config: dict[str, Any], compute_capability: str) -> str:
    """The file the real backend would load on a GPU of ``compute_capability`` (``8.6``)."""
    by_capability: dict[str, str] = config.get("cc_model_filenames") or {}
    if compute_capability in by_capability:
        return by_capability[compute_capability]
    return str(config.get("default_model_filename") or DEFAULT_PLAN_FILENAME)


class TritonPythonModel(onnxruntime_standin.TritonPythonModel):  # type: ignore[misc, name-defined]
    """STAND-IN (see the module docstring): the onnxruntime stand-in, fed from a stand-in plan."""

    def _model_source(self, args: dict[str, str], config: dict[str, Any]) -> str | bytes:
        capability = os.environ.get(standin_plan.GPU_CC_ENV, "")
        if not capability:
            raise RuntimeError(
                f"no GPU (stand-in TensorRT backend): {standin_plan.GPU_CC_ENV} is not set, so no "
                "compute capability picks a plan from cc_model_filenames"
            )
        path = Path(args["model_repository"]) / args["model_version"] / plan_filename(config, capability)
        onnx_bytes: bytes = standin_plan.onnx_of_standin_plan(path.read_bytes())
        return onnx_bytes
