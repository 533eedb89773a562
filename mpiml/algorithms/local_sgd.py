"""``local_sgd``, ``pr_sgd``, ``qpr_sgd``: tau local steps, then a global average.

``local_sgd`` (K-AVG): after every ``tau``-th local update (steps t with
(t + 1) mod tau = 0) the ranks replace their models by the average (1/M) sum_j x^(j).

``pr_sgd`` and ``qpr_sgd`` are Algorithm 1 of Quantized-PR-SGD (Wu et al., arXiv:2004.09125) (PR-SGD and
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
the same payloads and add them in rank order); it is the reference of a
:class:`mpiml.protocols.DifferenceAverage` (sign -1) and is checkpointed
(``difference/reference``; checkpoints written before it, with ``prsgd/anchor``, resume).

Optimizer state (momentum, Adam moments) stays local: only the parameters are
averaged (position-form momentum moves with them, ``Replica.replace_params``).
With tau = 1 and plain SGD ``local_sgd`` is minibatch SGD up to rounding.
"""

from __future__ import annotations

import numpy as np

from ..protocols import AllReduce, CompressedAllReduce, DifferenceAverage
from .base import Algorithm, Context, register
from .keys import TAU
from .replica import Replica

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
        self.average: AllReduce | CompressedAllReduce | DifferenceAverage = self.averager("mean")
        if self.differences or self.compression is not None:
            # the anchor x~_1 = x_0: every rank starts from it (sign -1: g = x~ - x, x~ -= mean g)
            self.average = DifferenceAverage(self.average, self.x, sign=-1)

    def step(self, t: int) -> float:
        loss = self.local_gradient(t)
        self.apply(t, self.grad)
        if (t + 1) % self.tau == 0:
            self.replace_params(lambda: self._average(t))
        return loss

    def _average(self, t: int) -> None:
        # plain: x <- mean_j x^(j); with the anchor: g = x~_n - x_{n;K} (line 7),
        # x~_{n+1} = x~_n - mean_j g^(j) (line 10), and x <- x~_{n+1}
        self.x[...] = self.average.run(self.x, t)

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        if isinstance(self.average, DifferenceAverage):
            out.update(self.average.state_arrays())
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        if isinstance(self.average, DifferenceAverage):
            if "prsgd/anchor" in arrays:  # a checkpoint from before DifferenceAverage: the same r
                arrays = {"difference/reference": arrays["prsgd/anchor"]}
            self.average.load_state(arrays)


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
