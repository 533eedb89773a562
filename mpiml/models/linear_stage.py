"""A :class:`~mpiml.models.linear.LinearRegression` as the one stage of a K = 1 pipeline
(the slot interface of :mod:`mpiml.models.stages`)."""

from __future__ import annotations

from typing import Any

from ..backend import Array, array_module
from .linear import LinearRegression
from .slots import Poll, SlotStage

__all__ = ["LinearStage"]


class LinearStage(SlotStage):
    """The whole of a :class:`LinearRegression` as the one stage of a K = 1 pipeline.

    Same interface as :class:`Stage`; the output is the prediction ``x w + b`` of shape
    (rows,), and ``loss_backward`` is ``LinearRegression.loss_and_grad`` operation for
    operation (loss ``1/(2n) ||x w + b - y||^2``).
    """

    task = "regression"
    index = 0
    n_stages = 1
    offset = 0
    first = True
    last = True
    out_features = 1

    def __init__(self, model: LinearRegression) -> None:
        if not isinstance(model, LinearRegression):
            raise TypeError(f"LinearStage needs a LinearRegression (got {type(model).__name__})")
        super().__init__()
        self.layers = range(0, 1)
        self.dtype = model.dtype
        self.layout = model.layout
        self.size = model.size
        self.whole_size = model.size
        self.in_features = model.d
        self._acts: dict[tuple[int, int, int], tuple[Array, Array]] = {}

    def __repr__(self) -> str:
        return f"LinearStage(0/1: {self.in_features} features, {self.size} parameters)"

    def forward(self, w: Array, a_in: Array, *, slot: int = 0, poll: Poll = None) -> Array:
        """Predictions ``x w + b``, shape (rows,), in the slot's buffer (see :meth:`Stage.forward`)."""
        xp, key = self._begin(w, a_in, slot)
        v = self.layout.views(w)
        bufs = self._acts.get(key)
        if bufs is None:
            n = a_in.shape[0]
            bufs = self._acts[key] = (
                xp.empty((n, self.in_features), dtype=self.dtype),
                xp.empty(n, dtype=self.dtype),
            )
        inp, r = bufs
        xp.copyto(inp, a_in)
        xp.matmul(inp, v["w"], out=r)
        r += v["b"][0]
        if poll is not None:
            poll()
        self._pending[key[0]] = key
        return r

    def backward(self, w: Array, g_out: Array, g_w: Array, *, slot: int = 0, poll: Poll = None) -> None:
        """``g_w`` <- gradient for the error gradient ``g_out`` (rows,) of the predictions."""
        key = self._take(slot, "backward")
        if g_out.shape != (key[1],):
            raise ValueError(f"g_out must have shape ({key[1]},) (got {g_out.shape})")
        self._backprop(array_module(w), key, g_out, g_w, poll)

    def loss_backward(
        self,
        w: Array,
        y: Array,
        g_w: Array,
        scale: float | None = None,
        *,
        slot: int = 0,
        poll: Poll = None,
    ) -> tuple[float, None]:
        """Mean squared-error loss / 2 and its gradient, as ``LinearRegression.loss_and_grad``."""
        key = self._take(slot, "loss_backward")
        n = key[1]
        r = self._acts[key][1]
        r -= y
        loss = 0.5 * float(r @ r) / n
        r *= 1.0 / n if scale is None else scale  # scale the n residuals, not the d gradients
        self._backprop(array_module(w), key, r, g_w, poll)
        return loss, None

    def _backprop(self, xp: Any, key: tuple[int, int, int], r: Array, g_w: Array, poll: Poll) -> None:
        g = self.layout.views(g_w)
        xp.matmul(self._acts[key][0].T, r, out=g["w"])
        g["b"][0] = r.sum()
        if poll is not None:
            poll()
