"""The array backend: numpy on the CPU, cupy on a GPU, one code path.

``xp`` is always taken from the array (:func:`array_module`), never imported at
module top, so cupy stays optional. MPI sees either the array itself (numpy, or
cupy with a CUDA-aware MPI, after a stream sync) or a reused host staging buffer
(:class:`Staging`): nothing in a step allocates what the last step could keep.

CUDA-awareness cannot be detected reliably across MPI libraries (mpi4jax makes
the same choice), so it is opt-in: ``MPIML_CUDA_AWARE=1`` or the job's
``backend.cuda_aware = true``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray

__all__ = [
    "Array",
    "Staging",
    "array_module",
    "as_xp",
    "axpy",
    "cupy_available",
    "cuda_aware_from_env",
    "get_xp",
    "is_device_array",
    "to_host",
]


def cupy_available() -> bool:
    """True when cupy imports and sees at least one GPU."""
    try:
        import cupy  # noqa: F401

        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False


def get_xp(device: str) -> Any:
    """The array module for ``device`` ("cpu" -> numpy, "gpu" -> cupy)."""
    if device == "cpu":
        return np
    if device == "gpu":
        if not cupy_available():
            raise ValueError("backend.device = 'gpu' needs cupy and a visible GPU (pip install '.[gpu]')")
        import cupy

        return cupy
    raise ValueError(f"backend.device must be 'cpu' or 'gpu' (got {device!r})")


def array_module(x: Array) -> Any:
    """numpy or cupy, whichever owns ``x``."""
    if isinstance(x, np.ndarray):
        return np
    mod = type(x).__module__.split(".")[0]
    if mod == "cupy":
        import cupy

        return cupy
    return np


def is_device_array(x: Array) -> bool:
    return not isinstance(x, np.ndarray) and hasattr(x, "__cuda_array_interface__")


def to_host(x: Array) -> np.ndarray:
    """A numpy view or copy of ``x`` (copy only for device arrays)."""
    if isinstance(x, np.ndarray):
        return x
    return x.get()


def as_xp(xp: Any, a: np.ndarray) -> Array:
    """Host array ``a`` as an array of ``xp``: itself for numpy, a device copy for cupy."""
    return a if xp is np else xp.asarray(a)


def axpy(a: float, x: Array, y: Array, tmp: Array) -> None:
    """y += a x in place. numpy float32/float64: one BLAS ``?axpy`` pass (its rounding,
    possibly a fused multiply-add); otherwise (cupy, other dtypes) x a into the
    preallocated ``tmp``, then added."""
    if isinstance(y, np.ndarray) and y.dtype in (np.float32, np.float64) and y.flags.c_contiguous:
        from scipy.linalg import blas

        (blas.saxpy if y.dtype == np.float32 else blas.daxpy)(x, y, a=a)
        return
    array_module(y).multiply(x, a, out=tmp)
    y += tmp


def cuda_aware_from_env() -> bool:
    return os.environ.get("MPIML_CUDA_AWARE", "0").lower() in ("1", "true", "yes")


def _sync(x: Array) -> None:
    """Wait for the current stream before MPI touches ``x`` (device arrays only)."""
    if is_device_array(x):
        import cupy

        cupy.cuda.get_current_stream().synchronize()


class Staging:
    """Turns arrays into MPI buffers, staging device arrays through reused host memory.

    One instance per protocol. ``send_view(x, key)`` returns what MPI should read;
    ``recv_view(x, key)`` what MPI should write, and ``finish_recv(x, key)`` copies a
    staged receive back to the device. Host buffers are allocated once per ``key``
    (and grown, never shrunk).
    """

    def __init__(self, cuda_aware: bool | None = None) -> None:
        self.cuda_aware = cuda_aware_from_env() if cuda_aware is None else cuda_aware
        self._host: dict[str, np.ndarray] = {}

    def _buffer(self, key: str, like: Array) -> np.ndarray:
        buf = self._host.get(key)
        nbytes = like.size * like.dtype.itemsize
        if buf is None or buf.nbytes < nbytes:
            buf = _pinned_empty(nbytes)
            self._host[key] = buf
        return buf[:nbytes].view(like.dtype).reshape(like.shape)

    def send_view(self, x: Array, key: str) -> Array:
        if isinstance(x, np.ndarray):
            return x
        _sync(x)
        if self.cuda_aware:
            return x
        host = self._buffer(key, x)
        x.get(out=host)
        return host

    def recv_view(self, x: Array, key: str) -> Array:
        if isinstance(x, np.ndarray):
            return x
        _sync(x)
        if self.cuda_aware:
            return x
        return self._buffer(key, x)

    def finish_recv(self, x: Array, key: str) -> None:
        if isinstance(x, np.ndarray) or self.cuda_aware:
            return
        x.set(self._host[key][: x.nbytes].view(x.dtype).reshape(x.shape))


def _pinned_empty(nbytes: int) -> np.ndarray:
    """Page-locked host memory when cupy is there (faster device copies), else plain."""
    try:
        import cupy

        mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
        return np.frombuffer(mem, dtype=np.uint8, count=nbytes)
    except Exception:
        return np.empty(nbytes, dtype=np.uint8)
