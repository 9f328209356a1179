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
=========================  ============================  =====================================

There is deliberately no TensorRT backend stand-in: no test claims a plan was served. (The
fleet test's builds use a stand-in TensorRT, ``testground.standin_tensorrt``, whose files
say they are not plans; no backend here loads them.)
"""

# backend name (the folder Triton looks up) -> module file in this package
STANDIN_BACKENDS: dict[str, str] = {
    "onnxruntime": "onnxruntime_standin.py",
}
