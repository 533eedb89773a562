"""``sgd`` and ``qsgd``: synchronous minibatch SGD, gradients averaged every step.

x_{t+1} = x_t - alpha * (1/n) sum_i g_i(x_t), with g_i the gradient of rank i's own
minibatch of ``data.batch_size`` rows: the update of serial SGD on the global batch
of ``batch_size * n`` rows (any optimizer in place of the plain step). In MixML's
terms, M_t is the averaging matrix (1/n) 1 1^T applied to the updates.

``qsgd`` (Alistarh et al.; the "QSGD" baseline of papers/quantized-pr-sgd.txt §6)
sends every rank's gradient quantized, Q_s(g_i) by eqs. (2)-(3) with the §6.1 Elias
code, through :class:`mpiml.protocols.CompressedAllReduce`, and steps with the mean
of the decoded gradients: x_{t+1} = x_t - alpha (1/n) sum_i Q_s(g_i). It is ``sgd``
with ``compression.codec`` defaulting to qsgd; ``sgd`` with any other codec
compresses its gradients the same way (with ``compression.error_feedback``, EF-SGD).
"""

from __future__ import annotations

import numpy as np

from ..protocols import AllReduce, CompressedAllReduce
from .base import Algorithm, Context, register
from .compression import compression_for

__all__ = ["AllReduceSGD", "QSGD"]


@register
class AllReduceSGD(Algorithm):
    name = "sgd"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # op="sum" on gradients already scaled by 1/(batch * n): the sum is the global
        # batch's mean gradient, with no extra pass over the parameters to divide by n
        self.scale = 1.0 / (ctx.cfg.data.batch_size * ctx.comm.Get_size())
        self.compression = compression_for(ctx.cfg, ctx.comm.Get_rank())
        self.allreduce: AllReduce | CompressedAllReduce
        if self.compression is not None:
            self.allreduce = CompressedAllReduce(
                ctx.comm, self.x.size, self.x.dtype, self.compression.codec, ctx.xp, op="sum", trace=ctx.trace
            )
        else:
            self.allreduce = AllReduce(
                ctx.comm,
                self.x.size,
                self.x.dtype,
                ctx.xp,
                op="sum",
                trace=ctx.trace,
                cuda_aware=ctx.cuda_aware,
            )

    def step(self, t: int) -> float:
        loss = self.local_gradient(t, self.scale)
        if self.compression is not None:
            self.compression.reseed(t)
        g = self.allreduce.run(self.grad, t)
        self.apply(t, g)
        return loss

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        if self.compression is not None:
            out.update(self.compression.state_arrays())
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        if self.compression is not None:
            self.compression.load_state(arrays, self.x)


@register
class QSGD(AllReduceSGD):
    """Quantized gradients every step (compression.codec 'auto' is qsgd)."""

    name = "qsgd"
