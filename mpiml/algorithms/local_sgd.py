"""``local_sgd``: parallel restarted SGD (K-AVG): tau local steps, then the models
are averaged by AllReduce.

Every rank runs its optimizer on its own minibatches; after every ``tau``-th local
update (steps t with (t + 1) mod tau = 0) the ranks replace their models by the
average (1/M) sum_j x^(j) (papers/quantized-pr-sgd.txt §3.1, the loop of its
Algorithm 1 without quantization; the DaSGD paper's "Local SGD", eq. 5 for its
cost). Optimizer state (momentum, Adam moments) stays local: only the parameters
are averaged (position-form momentum state moves with them, see
``Algorithm.replace_params``). With tau = 1 and plain SGD it is minibatch SGD (the average of
x - eta g_j is x - eta times the average gradient), up to rounding.
"""

from __future__ import annotations

from ..protocols import AllReduce
from .base import Algorithm, Context, register

__all__ = ["LocalSGD"]


@register
class LocalSGD(Algorithm):
    name = "local_sgd"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tau: int = ctx.cfg.algorithm.tau
        self.average = AllReduce(
            ctx.comm, self.x.size, self.x.dtype, ctx.xp, op="mean", trace=ctx.trace, cuda_aware=ctx.cuda_aware
        )

    def step(self, t: int) -> float:
        loss = self.local_gradient(t)
        self.apply(t, self.grad)
        if (t + 1) % self.tau == 0:
            self.replace_params(lambda: self._average(t))
        return loss

    def _average(self, t: int) -> None:
        self.x[...] = self.average.run(self.x, t)
