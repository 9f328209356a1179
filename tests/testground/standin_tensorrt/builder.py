"""``python -m testground.standin_tensorrt.builder``: the real builder with a STAND-IN TensorRT and GPU.

See the package docstring. The CUDA driver answer is the emulated node's GPU, from
the environment the node agent sets; everything after it is the builder's own code.
"""

from __future__ import annotations

import os
import sys

from testground.standin_tensorrt import GPU_CC_ENV, GPU_NAME_ENV, MODULE_DIR


def main() -> int:
    from tritonresnet_builder import cuda_device

    device = cuda_device.Device(
        name=f"{os.environ[GPU_NAME_ENV]} (test ground stand-in)",
        compute_capability=os.environ[GPU_CC_ENV],
    )
    cuda_device.first_device = lambda: device  # the builder asks through the module attribute
    sys.path.insert(0, str(MODULE_DIR))  # `import tensorrt` finds the stand-in package
    from tritonresnet_builder.cli import main as builder_main

    return builder_main()


if __name__ == "__main__":
    sys.exit(main())
