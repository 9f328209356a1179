"""STAND-IN for Triton's ONNX Runtime backend: a python-based backend running onnxruntime on CPU.

Copied by ``testground.triton.backends_dir()`` to ``<backends>/onnxruntime/model.py``.
The ``tritonserver`` inside ``nvidia-pytriton`` has no ONNX Runtime backend;
with this file in place a model whose config says ``platform: "onnxruntime_onnx"``
(or ``backend: "onnxruntime"``) loads unchanged and Triton reports its platform
as ``onnxruntime_onnx``. It is not the real backend: it honours what the tests
and the operator rely on and nothing more:

* the model file is ``<model>/<version>/<default_model_filename or model.onnx>``;
  when that is a folder (an ONNX model with external data), ``model.onnx`` in it;
* input and output names, datatypes and ``max_batch_size`` come from the config
  Triton passes in ``args["model_config"]``; requests of one execution are run
  as one batch when the model batches;
* ``parameters { key: "intra_op_thread_count" }`` sets onnxruntime's threads,
  as it does for the real backend.

Everything else the real backend does (GPU execution providers, TensorRT
acceleration, ``cc_model_filenames``, warm-up ...) is ignored.

The STAND-IN TensorRT backend (``tensorrt_standin``) loads this file and runs its
sessions through :class:`TritonPythonModel`, giving the model bytes from a stand-in plan
(``_model_source``).

Runs inside Triton's python backend stub; ``triton_python_backend_utils`` is
importable only there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


def _model_file(args: dict[str, str], config: dict[str, Any]) -> Path:
    filename = config.get("default_model_filename") or "model.onnx"
    path = Path(args["model_repository"]) / args["model_version"] / filename
    return path / "model.onnx" if path.is_dir() else path


def _session_options(config: dict[str, Any]) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    threads = config.get("parameters", {}).get("intra_op_thread_count", {}).get("string_value")
    if threads:
        options.intra_op_num_threads = int(threads)
    return options


class TritonPythonModel:
    """One onnxruntime CPU session per model instance (STAND-IN, see the module docstring)."""

    def initialize(self, args: dict[str, str]) -> None:
        config: dict[str, Any] = json.loads(args["model_config"])
        self._batching = int(config.get("max_batch_size", 0)) > 0
        self._inputs = [tensor["name"] for tensor in config["input"]]
        self._outputs = {
            tensor["name"]: pb_utils.triton_string_to_numpy(tensor["data_type"])
            for tensor in config["output"]
        }
        self._session = onnxruntime.InferenceSession(
            self._model_source(args, config),
            sess_options=_session_options(config),
            providers=["CPUExecutionProvider"],
        )

    def _model_source(self, args: dict[str, str], config: dict[str, Any]) -> str | bytes:
        """What onnxruntime loads: a file's path, or the model's bytes."""
        return str(_model_file(args, config))

    def execute(self, requests: list[Any]) -> list[Any]:
        if not self._batching or len(requests) == 1:
            return [self._run([request]) for request in requests]
        try:
            return self._run_batched(requests)
        except Exception as error:  # every request must get an answer
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))) for _ in requests]

    def _run(self, requests: list[Any]) -> Any:
        try:
            return self._run_batched(requests)[0]
        except Exception as error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))

    def _run_batched(self, requests: list[Any]) -> list[Any]:
        feeds: dict[str, np.ndarray] = {}
        for name in self._inputs:
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy() for request in requests]
            feeds[name] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        results = self._session.run(list(self._outputs), feeds)
        # Give each request back its own rows of the batch.
        sizes = [len(pb_utils.get_input_tensor_by_name(r, self._inputs[0]).as_numpy()) for r in requests]
        bounds = np.cumsum(sizes)[:-1]
        per_output = [np.split(result, bounds) for result in results]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, pieces[index].astype(dtype, copy=False))
                    for (name, dtype), pieces in zip(self._outputs.items(), per_output, strict=True)
                ]
            )
            for index in range(len(requests))
        ]

    def finalize(self) -> None:
        del self._session
