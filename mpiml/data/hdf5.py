"""HDF5 data files: ``/x`` (samples x features, numbers) and ``/y`` (class labels or reals).

Everything a file can get wrong is a :class:`~mpiml.errors.ConfigError` of one line
that names ``data.path`` and the dataset, raised before training (and, through
:func:`mpiml.comm.agree`, on every rank): a missing or non-HDF5 file, ``/x`` or ``/y``
missing, a dangling soft link, an external link or external or virtual storage (data
that lives in another file: mpiml reads only what the named file holds), a compression
filter this h5py cannot decode, damaged chunks, a null or empty dataspace, wrong shapes,
dtypes that are not real numbers (complex, strings, compounds, booleans), NaN or Inf
(the first bad index is named), and integer labels that cannot be class indices
(negative, or >= :data:`MAX_CLASSES`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["MAX_CLASSES", "DataShape", "first_bad", "hdf5_shape", "read_hdf5"]

MAX_CLASSES = 2**24  # labels are class indices 0 .. MAX_CLASSES - 1 (the output layer has one per class)


@dataclass(frozen=True)
class DataShape:
    """What a data set holds, known before its rows are read: ``rows`` samples of
    ``features`` values, ``classes`` classes (0: real-valued targets), ``itemsize``
    bytes per stored value of /x."""

    rows: int
    features: int
    classes: int
    itemsize: int = 8


def _line(exc: BaseException) -> str:
    """An exception's message on one line (HDF5's can span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def first_bad(a: np.ndarray) -> str:
    """The index of the first NaN or Inf of ``a`` ("row 3" or "row 3, column 1")."""
    at = np.argwhere(~np.isfinite(a))[0]
    return f"row {at[0]}" if a.ndim == 1 else f"row {at[0]}, column {at[1]}"


@contextmanager
def _datasets(path: str) -> Iterator[tuple[Any, Any]]:
    """``/x`` and ``/y`` of the file, with every check that needs no data read."""
    import h5py

    p = Path(path)
    where = f"data.path {path!r}"
    if not p.is_file():
        raise ConfigError(f"{where} does not exist" if not p.exists() else f"{where} is not a file")
    try:
        f = h5py.File(p, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{where} is not a readable HDF5 file ({_line(exc)})") from None
    with f:
        out = []
        for name in ("x", "y"):
            try:
                link = f.get(name, getlink=True)
            except (KeyError, OSError, ValueError, RuntimeError) as exc:  # a damaged object header or B-tree
                raise ConfigError(f"{where} is not a readable HDF5 file ({_line(exc)})") from None
            if link is None:
                raise ConfigError(f"{where} has no dataset /{name} (it needs /x and /y)")
            if isinstance(link, h5py.ExternalLink):
                raise ConfigError(
                    f"data.path: /{name} in {path!r} is an external link to {link.filename}:{link.path}; mpiml reads "
                    "only data stored in the file itself (copy it in, e.g. with h5copy)"
                )
            try:
                ds = f[name]
            except (KeyError, OSError, ValueError, RuntimeError) as exc:
                target = f" to {link.path}" if isinstance(link, h5py.SoftLink) else ""
                raise ConfigError(
                    f"data.path: /{name} in {path!r} is a link{target} that leads nowhere ({_line(exc)})"
                ) from None
            if not isinstance(ds, h5py.Dataset):
                raise ConfigError(
                    f"data.path: /{name} in {path!r} is a group, not a dataset (it needs /x and /y)"
                )
            _check_storage(path, name, ds)
            out.append(ds)
        yield out[0], out[1]


def _check_storage(path: str, name: str, ds: Any) -> None:
    import h5py

    if ds.is_virtual:
        raise ConfigError(
            f"data.path: /{name} in {path!r} is a virtual dataset (its data lives in other files); mpiml reads only "
            "data stored in the file itself"
        )
    if ds.external:
        raise ConfigError(
            f"data.path: /{name} in {path!r} keeps its data in external files ({ds.external[0][0]!r}); mpiml reads only "
            "data stored in the file itself"
        )
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, _, label = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            text = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            raise ConfigError(
                f"data.path: /{name} in {path!r} is compressed with filter {code} ({text or 'unnamed'}), which this h5py "
                "cannot decode (install its plugin, e.g. hdf5plugin, or rewrite the file without it)"
            )
    if ds.shape is None:
        raise ConfigError(f"data.path: /{name} in {path!r} is empty (a null dataspace)")
    kind = ds.dtype.kind
    if kind == "c":
        raise ConfigError(
            f"data.path: /{name} in {path!r} holds complex numbers ({ds.dtype}); mpiml trains on real numbers "
            "(store the real and imaginary parts as separate features)"
        )
    if kind not in "iuf":
        what = "numbers" if name == "x" else "integer class labels or real numbers"
        raise ConfigError(f"data.path: /{name} in {path!r} must hold {what} (it holds {ds.dtype})")


def _shapes(path: str, x: Any, y: Any) -> tuple[int, int]:
    if len(x.shape) != 2:
        raise ConfigError(f"data.path: /x in {path!r} must be 2-D (samples x features), got shape {x.shape}")
    n, d = int(x.shape[0]), int(x.shape[1])
    if y.shape != (n,):
        raise ConfigError(f"data.path: /y in {path!r} must have shape ({n},) to match /x, got {y.shape}")
    if n < 2:
        raise ConfigError(f"data.path: /x in {path!r} holds {n} samples; a train/test split needs at least 2")
    if d < 1:
        raise ConfigError(f"data.path: /x in {path!r} holds no features (shape {x.shape})")
    return n, d


def _read(path: str, name: str, ds: Any) -> np.ndarray:
    from ..budget import node_memory  # (budget imports this module)

    need, free = 8 * int(ds.size), node_memory()  # read, then as float64 or int64
    if need > free:  # a small sparse file can claim 10^10 rows: refuse before allocating
        raise ConfigError(
            f"data.path: /{name} in {path!r} holds {ds.size} values, ~{need / 2**30:.1f} GiB once read; "
            f"this node has {free / 2**30:.1f} GiB free"
        )
    try:
        return np.asarray(ds[()])
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as exc:  # damaged chunks, filters
        raise ConfigError(f"data.path: /{name} in {path!r} cannot be read ({_line(exc)})") from None


def _labels(path: str, y: np.ndarray) -> tuple[np.ndarray, int]:
    """(targets, classes): integer labels checked as class indices, or reals checked finite."""
    if y.dtype.kind in "iu":
        if y.dtype.kind == "i" and (y < 0).any():
            i = int(np.argmax(y < 0))
            raise ConfigError(
                f"data.path: /y in {path!r} holds a negative class label ({y[i]} at row {i}); labels are 0, 1, ..."
            )
        if (y >= MAX_CLASSES).any():
            i = int(np.argmax(y >= MAX_CLASSES))
            raise ConfigError(
                f"data.path: /y in {path!r} holds a label that cannot be a class index ({y[i]} at row {i}); labels "
                f"must be in [0, {MAX_CLASSES - 1}]"
            )
        labels = y.astype(np.int64)
        return labels, max(int(labels.max()) + 1, 2)
    targets = y.astype(np.float64)
    if not np.isfinite(targets).all():
        raise ConfigError(f"data.path: /y in {path!r} holds NaN or Inf (first at {first_bad(targets)})")
    return targets, 0


def hdf5_shape(path: str) -> DataShape:
    """The shape of ``path``'s data, every check but the values' (reads ``/y`` only)."""
    with _datasets(path) as (x, y):
        n, d = _shapes(path, x, y)
        _, classes = _labels(path, _read(path, "y", y))
        return DataShape(n, d, classes, int(x.dtype.itemsize))


def read_hdf5(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    """``(x, y, classes)`` of ``path``: x float64 (n x d), y int64 labels (classes >= 2) or
    float64 targets (classes 0). Raises ConfigError (one line naming data.path and the
    dataset) for anything the module docstring lists."""
    with _datasets(path) as (xds, yds):
        _shapes(path, xds, yds)
        y, classes = _labels(path, _read(path, "y", yds))
        x = _read(path, "x", xds).astype(np.float64)
    if not np.isfinite(x).all():
        raise ConfigError(f"data.path: /x in {path!r} holds NaN or Inf (first at {first_bad(x)})")
    return x, y, classes
