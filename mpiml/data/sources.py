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
from .hdf5 import read_hdf5

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
    """Zero mean, unit variance per feature, with the training rows' statistics.
    ConfigError (naming data.standardize) when they overflow float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = ds.x_train.mean(axis=0)
        std = ds.x_train.std(axis=0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ConfigError(
            f"data.standardize = true overflows on {ds.name!r} (its values are too large to square); "
            "rescale the data or set data.standardize = false"
        )
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
    """An HDF5 file with ``/x`` (n x d numbers) and ``/y`` (n integer labels or n reals),
    checked by :func:`mpiml.data.hdf5.read_hdf5` (ConfigError naming data.path and the
    dataset for anything wrong with it)."""
    x, y, n_classes = read_hdf5(path)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    return Dataset(xtr, ytr, xte, yte, n_classes, Path(path).name)


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
        raise ConfigError(
            f"data.samples = {samples} leaves {n_train} training rows for {size} rank{'s' if size > 1 else ''}"
        )

    def rows(total: int, purpose: int) -> tuple[np.ndarray, np.ndarray]:
        count = total // size + (1 if rank < total % size else 0)
        rng = seed_rng(seed, purpose, rank)
        x = rng.standard_normal((count, d)) / np.sqrt(d)
        y = x @ w_star + noise * rng.standard_normal(count)
        return x, y

    xtr, ytr = rows(n_train, 21)
    xte, yte = rows(n_test, 22)
    return Dataset(xtr, ytr, xte, yte, 0, "synthetic", presharded=True)
