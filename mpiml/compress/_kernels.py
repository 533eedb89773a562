"""Which QSGD kernels run: numba-compiled (:mod:`._numba_kernels`) or the numpy reference
(:mod:`._qsgd_numpy`).

Both expose ``gamma_encode``, ``gamma_decode``, ``fixed_encode``, ``fixed_decode`` with
the same signatures and give the same payload bytes and decodes; the numpy module
defines them. The choice, made once at import and readable as
``mpiml.compress.KERNELS``:

- ``MPIML_COMPRESS_KERNELS=numpy``: the numpy reference;
- ``MPIML_COMPRESS_KERNELS=numba``: numba, and an ImportError if it does not import;
- unset, empty or ``auto``: numba when it imports, else numpy, silently (numba is an
  install requirement, so numpy runs only where numba has no wheel).

:func:`set_kernels` switches at run time (the tests and the benchmark compare both).
"""

from __future__ import annotations

import os
from types import ModuleType

from mpiml.compress import _qsgd_numpy

__all__ = ["KERNELS", "available", "backend", "set_kernels"]

_MODULES: dict[str, ModuleType] = {"numpy": _qsgd_numpy}


def _load_numba() -> ModuleType | None:
    try:
        from mpiml.compress import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


def available() -> list[str]:
    """The kernel sets that can run here ("numpy" always)."""
    if "numba" not in _MODULES:
        mod = _load_numba()
        if mod is not None:
            _MODULES["numba"] = mod
    return sorted(_MODULES)


def _choose() -> str:
    want = os.environ.get("MPIML_COMPRESS_KERNELS", "auto").strip().lower() or "auto"
    if want not in ("auto", "numba", "numpy"):
        raise ValueError(f"MPIML_COMPRESS_KERNELS must be auto, numba or numpy (got {want!r})")
    if want == "numpy":
        return "numpy"
    if "numba" in available():
        return "numba"
    if want == "numba":
        raise ImportError("MPIML_COMPRESS_KERNELS=numba, but numba does not import (pip install numba)")
    return "numpy"


KERNELS = _choose()


def backend() -> ModuleType:
    """The module whose kernels run now."""
    return _MODULES[KERNELS]


def set_kernels(name: str) -> str:
    """Run ``name``'s kernels from now on ("numba" or "numpy"); returns the previous name."""
    global KERNELS
    if name not in available():
        raise ValueError(f"kernels must be one of {available()} (got {name!r})")
    prev, KERNELS = KERNELS, name
    return prev
