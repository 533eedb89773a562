"""``sgd`` and ``qsgd``: synchronous minibatch SGD, gradients averaged every step.

x_{t+1} = x_t - alpha * (1/n) sum_i g_i(x_t), with g_i the gradient of rank i's own
minibatch of ``data.batch_size`` rows: the update of serial SGD on the global batch
of ``batch_size * n`` rows (any optimizer in place of the plain step). In MixML's
terms, M_t is the averaging matrix (1/n) 1 1^T applied to the updates.

``qsgd`` (Alistarh et al.; the "QSGD" baseline of Quantized-PR-SGD (Wu et al., arXiv:2004.09125) §6)
sends every rank's gradient quantized, Q_s(g_i) by eqs. (2)-(3) with the §6.1 Elias
code, through :class:`mpiml.protocols.CompressedAllReduce`, and steps with the mean
of the decoded gradients: x_{t+1} = x_t - alpha (1/n) sum_i Q_s(g_i). It is ``sgd``
with ``compression.codec`` defaulting to qsgd; ``sgd`` with any other codec
compresses its gradients the same way (with ``compression.error_feedback``, EF-SGD).
"""

from __future__ import annotations

from .base import Algorithm, Context, register
from .replica import Replica

__all__ = ["AllReduceSGD", "QSGD"]


@register
class AllReduceSGD(Algorithm, Replica):
    name = "sgd"
    compressible = True

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        # op="sum" on gradients already scaled by 1/(batch * n), n the replicas: the sum
        # is the global batch's mean gradient, with no extra pass over the parameters
        self.scale = 1.0 / (self.data.sampler.batch_size * self.replicas)
        self.allreduce = self.averager("sum")

    def step(self, t: int) -> float:
        loss = self.local_gradient(t, self.scale)
        g = self.allreduce.run(self.grad, t)
        self.apply(t, g)
        return loss


@register
class QSGD(AllReduceSGD):
    """Quantized gradients every step (compression.codec 'auto' is qsgd)."""

    name = "qsgd"
    codec = "qsgd"
    plain = "sgd"
