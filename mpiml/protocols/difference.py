"""Averaging models as differences from a reference every rank holds identically.

Compressing a whole model does not converge (Quantized-PR-SGD (Wu et al., arXiv:2004.09125), Lemma 1 bounds
the error by the norm of what is compressed); compressing its difference from the last
global model does. Every rank keeps that model, the *reference* r (the same on every
rank, bit for bit: each decodes the same payloads and adds them in rank order), sends a
difference, and updates r from the mean of the differences:

- ``sign = -1``, PR-SGD and Quantized-PR-SGD, Algorithm 1 lines 7-10 (r is the paper's
  x~_n, the *anchor*): send g = Q(r - x_{n;K}), then r <- r - (1/M) sum_j g^(j);
- ``sign = +1``, DaSGD with a codec (docs/algorithms.md): send Q(y_t - r), then
  r <- r + (1/M) sum_j Q(y^(j) - r), the average the merge uses.

Both are the same operation, r <- r + mean_j (x_j - r) up to the codec; the sign only
fixes which way the difference is formed and applied, so each algorithm keeps the exact
arithmetic (and bits) of its paper's update. The inner protocol is an AllReduce or a
CompressedAllReduce with ``op = "mean"``; the difference is formed in a buffer this
protocol owns, so ``x`` may change at once after ``start``.

``finish`` (and ``run``) returns the new r in the inner protocol's receive buffer (the
caller's until the next ``start``: DaSGD mixes it in place); ``reference`` holds r apart.
Checkpoints: :meth:`DifferenceAverage.state_arrays` (``difference/reference``).
"""

from __future__ import annotations

import numpy as np

from ..backend import Array, to_host
from .allreduce import AllReduce
from .compressed_allreduce import CompressedAllReduce

__all__ = ["DifferenceAverage"]


class DifferenceAverage:
    """r <- r + sign * mean_j(sign * (x_j - r)) over ``inner``'s communicator, with
    ``inner`` a mean AllReduce (plain or compressed) of buffers like ``x0``, and r
    starting at ``x0`` (copied). Collective over ``inner.comm``; split-phase like a
    :class:`~mpiml.protocols.Protocol` (``start``, ``test``, ``finish``, ``run``).

    Raises, before any communication: ``TypeError`` for another ``inner``, ``ValueError``
    for a ``sign`` other than +-1, a sum ``inner``, or an ``x0`` that is not a contiguous
    flat array of ``inner``'s size and dtype (the inner protocol checked its own size
    and dtype when it was built)."""

    name = "difference_average"

    def __init__(self, inner: AllReduce | CompressedAllReduce, x0: Array, sign: int = 1) -> None:
        if not isinstance(inner, (AllReduce, CompressedAllReduce)):
            raise TypeError(
                f"inner must be an AllReduce or a CompressedAllReduce (got {type(inner).__name__})"
            )
        if sign not in (1, -1):
            raise ValueError(f"sign must be +1 (send x - r) or -1 (send r - x) (got {sign!r})")
        if inner.op != "mean":
            raise ValueError(f"DifferenceAverage needs a mean AllReduce (got op={inner.op!r})")
        inner._check(x0)
        self.inner, self.sign = inner, sign
        self.size, self.dtype, self.xp = inner.size, inner.dtype, inner.xp
        self.reference = inner.xp.array(x0, copy=True)
        self._diff = inner.xp.empty_like(self.reference)

    @property
    def in_flight(self) -> bool:
        return self.inner.in_flight

    @property
    def recvbuf(self) -> Array:
        """Where ``finish`` leaves the new reference (the inner receive buffer)."""
        return self.inner.recvbuf

    def _difference(self, x: Array) -> Array:
        self.inner._check(x)
        if self.sign > 0:
            self.xp.subtract(x, self.reference, out=self._diff)
        else:
            self.xp.subtract(self.reference, x, out=self._diff)
        return self._diff

    def _apply(self, mean: Array) -> Array:
        if self.sign > 0:  # r + mean, formed in the receive buffer, then kept as r
            mean += self.reference
            self.reference[...] = mean
        else:  # r - mean, formed in r, then copied to the receive buffer
            self.reference -= mean
            mean[...] = self.reference
        return mean

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False) -> None:
        """Form the difference (``snapshot`` is implied) and start the inner average."""
        self.inner.start(self._difference(x), step)

    def test(self) -> bool:
        return self.inner.test()

    def finish(self, step: int | None = None) -> Array:
        return self._apply(self.inner.finish(step))

    def run(self, x: Array, step: int = 0) -> Array:
        """Blocking form (the inner protocol's own blocking call)."""
        return self._apply(self.inner.run(self._difference(x), step))

    def state_arrays(self) -> dict[str, np.ndarray]:
        return {"difference/reference": to_host(self.reference).copy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.reference[...] = self.xp.asarray(arrays["difference/reference"])
