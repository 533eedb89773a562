"""``local_sgd``, ``pr_sgd``, ``qpr_sgd``: tau local steps, then a global average.

``local_sgd`` (K-AVG): after every ``tau``-th local update (steps t with
(t + 1) mod tau = 0) the ranks replace their models by the average (1/M) sum_j x^(j).

``pr_sgd`` and ``qpr_sgd`` are Algorithm 1 of papers/quantized-pr-sgd.txt (PR-SGD and
Quantized-PR-SGD, K = ``algorithm.tau``): every rank holds the last global model
x~_n (the *anchor*), starts each period from it (line 2: x_{n;0} = x~_n), takes K
local steps, and then

    g_n^(m) = Quantize(x_{n;0} - x_{n;K})          (line 7; pr_sgd: no quantization)
    Delta   = (1/M) sum_j g_n^(j)                    (lines 8-9, rank order)
    x~_{n+1} = x~_n - Delta                          (line 10), and x <- x~_{n+1}

``qpr_sgd`` sends g through :class:`mpiml.protocols.CompressedAllReduce` with the
job's codec (QSGD with Elias coding by default, s = sqrt(d) as in §6.1); ``pr_sgd``
through a plain AllReduce. ``local_sgd`` with a ``compression.codec`` is ``qpr_sgd``
with that codec: compressing whole models does not converge (the paper's Lemma 1
bounds the error by the norm of what is compressed), compressing the difference from
the shared anchor does. The anchor is the same on every rank bit for bit (all decode
the same payloads and add them in rank order), and is checkpointed (``prsgd/anchor``).

Optimizer state (momentum, Adam moments) stays local: only the parameters are
averaged (position-form momentum moves with them, ``Replica.replace_params``).
With tau = 1 and plain SGD ``local_sgd`` is minibatch SGD up to rounding.
"""

from __future__ import annotations

import numpy as np

from ..backend import to_host
from .base import Algorithm, Context, Replica, register
from .keys import TAU

__all__ = ["LocalSGD", "PRSGD", "QuantizedPRSGD"]


@register
class LocalSGD(Algorithm, Replica):
    name = "local_sgd"
    keys = {"tau": TAU}
    compressible = True
    differences = False  # average the models themselves (when uncompressed)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.tau: int = ctx.options.tau
        self.average = self.averager("mean")
        self.anchor = None
        if self.differences or self.compression is not None:
            self.anchor = ctx.xp.array(self.x, copy=True)  # x~_1: every rank starts from it
            self.g = ctx.xp.empty_like(self.x)

    def step(self, t: int) -> float:
        loss = self.local_gradient(t)
        self.apply(t, self.grad)
        if (t + 1) % self.tau == 0:
            self.replace_params(lambda: self._average(t))
        return loss

    def _average(self, t: int) -> None:
        if self.anchor is None:
            self.x[...] = self.average.run(self.x, t)
            return
        self.seed_message(t)
        self.ctx.xp.subtract(self.anchor, self.x, out=self.g)  # g = x_{n;0} - x_{n;K}
        self.anchor -= self.average.run(self.g, t)  # x~_{n+1} = x~_n - Delta
        self.x[...] = self.anchor

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        if self.anchor is not None:
            out["prsgd/anchor"] = to_host(self.anchor).copy()
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        if self.anchor is not None:
            self.anchor[...] = self.ctx.xp.asarray(arrays["prsgd/anchor"])


@register
class PRSGD(LocalSGD):
    """Algorithm 1 without quantization: the mean of the differences x_{n;0} - x_{n;K}."""

    name = "pr_sgd"
    compressible = False  # PR-SGD is uncompressed: a codec means qpr_sgd
    compressed = "qpr_sgd"
    differences = True


@register
class QuantizedPRSGD(LocalSGD):
    """Algorithm 1: Quantize(x_{n;0} - x_{n;K}), averaged by a compressed AllReduce."""

    name = "qpr_sgd"
    codec = "qsgd"
    plain = "pr_sgd"
    differences = True
