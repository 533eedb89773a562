"""Model stages: forward and backward of one block of layers on its slice of the flat vector.

A pipeline (GPipe, 1F1B, DSP) trains a model cut into K consecutive blocks, one per rank.
In the notation of DSP (Xu, Huo & Huang, "On the Acceleration of Deep Learning Model
Parallelism with Staleness", CVPR 2020, arXiv:1909.02625, §2) the parameters
are ``x = (x_0, ..., x_{K-1})``; block k computes ``h_{k+1} = f_k(h_k; x_k)`` from its input
``h_k`` (``h_0`` is the data), and backpropagation, Eq. (2), maps the error gradient
``G_{h_{k+1}}`` of its output to the gradient ``G_{x_k}`` of its parameters and the error
gradient ``G_{h_k}`` of its input. :class:`Stage` is ``f_k`` for a block of an :class:`MLP`:
``forward`` is ``h_k -> h_{k+1}``, ``backward`` is Eq. (2), and the last stage's
``loss_backward`` starts it from ``G_{h_K}`` of the softmax cross-entropy.

A stage's parameters are one contiguous slice of the whole model's flat vector (an MLP packs
``W0, b0, W1, b1, ...``)::

    w_stage = w_whole[stage.offset : stage.offset + stage.size]   # == stage.view(w_whole)

so the whole model is initialised once from the run seed and each rank takes its slice, and
a pipeline with no staleness computes exactly (bit for bit) what ``MLP.loss_and_grad`` does:
every stage repeats mlp.py's operations in mlp.py's order.

Several micro-batches can be in flight on one stage (GPipe runs all forward passes before
the backward passes; DSP's queues hold ``1 + m_k`` inputs, §3.3). Each one has a *slot*:
``forward(..., slot=j)`` keeps a copy of its input and its activations in slot j's buffers,
and ``backward(..., slot=j)`` uses them. DSP's recomputation, Eq. (5), is ``forward`` again on
the same slot with the newer parameters, then ``backward``. Buffers are allocated on first
use per (slot, batch size) and reused after, as in mlp.py.

:func:`mpiml.models.partition.split` cuts a model into stages, at given layer indices or
balanced by parameter count or by measured per-layer costs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array, array_module
from .flat import ParamLayout
from .linear_stage import LinearStage
from .mlp import MLP, logit_sums
from .slots import Poll, SlotStage

__all__ = ["LinearStage", "Poll", "Stage"]  # LinearStage and Poll re-exported: every model's stages


class Stage(SlotStage):
    """Layers ``start .. stop-1`` of an :class:`MLP`, on their own flat parameter slice.

    Parameters
    ----------
    model : MLP
        The whole model; the stage copies its sizes, activation and dtype.
    start, stop : int
        The block's layers are ``range(start, stop)``, ``0 <= start < stop <= n_layers``.
    index, n_stages : int
        This stage's position k in the pipeline and the number K of stages.

    Attributes
    ----------
    layout : ParamLayout
        ``W{i}`` of shape (fan_in, fan_out) and ``b{i}`` of shape (fan_out,) for the block's
        layers i, named and ordered as in the whole model's layout.
    size : int
        Number of parameters of the stage (``layout.size``).
    offset : int
        Where the stage's slice starts in the whole model's flat vector.
    in_features, out_features : int
        Widths of the stage's input ``h_k`` and output ``h_{k+1}`` (the logits on the last
        stage).
    first, last : bool
        Whether the stage holds layer 0 (it reads the data) or the output layer (it has the
        loss).

    Notes
    -----
    Arrays are numpy or cupy (``xp`` comes from ``w``), of the model's dtype, with the batch
    along axis 0. The stage keeps per slot, for the last forward pass of each batch size: a
    copy of its input (the sampler and the pipeline's queues reuse their buffers, so the
    caller's array may change before the backward pass), the output of each layer, and the
    returned input gradient. Backward scratch is shared by the slots.
    """

    task = "classification"

    def __init__(self, model: MLP, start: int, stop: int, index: int = 0, n_stages: int = 1) -> None:
        if not isinstance(model, MLP):
            raise TypeError(f"Stage needs an MLP (got {type(model).__name__})")
        if not 0 <= start < stop <= model.n_layers:
            raise ValueError(
                f"a stage holds layers start..stop-1 with 0 <= start < stop <= {model.n_layers} "
                f"(got start={start}, stop={stop})"
            )
        if not 0 <= index < n_stages:
            raise ValueError(f"index must be in 0..n_stages-1 (got index={index}, n_stages={n_stages})")
        super().__init__()
        self.index = index
        self.n_stages = n_stages
        self.layers = range(start, stop)
        self.sizes = list(model.sizes)
        self.activation = model.activation
        self.dtype = model.dtype
        self.whole_size = model.size
        self.layout = ParamLayout(
            model.layout.names[2 * start : 2 * stop], model.layout.shapes[2 * start : 2 * stop]
        )
        self.size = self.layout.size
        self.offset = model.layout.offsets[2 * start]
        self.in_features = model.sizes[start]
        self.out_features = model.sizes[stop]
        self.first = start == 0
        self.last = stop == model.n_layers
        self._output_layer = model.n_layers - 1  # the one layer with no activation
        # (slot, rows, id(xp)) -> (input copy, [output of each layer])
        self._acts: dict[tuple[int, int, int], tuple[Array, list[Array]]] = {}
        # (slot, rows, id(xp)) -> gradient w.r.t. the input, returned by backward
        self._grad_in: dict[tuple[int, int, int], Array] = {}
        # (rows, id(xp)) -> [delta of the output, then one buffer per inner layer input]
        self._scratch: dict[tuple[int, int], list[Array]] = {}
        self._row_index: dict[tuple[int, int], Array] = {}

    def __repr__(self) -> str:
        return (
            f"Stage({self.index}/{self.n_stages}: layers {self.layers.start}..{self.layers.stop - 1}, "
            f"{self.in_features}->{self.out_features}, {self.size} parameters at offset {self.offset})"
        )

    # -- buffers -------------------------------------------------------------------------

    def _forward_buffers(self, xp: Any, key: tuple[int, int, int]) -> tuple[Array, list[Array]]:
        bufs = self._acts.get(key)
        if bufs is None:
            n = key[1]
            inp = xp.empty((n, self.in_features), dtype=self.dtype)
            outs = [xp.empty((n, self.sizes[i + 1]), dtype=self.dtype) for i in self.layers]
            bufs = self._acts[key] = (inp, outs)
        return bufs

    def _scratch_buffers(self, xp: Any, n: int) -> list[Array]:
        key = (n, id(xp))
        bufs = self._scratch.get(key)
        if bufs is None:
            # [0]: delta of the output layer (unused on the last stage: the loss gives it)
            # [j]: delta of layer start + j - 1, i.e. gradient at the input of layer start + j
            bufs = [xp.empty((n, self.out_features), dtype=self.dtype)]
            bufs += [xp.empty((n, self.sizes[i]), dtype=self.dtype) for i in self.layers[1:]]
            self._scratch[key] = bufs
        return bufs

    def _grad_in_buffer(self, xp: Any, key: tuple[int, int, int]) -> Array:
        buf = self._grad_in.get(key)
        if buf is None:
            buf = self._grad_in[key] = xp.empty((key[1], self.in_features), dtype=self.dtype)
        return buf

    def _rows(self, xp: Any, n: int) -> Array:
        key = (n, id(xp))
        rows = self._row_index.get(key)
        if rows is None:
            rows = self._row_index[key] = xp.arange(n)
        return rows

    # -- passes --------------------------------------------------------------------------

    def forward(self, w: Array, a_in: Array, *, slot: int = 0, poll: Poll = None) -> Array:
        """Output ``h_{k+1}`` of the block for input ``h_k`` (DSP Eq. (2) notation).

        Parameters
        ----------
        w : Array, shape (size,), model dtype
            The stage's parameters (``stage.view(w_whole)`` or a copy of it).
        a_in : Array, shape (rows, in_features), model dtype
            The data (first stage) or the previous stage's output. Copied into the slot.
        slot : int
            Micro-batch slot whose saved input and activations this pass overwrites.
        poll : callable, optional
            Called after each layer.

        Returns
        -------
        Array, shape (rows, out_features), model dtype
            The slot's buffer holding the activations of the block's last layer (the logits
            on the last stage). Valid until the next forward pass on this slot with this
            batch size; ``loss_backward`` overwrites the logits with softmax probabilities.
        """
        xp, key = self._begin(w, a_in, slot)
        v = self.layout.views(w)
        inp, outs = self._forward_buffers(xp, key)
        xp.copyto(inp, a_in)
        h = inp
        # mlp.py's forward, layer for layer
        for j, i in enumerate(self.layers):
            out = outs[j]
            xp.matmul(h, v[f"W{i}"], out=out)
            out += v[f"b{i}"]
            if i < self._output_layer:
                if self.activation == "relu":
                    xp.maximum(out, 0, out=out)
                else:
                    xp.tanh(out, out=out)
            h = out
            if poll is not None:
                poll()
        self._pending[key[0]] = key
        return h

    def backward(
        self, w: Array, g_out: Array, g_w: Array, *, slot: int = 0, poll: Poll = None
    ) -> Array | None:
        """Backpropagate the error gradient ``G_{h_{k+1}}`` through the block (DSP Eq. (2)).

        Parameters
        ----------
        w : Array, shape (size,), model dtype
            The stage's parameters (the same as the forward pass's for plain backprop).
        g_out : Array, shape (rows, out_features), model dtype
            Gradient of the loss w.r.t. this stage's output: w.r.t. the activations
            (after the nonlinearity) on inner stages, w.r.t. the logits on the last stage.
        g_w : Array, shape (size,)
            Preallocated; receives the gradient ``G_{x_k}`` of the stage's parameters.
        slot : int
            The micro-batch slot of the matching forward pass (consumed by this call).
        poll : callable, optional
            Called after each layer.

        Returns
        -------
        Array of shape (rows, in_features), or None
            ``G_{h_k}``, the gradient w.r.t. the stage's input: the slot's buffer, valid until
            the next backward pass on this slot with this batch size. None on the first stage.
        """
        key = self._take(slot, "backward")
        n = key[1]
        if g_out.shape != (n, self.out_features) or g_out.dtype != self.dtype:
            raise ValueError(
                f"g_out must be {self.dtype} of shape ({n}, {self.out_features}) "
                f"(got {g_out.dtype} {g_out.shape}) in {self!r}"
            )
        xp = array_module(w)
        if self.last:
            delta = g_out  # logits have no nonlinearity
        else:
            # chain through this stage's last activation: what mlp.py does to ``back``
            # right after the next layer's ``delta @ W.T`` (same operands, same order)
            delta = self._scratch_buffers(xp, n)[0]
            h = self._acts[key][1][-1]
            if self.activation == "relu":
                xp.multiply(g_out, h > 0, out=delta)
            else:
                xp.multiply(g_out, 1 - h * h, out=delta)
        return self._backprop(xp, w, key, delta, g_w, poll)

    def loss_backward(
        self,
        w: Array,
        y: Array,
        g_w: Array,
        scale: float | None = None,
        *,
        slot: int = 0,
        poll: Poll = None,
    ) -> tuple[float, Array | None]:
        """Softmax cross-entropy of the slot's logits, then :meth:`backward` (last stage only).

        ``MLP.loss_and_grad`` split at the logits: the softmax is taken in place on the
        logits that the slot's forward pass left, and ``g_w <- scale * sum of per-row
        gradients``.

        Parameters
        ----------
        w : Array, shape (size,), model dtype
            The stage's parameters.
        y : Array, shape (rows,), integer
            Class labels of the micro-batch.
        g_w : Array, shape (size,)
            Preallocated; receives the stage's parameter gradient.
        scale : float, optional
            As in ``MLP.loss_and_grad``: 1/rows by default (the mean's gradient); a
            data-parallel caller passes 1/(rows * replicas).
        slot, poll
            As in :meth:`backward`.

        Returns
        -------
        (float, Array of shape (rows, in_features) or None)
            The batch's mean cross-entropy, and the gradient w.r.t. the stage's input (None
            when the stage is also the first, K = 1).
        """
        if not self.last:
            raise ValueError(f"loss_backward is for the last stage, which holds the output layer ({self!r})")
        key = self._take(slot, "loss_backward")
        n = key[1]
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) (got {y.shape})")
        xp = array_module(w)
        logits = self._acts[key][1][-1]
        # mlp.py's loss_and_grad, operation for operation: softmax in place, shifted by the
        # row max to avoid overflow
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
        return loss, self._backprop(xp, w, key, p, g_w, poll)

    def eval_sums(self, w: Array, logits: Array, y: Array) -> tuple[float, float]:
        """(sum of cross-entropies, correct rows) of the last stage's ``logits`` (its
        forward output, rows x classes) against labels ``y``: ``MLP.eval_sums`` split at
        the logits (``w`` unused)."""
        return logit_sums(logits, y)

    def _backprop(
        self, xp: Any, w: Array, key: tuple[int, int, int], delta: Array, g_w: Array, poll: Poll
    ) -> Array | None:
        """mlp.py's backward loop over the block's layers; ``delta`` is the output layer's."""
        inp, outs = self._acts[key]
        back_bufs = self._scratch_buffers(xp, key[1])
        g = self.layout.views(g_w)
        v = self.layout.views(w)
        grad_in = None
        for j in reversed(range(len(self.layers))):
            i = self.layers[j]
            h_in = inp if j == 0 else outs[j - 1]
            xp.matmul(h_in.T, delta, out=g[f"W{i}"])
            delta.sum(axis=0, out=g[f"b{i}"])
            if j > 0:
                back = back_bufs[j]
                xp.matmul(delta, v[f"W{i}"].T, out=back)
                if self.activation == "relu":
                    xp.multiply(back, h_in > 0, out=back)
                else:
                    back *= 1 - h_in * h_in
                delta = back
            elif not self.first:
                # G_{h_k}: the previous stage applies its own activation's derivative
                grad_in = self._grad_in_buffer(xp, key)
                xp.matmul(delta, v[f"W{i}"].T, out=grad_in)
            if poll is not None:
                poll()
        return grad_in
