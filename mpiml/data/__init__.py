"""Data sets, per-rank sharding and minibatch sampling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError
from .sampler import ShardSampler
from .sharding import dirichlet_shards, iid_shards
from .sources import Dataset, load_digits, load_hdf5, make_synthetic, seed_rng, standardize

__all__ = [
    "Dataset",
    "RankData",
    "ShardSampler",
    "build_data",
    "dirichlet_shards",
    "iid_shards",
    "load_digits",
    "load_hdf5",
    "make_synthetic",
    "seed_rng",
]


class RankData:
    """What one rank trains and evaluates on: its shard of the training rows, its
    sampler, and its slice of the test set (slice ``shard`` of ``n_shards``)."""

    def __init__(
        self,
        ds: Dataset,
        rows: np.ndarray | None,
        shard: int,
        n_shards: int,
        batch_size: int,
        seed: int,
        dtype: str,
        xp: Any,
    ) -> None:
        self.n_classes = ds.n_classes
        self.n_features = ds.n_features
        self.name = ds.name
        x = ds.x_train if rows is None else ds.x_train[rows]
        y = ds.y_train if rows is None else ds.y_train[rows]
        ydt = np.int64 if ds.n_classes else np.dtype(dtype)
        self.x_train = xp.asarray(x.astype(dtype))
        self.y_train = xp.asarray(y.astype(ydt))
        if ds.presharded:
            xte, yte = ds.x_test, ds.y_test
        else:  # contiguous slice of the shared test set
            lo, hi = _slice(len(ds.x_test), shard, n_shards)
            xte, yte = ds.x_test[lo:hi], ds.y_test[lo:hi]
        self.x_test = xp.asarray(xte.astype(dtype))
        self.y_test = xp.asarray(yte.astype(ydt))
        self.n_test_local = int(len(xte))
        self.sampler = ShardSampler(self.x_train, self.y_train, batch_size, seed_rng(seed, 1, shard))


def _check_range(ds: Dataset, dtype: str, standardized: bool, path: str) -> None:
    """Values that the model's dtype cannot hold (after standardization, features are
    O(1) and only the targets matter)."""
    top = float(np.finfo(np.dtype(dtype)).max)
    parts = [] if standardized else [("/x", ds.x_train), ("/x", ds.x_test)]
    if not ds.n_classes:
        parts += [("/y", ds.y_train), ("/y", ds.y_test)]
    for name, a in parts:
        if a.size and float(np.abs(a).max()) > top:
            where = (
                f"data.path: {name} in {path!r}"
                if path and ds.name != "synthetic"
                else f"{name} of {ds.name!r}"
            )
            raise ConfigError(
                f"{where} holds values beyond model.dtype = {dtype!r} (largest {float(np.abs(a).max()):.3g}); "
                "use model.dtype = 'float64' or rescale the data"
            )


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _slice(n: int, part: int, parts: int) -> tuple[int, int]:
    base, extra = divmod(n, parts)
    lo = part * base + min(part, extra)
    return lo, lo + base + (1 if part < extra else 0)


def build_data(
    cfg: Any, shard: int, n_shards: int, xp: Any = np, *, ranks_of: Mapping[int, Sequence[int]] | None = None
) -> RankData:
    """Load, split, standardize and wrap data shard ``shard`` of ``n_shards`` (the
    shard a rank's role reads, :attr:`mpiml.layout.Role.shard`; in data parallelism
    shard = rank, n_shards = ranks). Its sampler is seeded by (run.seed, shard).

    ``ranks_of`` maps a shard to the ranks that read it, for messages (default: shard s
    is read by rank s, as in data parallelism).

    Pure per rank (no MPI); every rank computes the same split, and so reaches the same
    verdict on every shard. Raises ConfigError naming the field when the data cannot
    serve this job (missing or damaged file, a shard with no rows or smaller than one
    batch, values beyond model.dtype, ...).
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"build_data: shard must be in [0, {n_shards}) (got {shard})")
    rank, size = shard, n_shards
    d = cfg.data
    seed = cfg.run.seed
    if d.name == "digits":
        ds = load_digits(d.test_fraction, seed)
    elif d.name == "hdf5":
        ds = load_hdf5(d.path, d.test_fraction, seed)
    elif d.name == "synthetic":
        ds = make_synthetic(d.samples, d.features, d.noise, d.test_fraction, seed, rank, size)
    else:  # pragma: no cover - schema forbids it
        raise ConfigError(f"data.name {d.name!r} is unknown")
    if ds.n_classes == 0 and cfg.model.name != "linear":
        raise ConfigError(
            f"model.name must be 'linear' for regression targets in {ds.name!r} (got {cfg.model.name!r})"
        )
    if ds.n_classes and cfg.model.name == "linear":
        raise ConfigError(
            f"model.name = 'linear' needs real-valued targets; {ds.name!r} has class labels (use 'softmax' or 'mlp')"
        )
    _check_range(ds, cfg.model.dtype, bool(d.standardize and not ds.presharded), d.path)
    if d.standardize and not ds.presharded:
        standardize(ds)
    rows = None
    if not ds.presharded:
        n = len(ds.x_train)
        if n < size:
            raise ConfigError(
                f"run.world_size: {size} data shards but only {_rows(n)} for training in {ds.name!r}"
            )
        if d.partition == "dirichlet":
            if not ds.n_classes:
                raise ConfigError("data.partition = 'dirichlet' needs class labels")
            shards = dirichlet_shards(ds.y_train, size, d.alpha, seed)
        else:
            shards = iid_shards(n, size, seed)
        for i, part in enumerate(shards):
            if len(part) == 0:
                readers = list(ranks_of[i]) if ranks_of is not None else [i]
                who = ", ".join(str(r) for r in readers) or "none"
                raise ConfigError(
                    f"data.alpha = {d.alpha} leaves shard {i} (rank{'s' if len(readers) > 1 else ''} {who}) "
                    "with no training rows; raise data.alpha or change run.seed"
                )
        rows = shards[rank]
        smallest = min(len(s) for s in shards)
        if d.batch_size > smallest:
            raise ConfigError(
                f"data.batch_size = {d.batch_size} is larger than the smallest shard ({_rows(smallest)} of "
                f"{n} over {size} shard{'s' if size > 1 else ''}, partition {d.partition!r}); allowed: 1..{smallest}"
                + (" (or raise data.alpha)" if d.partition == "dirichlet" else "")
            )
    else:
        n_rows = len(ds.x_train)
        if d.batch_size > n_rows:
            raise ConfigError(
                f"data.batch_size = {d.batch_size} is larger than this rank's shard ({_rows(n_rows)}); "
                f"allowed: 1..{n_rows}"
            )
    return RankData(ds, rows, shard, n_shards, d.batch_size, seed, cfg.model.dtype, xp)
