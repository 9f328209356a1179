"""The GPU this builder runs on, asked of the CUDA driver directly.

A TensorRT plan only runs on the compute capability it was built for, so the
builder records it from the device itself. The driver API through ctypes needs
no extra package and also answers "is there a GPU at all".
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
_CC_MINOR = 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR


class NoGpu(RuntimeError):
    """No CUDA driver or no visible device."""


@dataclass(frozen=True)
class Device:
    name: str
    compute_capability: str  #: e.g. "8.6"


def _call(lib: ctypes.CDLL, function: str, *args: object) -> None:
    status = getattr(lib, function)(*args)
    if status != 0:
        raise NoGpu(f"CUDA driver call {function} failed with status {status}")


def first_device() -> Device:
    """Device 0 (the one the Job's ``nvidia.com/gpu: 1`` exposes)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise NoGpu(f"no CUDA driver on this node ({exc})") from exc
    _call(lib, "cuInit", 0)
    count = ctypes.c_int(0)
    _call(lib, "cuDeviceGetCount", ctypes.byref(count))
    if count.value < 1:
        raise NoGpu("the CUDA driver sees no GPU")
    device = ctypes.c_int(0)
    _call(lib, "cuDeviceGet", ctypes.byref(device), 0)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    _call(lib, "cuDeviceGetAttribute", ctypes.byref(major), _CC_MAJOR, device)
    _call(lib, "cuDeviceGetAttribute", ctypes.byref(minor), _CC_MINOR, device)
    name = ctypes.create_string_buffer(256)
    _call(lib, "cuDeviceGetName", name, len(name), device)
    return Device(name=name.value.decode(errors="replace"), compute_capability=f"{major.value}.{minor.value}")
