"""Sources of the stand-in backends the test ground gives the real tritonserver.

The ``tritonserver`` inside ``nvidia-pytriton`` ships the python backend only.
A Triton *python-based backend* is a folder ``<backend-directory>/<name>/``
holding a ``model.py``: Triton then serves every model whose backend (or
platform) resolves to ``<name>`` through the python backend with that file.
Each module here is such a ``model.py``; ``testground.triton.backends_dir()``
copies it into place. They are stand-ins, not the real backends: they exist so
that unchanged model configs load on a machine without the real backend.

=========================  ============================  =====================================
module                     backend folder                stands in for
=========================  ============================  =====================================
``onnxruntime_standin``    ``onnxruntime/model.py``      Triton's ONNX Runtime backend (CPU)
``tensorrt_standin``       ``tensorrt/model.py``         Triton's TensorRT backend, for the
                                                         stand-in plans only
=========================  ============================  =====================================

The TensorRT stand-in serves only the plans of the stand-in TensorRT
(``testground.standin_tensorrt``: a header and the ONNX bytes) by running the ONNX with the
onnxruntime stand-in, and picks the file by the compute capability the node agent gives it
(its docstring says how). A test that serves one says so: no plan's speed or accuracy is
shown, only that the operator's TensorRT configs load and answer.
"""

# backend name (the folder Triton looks up) -> module file in this package
STANDIN_BACKENDS: dict[str, str] = {
    "onnxruntime": "onnxruntime_standin.py",
    "tensorrt": "tensorrt_standin.py",
}
# backend name -> {file name in its folder: module file of the test ground}: what a stand-in
# loads beside its model.py (the stub's import path is not the test ground's)
STANDIN_COMPANIONS: dict[str, dict[str, str]] = {
    "tensorrt": {"standin_plan.py": "standin_tensorrt/__init__.py"},
}
