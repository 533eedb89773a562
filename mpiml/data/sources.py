"""Data sets: the UCI digits (shipped in the package), HDF5 files with /x and /y, synthetic regression.

A source returns the rows this rank trains on *before* sharding (digits, HDF5) or
already generated for this rank (synthetic), plus its slice of the test set.
Everything is derived from the run seed, so every rank sees the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["Dataset", "load_digits", "load_hdf5", "make_synthetic", "standardize"]


@dataclass
class Dataset:
    """Train and test rows; ``n_classes`` is 0 for regression targets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str
    presharded: bool = False  # True when x_train already holds only this rank's shard

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def seed_rng(seed: int, purpose: int, rank: int = -1) -> np.random.Generator:
    """A generator for (run seed, purpose, rank); rank -1 means "the same on every rank"."""
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, rank + 1]))


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    perm = seed_rng(seed, 10).permutation(len(x))
    n_test = max(1, int(round(test_fraction * len(x))))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def standardize(ds: Dataset) -> None:
    """Zero mean, unit variance per feature, with the training rows' statistics."""
    mean = ds.x_train.mean(axis=0)
    std = ds.x_train.std(axis=0)
    std[std == 0] = 1.0
    ds.x_train = (ds.x_train - mean) / std
    ds.x_test = (ds.x_test - mean) / std


def load_digits(test_fraction: float, seed: int) -> Dataset:
    """UCI handwritten digits (1797 images of 8x8, 10 classes), shipped in the package
    (:mod:`mpiml.data.digits`; the same arrays as scikit-learn's ``load_digits``)."""
    from .digits import digits_arrays

    x, y = digits_arrays()
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    return Dataset(xtr, ytr, xte, yte, 10, "digits")


def load_hdf5(path: str, test_fraction: float, seed: int) -> Dataset:
    """An HDF5 file with ``/x`` (n x d numbers) and ``/y`` (n integer labels or n reals)."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.path {path!r} does not exist")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ConfigError(f"data.path {path!r} is not a readable HDF5 file ({exc})") from None
    with f:
        for name in ("x", "y"):
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise ConfigError(f"data.path {path!r} has no dataset /{name} (it needs /x and /y)")
        try:
            x = np.asarray(f["x"][()], dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError(f"/x in {path!r} must hold numbers (it holds {f['x'].dtype})") from None
        y_raw = np.asarray(f["y"][()])
        if not (np.issubdtype(y_raw.dtype, np.integer) or np.issubdtype(y_raw.dtype, np.floating)):
            raise ConfigError(
                f"/y in {path!r} must hold integer labels or real numbers (it holds {y_raw.dtype})"
            )
    if x.ndim != 2:
        raise ConfigError(f"/x in {path!r} must be 2-D (samples x features), got shape {x.shape}")
    if y_raw.shape != (x.shape[0],):
        raise ConfigError(f"/y in {path!r} must have shape ({x.shape[0]},) to match /x, got {y_raw.shape}")
    if not np.isfinite(x).all():
        raise ConfigError(f"/x in {path!r} holds NaN or Inf values")
    if x.shape[0] < 2:
        raise ConfigError(f"{path!r} needs at least 2 samples for a train/test split (has {x.shape[0]})")
    if np.issubdtype(y_raw.dtype, np.integer):
        if y_raw.min() < 0:
            raise ConfigError(f"/y in {path!r} holds negative class labels")
        y = y_raw.astype(np.int64)
        n_classes = int(y.max()) + 1
    else:
        y = y_raw.astype(np.float64)
        n_classes = 0
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    return Dataset(xtr, ytr, xte, yte, max(n_classes, 2) if n_classes else 0, p.name)


def make_synthetic(
    samples: int, d: int, noise: float, test_fraction: float, seed: int, rank: int, size: int
) -> Dataset:
    """Least-squares data y = x @ w_star + noise, generated shard by shard.

    Rows x ~ N(0, I/d) (so ||x|| is about 1 whatever d is, and one learning rate
    suits every size) and w_star ~ N(0, I) from the run seed (the same on every rank); rank r
    generates only its own share of the samples and of the test rows, so d can be
    as large as memory allows without any rank holding the whole set.
    """
    w_star = seed_rng(seed, 20).standard_normal(d)
    n_test = max(size, int(round(test_fraction * samples)))
    n_train = samples - n_test
    if n_train < size:
        raise ConfigError(f"data.samples = {samples} leaves {n_train} training rows for {size} ranks")

    def rows(total: int, purpose: int) -> tuple[np.ndarray, np.ndarray]:
        count = total // size + (1 if rank < total % size else 0)
        rng = seed_rng(seed, purpose, rank)
        x = rng.standard_normal((count, d)) / np.sqrt(d)
        y = x @ w_star + noise * rng.standard_normal(count)
        return x, y

    xtr, ytr = rows(n_train, 21)
    xte, yte = rows(n_test, 22)
    return Dataset(xtr, ytr, xte, yte, 0, "synthetic", presharded=True)
