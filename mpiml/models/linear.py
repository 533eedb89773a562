"""Least-squares linear regression on a flat state: the model of synthetic workloads.

Loss f(w) = 1/(2n) * ||X w + b - y||^2 with gradient X^T r / n, r = X w + b - y.
Its size d is set by the data, so it serves as a workload of any size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array, array_module
from .flat import ParamLayout

__all__ = ["LinearRegression"]


class LinearRegression:
    """``w`` holds d weights then one bias; targets are real numbers."""

    task = "regression"

    def __init__(self, d: int, dtype: str = "float32") -> None:
        if d < 1:
            raise ValueError(f"d must be >= 1 (got {d})")
        self.d = d
        self.dtype = np.dtype(dtype)
        self.layout = ParamLayout(("w", "b"), ((d,), (1,)))
        self._r: dict[tuple[int, int], Array] = {}

    @property
    def size(self) -> int:
        return self.layout.size

    def init(self, rng: np.random.Generator, xp: Any = np, scale: float = 1.0) -> Array:
        """Zero weights: least squares is convex, and zero is the usual start."""
        return xp.zeros(self.size, dtype=self.dtype)

    def _residual(self, w: Array, x: Array, y: Array) -> Array:
        xp = array_module(w)
        key = (x.shape[0], id(xp))
        r = self._r.get(key)
        if r is None:
            r = self._r[key] = xp.empty(x.shape[0], dtype=self.dtype)
        v = self.layout.views(w)
        xp.matmul(x, v["w"], out=r)
        r += v["b"][0]
        r -= y
        return r

    def loss_and_grad(
        self,
        w: Array,
        x: Array,
        y: Array,
        grad: Array,
        scale: float | None = None,
        poll: Callable[[], Any] | None = None,
    ) -> float:
        """Mean loss of the batch; ``grad`` <- scale * sum of per-row gradients
        (``scale`` = 1/rows by default: the mean's gradient). ``poll`` is called once,
        between the two matrix products (the only chunk boundary)."""
        xp = array_module(w)
        n = x.shape[0]
        r = self._residual(w, x, y)
        loss = 0.5 * float(r @ r) / n
        r *= 1.0 / n if scale is None else scale  # scale the n residuals, not the d gradients
        if poll is not None:
            poll()
        g = self.layout.views(grad)
        xp.matmul(x.T, r, out=g["w"])
        g["b"][0] = r.sum()
        return loss

    def eval_sums(self, w: Array, x: Array, y: Array) -> tuple[float, float]:
        """(sum of 1/2 squared errors, nan): regression has no accuracy."""
        if x.shape[0] == 0:
            return 0.0, float("nan")
        r = self._residual(w, x, y)
        return 0.5 * float(r @ r), float("nan")
