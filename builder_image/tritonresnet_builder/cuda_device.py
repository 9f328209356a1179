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


class DeviceSession:
    """Device 0's primary context, a stream and the device memory allocated through it.

    What running a plan needs beyond TensorRT (which takes device addresses and a
    stream handle, and allocates nothing for the caller), from the driver API as
    :func:`first_device` does. Memory is freed and the context released on exit.
    """

    def __init__(self) -> None:
        try:
            self._lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise NoGpu(f"no CUDA driver on this node ({exc})") from exc
        self._device = ctypes.c_int(0)
        self._context = ctypes.c_void_p()
        self._stream = ctypes.c_void_p()
        self._allocations: list[int] = []

    def __enter__(self) -> DeviceSession:
        _call(self._lib, "cuInit", 0)
        _call(self._lib, "cuDeviceGet", ctypes.byref(self._device), 0)
        _call(self._lib, "cuDevicePrimaryCtxRetain", ctypes.byref(self._context), self._device)
        _call(self._lib, "cuCtxSetCurrent", self._context)
        _call(self._lib, "cuStreamCreate", ctypes.byref(self._stream), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        for pointer in self._allocations:
            self._lib.cuMemFree_v2(ctypes.c_uint64(pointer))
        self._lib.cuStreamDestroy_v2(self._stream)
        self._lib.cuDevicePrimaryCtxRelease_v2(self._device)

    @property
    def stream(self) -> int:
        """The stream's handle, as TensorRT's ``execute_async_v3`` takes it."""
        return int(self._stream.value or 0)

    def allocate(self, size: int) -> int:
        pointer = ctypes.c_uint64(0)
        _call(self._lib, "cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(max(size, 1)))
        self._allocations.append(pointer.value)
        return pointer.value

    def to_device(self, pointer: int, host: memoryview) -> None:
        buffer = (ctypes.c_char * host.nbytes).from_buffer_copy(host)
        _call(self._lib, "cuMemcpyHtoD_v2", ctypes.c_uint64(pointer), buffer, ctypes.c_size_t(host.nbytes))

    def to_host(self, host: memoryview, pointer: int) -> None:
        """Copy into ``host`` (a writable buffer of the right size) from ``pointer``."""
        buffer = (ctypes.c_char * host.nbytes).from_buffer(host)
        _call(self._lib, "cuMemcpyDtoH_v2", buffer, ctypes.c_uint64(pointer), ctypes.c_size_t(host.nbytes))

    def synchronize(self) -> None:
        _call(self._lib, "cuStreamSynchronize", self._stream)
