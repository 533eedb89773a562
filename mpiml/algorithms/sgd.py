"""``sgd``: synchronous minibatch SGD, gradients averaged by AllReduce every step.

x_{t+1} = x_t - alpha * (1/n) sum_i g_i(x_t), with g_i the gradient of rank i's own
minibatch of ``data.batch_size`` rows: the update of serial SGD on the global batch
of ``batch_size * n`` rows (any optimizer in place of the plain step). In MixML's
terms, M_t is the averaging matrix (1/n) 1 1^T applied to the updates.
"""

from __future__ import annotations

from ..protocols import AllReduce
from .base import Algorithm, Context, register

__all__ = ["AllReduceSGD"]


@register
class AllReduceSGD(Algorithm):
    name = "sgd"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # op="sum" on gradients already scaled by 1/(batch * n): the sum is the global
        # batch's mean gradient, with no extra pass over the parameters to divide by n
        self.scale = 1.0 / (ctx.cfg.data.batch_size * ctx.comm.Get_size())
        self.allreduce = AllReduce(
            ctx.comm, self.x.size, self.x.dtype, ctx.xp, op="sum", trace=ctx.trace, cuda_aware=ctx.cuda_aware
        )

    def step(self, t: int) -> float:
        loss = self.local_gradient(t, self.scale)
        g = self.allreduce.run(self.grad, t)
        self.apply(t, g)
        return loss
