"""``dasgd``: local SGD with delayed averaging (DaSGD: Zhou et al., arXiv:2006.00441).

Update rule, eq. (2) (and eq. 7 in matrix form), for worker m of M:

    x_{k+1}^(m) = xi (x_k^(m) - eta g(x_k^(m)))
                  + (1 - xi)/M sum_j (x_{k-d}^(j) - eta g(x_{k-d}^(j)))   if (k + 1) mod tau = d
    x_{k+1}^(m) = x_k^(m) - eta g(x_k^(m))                                 otherwise

How the indices map to the code: paper iteration k is training step ``t`` (0-based).
Step t computes the gradient at x_t and applies the local update, giving
y_t = x_t - eta g(x_t) (any optimizer in place of the plain step; its state stays
local: position-form momentum moves with x, ``Replica.replace_params``). At a step with (t + 1) mod tau = 0 the average of y_t over the ranks is
*started* (a snapshot of y_t goes into MPI_Iallreduce) and the rank goes on. d
steps later, at t' = t + d (so (t' + 1 - d) mod tau = 0, the appendix's form of
the condition), the rank first computes its own update y_t', then finishes the
average and merges: x_{t'+1} = xi y_t' + (1 - xi) mean_j y_t^(j). The average
therefore travels during the compute of d steps; the rank waits only if it
takes longer (the ``wait`` event recorded at t').

Choices where the paper is silent, documented and tested:
- The first average starts at t = tau - 1 (the condition (k + 1 - d) mod tau = 0
  also holds at k = d - 1, where x_{-1} does not exist: no merge happens there).
- d = 0: the average of y_t is merged at the same step; with nothing to overlap
  it uses the blocking MPI_Allreduce (so d = 0, xi = 0 is exactly ``local_sgd``).
- An average still in flight at the end of the run is completed and discarded.
- At a checkpoint an average in flight is completed (not merged) and saved with
  the step that merges it, so a resumed run merges the same numbers at the same
  step and ends bit for bit where the uninterrupted run ends.

Compression (``compression.codec``, docs/compression.md): every rank keeps the last
global average r (the *reference*, the same on every rank; x_0 at first) and sends
Q(y_t - r) instead of y_t, through :class:`mpiml.protocols.CompressedAllReduce`; the
average is then r + mean_j Q(y_t^(j) - r), and becomes the next reference
(:class:`mpiml.protocols.DifferenceAverage`, sign +1). This is Algorithm 1's difference
form of Quantized-PR-SGD (Wu et al., arXiv:2004.09125) applied to DaSGD's snapshot (compressing the models
themselves does not converge: its Lemma 1). The reference is checkpointed as
``difference/reference`` (and, pending, the whole average r + mean as ``dasgd/average``).

Defaults: tau = 4, d = 1 (the paper's Table I), xi = 0.25 (its §IV.C baseline).
§VI.D recommends tau = d + 1; ``mpiml plan`` computes the smallest d with
t_c < d t_p (eq. 3).
"""

from __future__ import annotations

import numpy as np

from ..backend import to_host
from ..config import Config
from ..errors import ConfigError
from ..kinds import register_kind
from ..layout import Layout
from ..protocols import AllReduce, CompressedAllReduce, DifferenceAverage
from ..protocols.progress import check_mode
from .base import Algorithm, Context, register
from .keys import DELAY, PROGRESS, TAU, XI
from .replica import Replica

__all__ = ["MERGE", "DaSGD"]

MERGE = register_kind("merge", "compute", "DaSGD's merge x <- xi x + (1 - xi) average")


@register
class DaSGD(Algorithm, Replica):
    name = "dasgd"
    keys = {"tau": TAU, "delay": DELAY, "xi": XI, "progress": PROGRESS}
    compressible = True

    @classmethod
    def check(cls, cfg: Config) -> None:
        a = cfg.algorithm
        if a.delay >= a.tau:
            raise ConfigError(
                f"algorithm.delay must be < algorithm.tau (got delay={a.delay}, tau={a.tau}): "
                "an average must be merged before the next one starts (DaSGD's bounded age, d < tau)"
            )

    @classmethod
    def check_layout(cls, cfg: Config, layout: Layout) -> None:
        problem = check_mode(cfg.algorithm.progress)  # this process's MPI thread level
        if problem:
            raise ConfigError(problem)

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        a = ctx.options
        self.tau: int = a.tau
        self.delay: int = a.delay
        self.xi: float = a.xi
        self.progress: str = a.progress
        self.average: AllReduce | CompressedAllReduce | DifferenceAverage
        self.average = self.averager("mean", progress=a.progress)
        if self.compression is not None:  # Q(y_t - r) sent, r <- r + mean: the reference r = x_0 first
            self.average = DifferenceAverage(self.average, self.x, sign=+1)
        self.merge_at = -1  # the step whose update the pending average is merged into
        self.pending = False  # an average was started (or restored) and is not merged yet
        # 'test': MPI_Test between layers / compute chunks of every gradient
        self.poll = self.average.test if self.progress == "test" else None

    def step(self, t: int) -> float:
        loss = self.local_gradient(t, poll=self.poll)
        self.apply(t, self.grad)  # self.x is now y_t = x_t - eta g(x_t)
        if self.pending and t == self.merge_at:
            self._merge(t, self.average.finish(t) if self.average.in_flight else self.average.recvbuf)
        if (t + 1) % self.tau == 0:
            if self.delay == 0:
                self._merge(t, self.average.run(self.x, t))
            else:
                self.average.start(self.x, t, snapshot=True)
                self.merge_at = t + self.delay
                self.pending = True
        return loss

    def _merge(self, t: int, avg: np.ndarray) -> None:
        """x <- xi x + (1 - xi) avg, in place (``avg`` is the protocol's buffer, the
        caller's until the next start; compressed, it is already r + mean_j Q(y^(j) - r))."""
        t0 = self.trace.now()
        self.replace_params(lambda: self._mix(avg))
        self.pending = False
        self.trace.record(t, MERGE, t0, self.trace.now())

    def _mix(self, avg: np.ndarray) -> None:
        self.x *= self.xi
        avg *= 1.0 - self.xi
        self.x += avg

    def quiesce(self) -> None:
        """Complete an average in flight (it stays pending until its merge step)."""
        if self.average.in_flight:
            self.average.finish()

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = super().state_arrays()
        out["dasgd/merge_at"] = np.array([self.merge_at if self.pending else -1], dtype=np.int64)
        out["dasgd/average"] = (
            to_host(self.average.recvbuf).copy() if self.pending else np.zeros(0, self.average.dtype)
        )
        if isinstance(self.average, DifferenceAverage):
            out.update(self.average.state_arrays())
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        super().load_state(arrays)
        merge_at = int(arrays["dasgd/merge_at"][0])
        self.pending = merge_at >= 0
        self.merge_at = merge_at
        xp = self.ctx.xp
        if self.pending:
            self.average.recvbuf[...] = xp.asarray(arrays["dasgd/average"])
        if isinstance(self.average, DifferenceAverage):
            if "dasgd/reference" in arrays:
                # a checkpoint from before DifferenceAverage held the old r and, pending, the
                # mean of the differences: form r + mean now, as its merge would have
                old = xp.asarray(arrays["dasgd/reference"])
                if self.pending:
                    self.average.recvbuf[...] += old
                    old = self.average.recvbuf
                arrays = {"difference/reference": old}
            self.average.load_state(arrays)
