"""The CUDA runtime through ``cuda-python`` (no torch): one checked call helper, device facts, buffers.

Used by the TensorRT backend (streams, device buffers) and by the engine manifest
(the GPU a plan is built for). ``cuda-python``
moved its runtime module in 12.6; :func:`cudart` finds either.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.runtime.base import EngineError


def cudart() -> Any:
    """cuda-python's runtime API module (new and old import paths); ImportError if not installed."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime  # cuda-python < 12.6
    return runtime


def check(result: Any, what: str) -> Any:
    """cuda-python calls return ``(err, *values)``: raise :class:`EngineError` on an error, return the values."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise EngineError(f"CUDA {what} failed: {err}")
    return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)


def device_facts() -> tuple[str, str]:
    """(name, compute capability "major.minor") of the current CUDA device."""
    rt = cudart()
    device = check(rt.cudaGetDevice(), "cudaGetDevice")
    prop = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return name.strip("\x00 "), f"{prop.major}.{prop.minor}"


def gpu_count() -> int:
    """CUDA devices visible here (0 when the driver reports none or an error)."""
    err, count = cudart().cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0


class DeviceBuffer:
    """A fixed-size CUDA device allocation with copies on a stream (synchronous without one)."""

    def __init__(self, nbytes: int, stream: Any = None) -> None:
        self.rt = cudart()
        self.nbytes = nbytes
        self.stream = stream
        self.ptr: int = int(check(self.rt.cudaMalloc(nbytes), "cudaMalloc"))

    def upload(self, array: np.ndarray) -> None:
        if array.nbytes > self.nbytes:
            raise EngineError(f"{array.nbytes} bytes do not fit a {self.nbytes}-byte device buffer")
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if self.stream is None:
            check(self.rt.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind), "cudaMemcpy H2D")
        else:
            check(
                self.rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, self.stream),
                "cudaMemcpyAsync H2D",
            )

    def download(self, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(
            self.rt.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes, kind, self.stream),
            "cudaMemcpyAsync D2H",
        )

    def free(self) -> None:
        if self.ptr:
            self.rt.cudaFree(self.ptr)
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory (``cudaMallocHost``), seen as a flat uint8 numpy array.

    Copies between it and the device run asynchronously on a stream; from pageable numpy
    memory the driver would first copy into a staging buffer of its own, synchronously.
    """

    def __init__(self, nbytes: int) -> None:
        import ctypes

        self.rt = cudart()
        self.nbytes = nbytes
        self.ptr: int = int(check(self.rt.cudaMallocHost(nbytes), "cudaMallocHost"))
        self.array = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(self.ptr))

    def view(self, shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
        """The first bytes of the buffer as an array of ``shape`` and ``dtype`` (no copy)."""
        count = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if count > self.nbytes:
            raise EngineError(f"{count} bytes do not fit a {self.nbytes}-byte pinned buffer")
        return self.array[:count].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = np.empty(0, np.uint8)
            self.rt.cudaFreeHost(self.ptr)
            self.ptr = 0
