"""A synthetic workload of any size with a set compute time per step (benchmarks).

``TimedModel(d, compute_ms)`` has d parameters and the loss f(w) = ||w||^2 / (2 d);
each ``loss_and_grad`` writes the gradient (an O(d) pass, like a real backward pass
writes d numbers) and takes ``compute_ms`` milliseconds in all, in chunks of
``chunk_ms``, calling the caller's ``poll`` between chunks (so split-phase communication can
be tested while it "computes"). ``compute = "sleep"`` leaves the host CPU idle, as
while an accelerator runs the forward and backward pass; ``"spin"`` keeps one host
core busy with small matrix products. The data a step samples is ignored: the model
stands in for a network of the same size (ResNet-50: d = 25.5M) with a set t_p.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array, array_module

__all__ = ["TimedModel"]


class TimedModel:
    task = "regression"

    def __init__(
        self, d: int, compute_ms: float, compute: str = "sleep", dtype: str = "float32", chunk_ms: float = 5.0
    ) -> None:
        if d < 1:
            raise ValueError(f"model.params must be >= 1 (got {d})")
        if compute_ms < 0:
            raise ValueError(f"model.compute_ms must be >= 0 (got {compute_ms})")
        if compute not in ("sleep", "spin"):
            raise ValueError(f"model.compute must be 'sleep' or 'spin' (got {compute!r})")
        self.d = d
        self.compute_s = compute_ms / 1000.0
        self.compute = compute
        self.chunk_s = chunk_ms / 1000.0
        self.dtype = np.dtype(dtype)
        self._spin_a = np.ones((128, 128), dtype=np.float32)
        self._spin_out = np.empty((128, 128), dtype=np.float32)

    @property
    def size(self) -> int:
        return self.d

    def init(self, rng: np.random.Generator, xp: Any = np, scale: float = 1.0) -> Array:
        return xp.full(self.d, scale, dtype=self.dtype)

    def _busy_until(self, t_end: float, poll: Callable[[], Any] | None) -> None:
        while True:
            now = time.perf_counter()
            if now >= t_end:
                return
            if poll is not None:
                poll()
            until = min(t_end, now + self.chunk_s)
            if self.compute == "sleep":
                time.sleep(max(0.0, until - time.perf_counter()))
            else:
                while time.perf_counter() < until:
                    np.matmul(self._spin_a, self._spin_a, out=self._spin_out)

    def loss_and_grad(
        self,
        w: Array,
        x: Array,
        y: Array,
        grad: Array,
        scale: float | None = None,
        poll: Callable[[], Any] | None = None,
    ) -> float:
        """Loss ||w||^2/(2d); ``grad`` <- w/d times (rows * scale) (1 by default);
        ``poll`` is called between chunks of the compute time."""
        t_end = time.perf_counter() + self.compute_s
        xp = array_module(w)
        factor = 1.0 / self.d if scale is None else x.shape[0] * scale / self.d
        xp.multiply(w, factor, out=grad)
        loss = 0.5 * float(w @ w) / self.d
        self._busy_until(t_end, poll)
        return loss

    def eval_sums(self, w: Array, x: Array, y: Array) -> tuple[float, float]:
        """(rows * loss, nan): the test "loss" of a timed workload is its objective."""
        return x.shape[0] * 0.5 * float(w @ w) / self.d, float("nan")
