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

__all__ = ["TimedModel", "TimedStage"]


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


class TimedStage:
    """Stage k of K of a :class:`TimedModel` cut for a pipeline (benchmarks): the stage
    holds its share of the d parameters (contiguous, the first d % K stages one more),
    and its passes take set times, as sleep, so that a pipeline's schedule is measured
    and not the host CPU: a forward pass ``compute_ms / (3K)``, a backward pass twice
    that (the usual 1:2 ratio; a whole step of the unpipelined model is ``compute_ms``),
    DSP's recomputation a forward pass. Activations are ``width`` values per row (the
    first stage reads the data's ``in_features``); their values are not used. The last
    stage's loss is the timed objective ||w||^2 / (2 d_k) of its slice. Same slot API as
    :class:`mpiml.models.stages.Stage`.
    """

    task = "regression"

    def __init__(
        self, model: TimedModel, index: int, n_stages: int, in_features: int, width: int = 16
    ) -> None:
        base, extra = divmod(model.d, n_stages)
        self.size = base + (1 if index < extra else 0)
        self.offset = index * base + min(index, extra)
        self.whole_size = model.d
        self.first, self.last = index == 0, index == n_stages - 1
        self.in_features = in_features if self.first else width
        self.out_features = width
        self.dtype = model.dtype
        self.forward_s = model.compute_s / (3 * n_stages)
        self.backward_s = 2 * self.forward_s
        self._model = model
        self._pending: dict[int, int] = {}
        self._inputs: dict[tuple[int, int], Array] = {}
        self._outs: dict[int, Array] = {}
        self._grads: dict[int, Array] = {}

    def __repr__(self) -> str:
        return f"TimedStage({self.size} params, first={self.first}, last={self.last})"

    def view(self, whole: Array) -> Array:
        return whole[self.offset : self.offset + self.size]

    def _buf(self, table: dict, key: Any, shape: tuple[int, int], xp: Any) -> Array:
        b = table.get(key)
        if b is None or b.shape != shape:
            b = table[key] = xp.zeros(shape, dtype=self.dtype)
        return b

    def forward(
        self, w: Array, a_in: Array, *, slot: int = 0, poll: Callable[[], Any] | None = None
    ) -> Array:
        xp = array_module(w)
        t_end = time.perf_counter() + self.forward_s
        n = a_in.shape[0]
        inp = self._buf(self._inputs, (slot, 0), (n, self.in_features), xp)
        if inp is not a_in:
            xp.copyto(inp, a_in)
        self._pending[slot] = n
        out = self._buf(self._outs, n, (n, self.out_features), xp)
        self._model._busy_until(t_end, poll)
        return out

    def drop(self, slot: int) -> None:
        self._pending.pop(slot, None)

    def stored_input(self, slot: int) -> Array:
        if slot not in self._pending:
            raise ValueError(f"slot {slot} holds no forward pass waiting for its backward ({self!r})")
        return self._inputs[(slot, 0)]

    def recompute(self, w: Array, *, slot: int, poll: Callable[[], Any] | None = None) -> Array:
        return self.forward(w, self.stored_input(slot), slot=slot, poll=poll)

    def _backward(
        self, w: Array, g_w: Array, n: int, scale: float, poll: Callable[[], Any] | None
    ) -> Array | None:
        xp = array_module(w)
        t_end = time.perf_counter() + self.backward_s
        xp.multiply(w, n * scale / self.size, out=g_w)
        self._model._busy_until(t_end, poll)
        if self.first:
            return None
        return self._buf(self._grads, n, (n, self.in_features), xp)

    def backward(
        self, w: Array, g_out: Array, g_w: Array, *, slot: int = 0, poll: Callable[[], Any] | None = None
    ) -> Array | None:
        n = self._pending.pop(slot)
        return self._backward(w, g_w, n, 1.0 / n, poll)

    def loss_backward(
        self,
        w: Array,
        y: Array,
        g_w: Array,
        scale: float | None = None,
        *,
        slot: int = 0,
        poll: Callable[[], Any] | None = None,
    ) -> tuple[float, Array | None]:
        n = self._pending.pop(slot)
        loss = 0.5 * float(w @ w) / self.size
        return loss, self._backward(w, g_w, n, 1.0 / n if scale is None else scale, poll)

    def eval_sums(self, w: Array, logits: Array, y: Array) -> tuple[float, float]:
        return logits.shape[0] * 0.5 * float(w @ w) / self.size, float("nan")
