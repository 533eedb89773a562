"""Which QSGD kernels run: numba-compiled (:mod:`._numba_kernels`) or the numpy reference
(:mod:`._qsgd_numpy`).

Both expose ``gamma_encode``, ``gamma_decode``, ``fixed_encode``, ``fixed_decode`` with
the same signatures and give the same payload bytes and decodes; the numpy module
defines them. The choice is made **lazily**, on the first encode or decode of a QSGD
codec (or the first read of ``mpiml.compress.KERNELS``), never at import: importing
``mpiml.compress``, the protocols or the driver imports no numba and compiles nothing,
so a job without a QSGD codec never touches numba (a read-only install without a
writable numba cache trains uncompressed jobs as usual).

- ``MPIML_COMPRESS_KERNELS=numpy``: the numpy reference;
- ``MPIML_COMPRESS_KERNELS=numba``: numba, and an ImportError if it does not import;
- unset, empty or ``auto``: numba when it works, else numpy.

**Falling back.** With ``auto``, any numba failure (numba does not import; ``cannot
cache function`` on a read-only install without a writable cache; a compile error on
the first call of a kernel) switches this process to the numpy kernels, which give the
same bytes, and prints one line to stderr saying why (once per process). A failed
numba encode is redone by numpy from the same random state, so the payload is what
numpy alone would have sent. A ``ValueError`` from a kernel (a corrupted payload) is
never a numba failure: it propagates.

:func:`warm_up` compiles (or loads from numba's cache) the kernels a codec needs for one
dtype ahead of time; the compressed protocols call it at set-up, once per node first
(:mod:`mpiml.protocols.lengths_first`), so compile time is not a step's time.
:func:`set_kernels` switches at run time (the tests and the benchmark compare both).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

from mpiml.compress import _qsgd_numpy

# KERNELS is served by the module's __getattr__ (chosen on first read)
__all__ = ["KERNELS", "available", "backend", "cached", "run", "set_kernels", "warm_up"]  # noqa: F822

_MODULES: dict[str, ModuleType] = {"numpy": _qsgd_numpy}
_chosen: str | None = None  # None: not chosen yet (see _choose)
_numba_error: str | None = None  # why numba does not work here, once known
_warm: set[tuple[str, str]] = set()  # (kernel family, dtype) compiled or loaded in this process


def __getattr__(name: str) -> Any:
    if name == "KERNELS":  # chosen on first read, not at import
        return _choice()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _want() -> str:
    want = os.environ.get("MPIML_COMPRESS_KERNELS", "auto").strip().lower() or "auto"
    if want not in ("auto", "numba", "numpy"):
        raise ValueError(f"MPIML_COMPRESS_KERNELS must be auto, numba or numpy (got {want!r})")
    return want


def _load_numba() -> ModuleType | None:
    """The numba kernels module, or None (the reason kept in ``_numba_error``). Any
    exception counts: an ImportError, numba's RuntimeError "cannot cache function" when
    no cache folder is writable, an LLVM error."""
    global _numba_error
    if "numba" in _MODULES:
        return _MODULES["numba"]
    if _numba_error is not None:
        return None
    try:
        from mpiml.compress import _numba_kernels
    except Exception as e:  # noqa: BLE001 - every numba failure falls back the same way
        _numba_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return None
    _MODULES["numba"] = _numba_kernels
    return _numba_kernels


def available() -> list[str]:
    """The kernel sets that can run here ("numpy" always); imports numba to find out."""
    _load_numba()
    return sorted(_MODULES)


def _choice() -> str:
    global _chosen
    if _chosen is None:
        want = _want()
        if want == "numpy":
            _chosen = "numpy"
        elif _load_numba() is not None:
            _chosen = "numba"
        elif want == "numba":
            raise ImportError(f"MPIML_COMPRESS_KERNELS=numba, but numba does not work here ({_numba_error})")
        else:
            _fall_back(None)
    assert _chosen is not None
    return _chosen


def _fall_back(exc: BaseException | None) -> None:
    """Run the numpy kernels from now on, saying why on one line (once per process);
    with ``MPIML_COMPRESS_KERNELS=numba`` re-raise instead."""
    global _chosen, _numba_error
    if exc is not None:
        _numba_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if _want() == "numba":
            raise exc
    first = _chosen != "numpy"
    _chosen = "numpy"
    if first:
        print(
            f"mpiml: numba kernels unavailable ({_numba_error}); using the numpy kernels "
            "(same payloads, slower)",
            file=sys.stderr,
            flush=True,
        )


def backend() -> ModuleType:
    """The module whose kernels run now (choosing them on the first call)."""
    return _MODULES[_choice()]


def run(name: str, *args: Any, rng: np.random.Generator | None = None) -> Any:
    """``backend().<name>(*args)`` (with ``rng`` last when given); a numba failure that
    is not a ``ValueError`` falls back to numpy and redoes the call from the same
    random state."""
    mod = backend()
    call_args = (*args, rng) if rng is not None else args
    if mod is _qsgd_numpy:
        return getattr(mod, name)(*call_args)
    state = rng.bit_generator.state if rng is not None else None
    try:
        return getattr(mod, name)(*call_args)
    except (ValueError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - a numba typing/lowering/cache error
        _fall_back(e)
    if rng is not None and state is not None:
        rng.bit_generator.state = state
    return getattr(_qsgd_numpy, name)(*call_args)


def warm_up(family: str, dtype: Any) -> bool:
    """Compile (or load from numba's cache) the ``family`` kernels ("gamma" or "fixed")
    for ``dtype`` input, by one encode and decode of a small vector. True if it did any
    work (numba chosen and not yet warm for that pair in this process); never raises
    for a numba failure (it falls back)."""
    if family not in ("gamma", "fixed"):
        raise ValueError(f"warm_up: family must be 'gamma' or 'fixed' (got {family!r})")
    dt = np.dtype(dtype)
    if _choice() != "numba" or (family, dt.str) in _warm:
        return False
    x = np.linspace(-1.0, 1.0, 33).astype(dt)
    scale = np.array([4.0 / float(np.sqrt(np.dot(x, x)))])
    norms = np.array([float(np.sqrt(np.dot(x, x)))])
    out = np.empty(x.size, dt)
    rng = np.random.default_rng(0)
    if family == "gamma":
        stream = run("gamma_encode", x, scale, 4, x.size, rng=rng)
        run("gamma_decode", stream, x.size, 4, x.size, norms, out)
    else:
        stream = run("fixed_encode", x, scale, 4, x.size, 3, rng=rng)
        run("fixed_decode", stream, x.size, 4, x.size, 3, norms, out)
    _warm.add((family, dt.str))
    return True


def cached(family: str) -> bool:
    """Whether readying the ``family`` kernels is only a load: the numpy kernels run (there
    is nothing to compile), or numba's cache already has a fresh index (same numba, same
    source) for each of the family's compiled functions. False when unsure (then the
    protocols let one rank per node compile first). Reads numba's cache index through its
    internals, guarded: any surprise answers False."""
    if _choice() != "numba":
        return True
    try:
        points = _MODULES["numba"].ENTRY_POINTS[family]
        return all(bool(f._cache._cache_file._load_index()) for f in points)
    except Exception:  # noqa: BLE001 - numba's cache internals moved: assume a compile
        return False


def set_kernels(name: str) -> str:
    """Run ``name``'s kernels from now on ("numba" or "numpy"); returns the previous name."""
    global _chosen
    if name not in available():
        raise ValueError(f"kernels must be one of {available()} (got {name!r})")
    prev, _chosen = _choice(), name
    return prev
