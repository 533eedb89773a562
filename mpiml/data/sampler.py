"""Minibatches from one rank's shard, with a position that checkpoints restore exactly."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array

__all__ = ["ShardSampler"]


class ShardSampler:
    """Shuffles the shard each epoch (per-rank generator) and yields batches of
    ``batch_size`` rows; the last partial batch of an epoch is dropped, so every
    step of every rank has the same batch size (the global batch is exact).

    Batches are gathered into buffers allocated once (``xp.take(..., out=)``).
    ``state()``/``restore()`` capture the epoch, cursor, permutation and generator.
    """

    def __init__(self, x: Array, y: Array, batch_size: int, rng: np.random.Generator) -> None:
        n = int(x.shape[0])
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the shard of {n} rows")
        self.x, self.y, self.batch_size, self.rng = x, y, batch_size, rng
        self.n = n
        self.epoch = 0
        self.cursor = 0
        self.perm = rng.permutation(n)
        xp = _xp_of(x)
        self._idx = xp.empty(batch_size, dtype=np.int64)
        self._xb = xp.empty((batch_size, *x.shape[1:]), dtype=x.dtype)
        self._yb = xp.empty((batch_size,), dtype=y.dtype)

    def next(self) -> tuple[Array, Array]:
        if self.cursor + self.batch_size > self.n:
            self.epoch += 1
            self.cursor = 0
            self.perm = self.rng.permutation(self.n)
        idx = self.perm[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        xp = _xp_of(self.x)
        if xp is np:
            np.take(self.x, idx, axis=0, out=self._xb)
            np.take(self.y, idx, axis=0, out=self._yb)
        else:
            self._idx.set(idx)
            xp.take(self.x, self._idx, axis=0, out=self._xb)
            xp.take(self.y, self._idx, axis=0, out=self._yb)
        return self._xb, self._yb

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "perm": self.perm.copy(),
            "rng": self.rng.bit_generator.state,
        }

    def restore(self, state: dict[str, Any]) -> None:
        perm = np.asarray(state["perm"], dtype=np.int64)
        if perm.shape != (self.n,):
            raise ValueError(
                f"sampler state holds a permutation of {perm.shape[0]} rows, the shard has {self.n}"
            )
        self.epoch, self.cursor, self.perm = int(state["epoch"]), int(state["cursor"]), perm
        self.rng.bit_generator.state = state["rng"]


def _xp_of(x: Array) -> Any:
    from ..backend import array_module

    return array_module(x)
