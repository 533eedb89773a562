"""Multi-layer perceptron with softmax cross-entropy, manual backprop, flat state.

Softmax regression is the MLP with no hidden layer. Parameters of layer l are
``W{l}`` (fan_in x fan_out) and ``b{l}``, packed in one flat array (ParamLayout).
Works on numpy and cupy arrays alike: ``xp`` comes from the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import Array, array_module
from .flat import ParamLayout

__all__ = ["MLP", "logit_sums"]


class MLP:
    """``sizes = [d_in, h_1, ..., h_k, n_classes]``; ``activation`` is "relu" or "tanh".

    ``loss_and_grad(w, x, y, grad)`` returns the mean cross-entropy of the batch and
    writes its gradient into the preallocated flat ``grad`` (same shape as ``w``).
    Activation and backprop buffers are kept per batch size, so a step allocates
    nothing parameter- or activation-sized after the first one (only batch-sized
    temporaries of the softmax and the relu mask remain).
    """

    task = "classification"

    def __init__(self, sizes: list[int], activation: str = "relu", dtype: str = "float32") -> None:
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must be at least [d_in, n_classes] with entries >= 1 (got {sizes})")
        if activation not in ("relu", "tanh"):
            raise ValueError(f"activation must be 'relu' or 'tanh' (got {activation!r})")
        self.sizes = list(sizes)
        self.activation = activation
        self.dtype = np.dtype(dtype)
        names: list[str] = []
        shapes: list[tuple[int, ...]] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            names += [f"W{i}", f"b{i}"]
            shapes += [(a, b), (b,)]
        self.layout = ParamLayout(tuple(names), tuple(shapes))
        self.n_layers = len(sizes) - 1
        self._cache: dict[tuple[int, int], list[Array]] = {}
        self._back: dict[tuple[int, int], list[Array]] = {}
        self._row_index: dict[tuple[int, int], Array] = {}

    @property
    def size(self) -> int:
        return self.layout.size

    def init(self, rng: np.random.Generator, xp: Any = np, scale: float = 1.0) -> Array:
        """He (relu) or Glorot (tanh) normal weights, zero biases; drawn on the host."""
        w = np.zeros(self.size, dtype=self.dtype)
        v = self.layout.views(w)
        for i in range(self.n_layers):
            fan_in, fan_out = self.sizes[i], self.sizes[i + 1]
            std = np.sqrt(2.0 / fan_in) if self.activation == "relu" else np.sqrt(2.0 / (fan_in + fan_out))
            v[f"W{i}"][...] = rng.standard_normal((fan_in, fan_out)) * (std * scale)
        return xp.asarray(w)

    def _buffers(self, w: Array, n: int) -> list[Array]:
        key = (n, id(array_module(w)))
        bufs = self._cache.get(key)
        if bufs is None:
            xp = array_module(w)
            bufs = [xp.empty((n, s), dtype=self.dtype) for s in self.sizes[1:]]
            self._cache[key] = bufs
        return bufs

    def _back_buffers(self, w: Array, n: int) -> list[Array]:
        key = (n, id(array_module(w)))
        bufs = self._back.get(key)
        if bufs is None:
            xp = array_module(w)
            bufs = [xp.empty((n, s), dtype=self.dtype) for s in self.sizes[1:-1]]
            self._back[key] = bufs
        return bufs

    def _rows(self, xp: Any, n: int) -> Array:
        key = (n, id(xp))
        rows = self._row_index.get(key)
        if rows is None:
            rows = self._row_index[key] = xp.arange(n)
        return rows

    def forward(self, w: Array, x: Array, poll: Callable[[], Any] | None = None) -> list[Array]:
        """Activations of every layer; the last entry holds the logits. ``poll`` (if
        given) is called after each layer: the caller's communication in flight (DaSGD's
        average) progresses during compute."""
        xp = array_module(w)
        v = self.layout.views(w)
        acts = self._buffers(w, x.shape[0])
        h = x
        for i in range(self.n_layers):
            out = acts[i]
            xp.matmul(h, v[f"W{i}"], out=out)
            out += v[f"b{i}"]
            if i < self.n_layers - 1:
                if self.activation == "relu":
                    xp.maximum(out, 0, out=out)
                else:
                    xp.tanh(out, out=out)
            h = out
            if poll is not None:
                poll()
        return acts

    def predict(self, w: Array, x: Array) -> Array:
        """Predicted class per row of ``x``."""
        return self.forward(w, x)[-1].argmax(axis=1)

    def loss_and_grad(
        self,
        w: Array,
        x: Array,
        y: Array,
        grad: Array,
        scale: float | None = None,
        poll: Callable[[], Any] | None = None,
    ) -> float:
        """Mean cross-entropy of the batch; ``grad`` <- scale * sum of per-row gradients.

        ``scale`` defaults to 1/rows (the mean's gradient). Data-parallel callers pass
        1/(rows * ranks), so that a plain sum across ranks is the global batch's mean
        gradient and no extra pass over the parameters is needed to divide by n.
        ``poll`` is called between layers of both passes (see :meth:`forward`).
        """
        xp = array_module(w)
        n = x.shape[0]
        acts = self.forward(w, x, poll)
        logits = acts[-1]
        # softmax in place, shifted by the row max to avoid overflow
        logits -= logits.max(axis=1, keepdims=True)
        xp.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        p = logits
        rows = self._rows(xp, n)
        loss = -float(xp.log(xp.maximum(p[rows, y], np.finfo(self.dtype).tiny)).mean())
        # dL/dlogits = scale * (p - onehot(y)), scale = 1/n for the mean loss
        p[rows, y] -= 1
        if scale is None:
            p /= n
        else:
            p *= scale
        g = self.layout.views(grad)
        v = self.layout.views(w)
        delta = p
        back_bufs = self._back_buffers(w, n)
        for i in reversed(range(self.n_layers)):
            h_in = x if i == 0 else acts[i - 1]
            xp.matmul(h_in.T, delta, out=g[f"W{i}"])
            delta.sum(axis=0, out=g[f"b{i}"])
            if i > 0:
                back = back_bufs[i - 1]
                xp.matmul(delta, v[f"W{i}"].T, out=back)
                if self.activation == "relu":
                    xp.multiply(back, h_in > 0, out=back)
                else:
                    back *= 1 - h_in * h_in
                delta = back
            if poll is not None:
                poll()
        return loss

    def eval_sums(self, w: Array, x: Array, y: Array) -> tuple[float, float]:
        """(sum of cross-entropies, number correct) over the rows of ``x``: sums, so
        that ranks holding slices of a test set can add them up."""
        if x.shape[0] == 0:
            return 0.0, 0.0
        return logit_sums(self.forward(w, x)[-1], y)


def logit_sums(logits: Array, y: Array) -> tuple[float, float]:
    """(sum of softmax cross-entropies, number of rows whose argmax is the label) of
    ``logits`` (rows x classes) against integer labels ``y`` (rows,); numpy or cupy."""
    xp = array_module(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    rows = xp.arange(logits.shape[0])
    return -float(logp[rows, y].sum()), float((z.argmax(axis=1) == y).sum())
