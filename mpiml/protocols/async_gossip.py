"""Asynchronous gossip (MixML §6 "AsyncDR"): push-sum over MPI-3 one-sided windows.

Between its own steps a rank exchanges with one randomly chosen out-neighbour of
the topology, with no global barrier and without waiting for the peer:

- **drain**: under exclusive locks on its *own* windows, the rank takes what others
  have pushed to it (a numerator a_x, a weight a_w) and zeroes the window; then its
  push-sum state (numerator s = z w, weight w) becomes (s + a_x, w + a_w) and its
  model the de-biased z = s / w;
- **push**: it halves its mass, keeps (s/2, w/2), and adds the other half into the
  peer's window with ``MPI_Accumulate(MPI_SUM)`` under a shared lock (accumulates
  to one target from several ranks are element-wise atomic) -- unless its weight is
  below ``2 w_min``: then it *skips* the push (counted in ``skipped``).

Push-sum (Kempe et al.; Assran et al.'s SGP) keeps sum_i s_i + (mass in windows)
equal to the sum of the initial models, and sum_i w_i + (weights in windows) = n,
both up to rounding (halving is exact; adding weights far apart in exponent is not);
every z_i converges to the average.

**The weight floor.** A rank that pushes k times while nothing reaches it halves its
weight k times: under extreme skew (two ranks make 6000 exchanges while their
neighbours make one; in training, neighbours stopped for minutes) w reaches 2^-1075 =
0.0 in float64 after ~1075 pushes, the numerator it pushes is 0 too, and a drain that
adds a zero weight to a zero weight computes z = 0 / 0 = NaN, which the next pushes
and ``close`` carry to every rank. The remedy: a rank never pushes weight it cannot
spare. It pushes only while w >= 2 w_min (``w_min`` = 2^-30 by default), so that what
it keeps, w / 2, is >= w_min; otherwise it skips this push and pushes again once
drains have raised its weight. Why this one:

- *Invariants hold exactly as before.* A skipped push is the identity column of that
  exchange's mixing matrix, still column-stochastic: nothing is sent, nothing is lost,
  so the mass (sum of numerators, sum of weights = n) is preserved to rounding under
  *any* skew, and w_i >= w_min > 0 on every rank at every moment (it starts at 1, a
  push keeps >= w_min, a drain only adds), so z = s / w is always finite.
- *Convergence is push-sum's.* Its proofs (Kempe et al. 2003; Nedic and Olshevsky
  2015, over time-varying directed graphs) rest on exactly such a lower bound on the
  weights and on every rank eventually pushing; a skipping rank resumes as soon as a
  neighbour's push reaches it, so the de-biased z_i still converge to the average
  (tests/test_mpi_async_gossip.py: 6000 : 1 skew, then balanced exchanges).
- *No waiting.* Bounded skew (a rank k exchanges ahead of a neighbour waits) needs a
  one-sided read of the neighbour's progress per exchange, and turns one stopped rank
  into a stall that spreads hop by hop along the topology; the floor never waits.
  A log-space (mantissa, exponent) weight never underflows, but mass 2^-6000 below its
  neighbours' is lost to rounding in the receiver's sum anyway, and windows would
  need per-push exponents.
- *Normal runs are unchanged, bit for bit.* 2^-30 is reached only after ~30 pushes
  with (almost) nothing drained in between; above it the arithmetic is the same as
  without the floor. It is also far from float64's underflow (2^-1022) and keeps the
  pushed numerators z w / 2 normal in float32 for |z| >= 2^-96. A rank at the floor
  keeps its own model (it computes and drains) and holds at least w_min of the
  total weight n; its pushes resume with the first push it drains (every push
  carries a weight >= w_min, so afterwards w >= 2 w_min).

Deadlock-freedom by design: a rank never waits for a peer to act; locks are taken
on one rank at a time (its own, or one target; always the x window, then the
weight window) and released before the next; passive
target progress is made by every MPI call the target makes. At the end, ``close``
is collective: a barrier (after it no push is in flight: an unlock returns only
once its accumulate is complete at the target), a last drain so no mass is left in
a window, then the windows are freed. A rank that finishes early waits in the
barrier, where its MPI library keeps serving the others' pushes.

Trace: ``push`` (peer, nbytes) and ``drain`` events (``msg`` -1: a push is one-sided,
and a drain takes the sum of every push since the last, so no receive pairs with a
push); per exchange a row in the ``exchanges`` table: (step, peer, pushes, age). A
push row has the peer (>= 0); a skipped push peer -2 (``SKIPPED``); a drain row peer
-1, the number of pushes it took, and its age: this rank's step minus the mean step at
which the drained pushes were sent (how old the peers' copies were), -1 when nothing
had arrived.

Buffers: ``size`` >= 1 values of float32 or float64, the same on every rank (checked
at construction, on every rank, before any window exists). float16 is refused: MPICH's
one-sided ``MPI_SUM`` on float16 is wrong (5 + 1 + 1 gave -1.25), and a halved float16
numerator (11-bit mantissa) would lose mass; pass a float32 copy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..kinds import register_kind
from ..trace import Trace
from .base import check_spec
from .gossip import check_workers

__all__ = ["DTYPES", "EXCHANGE_DTYPE", "SKIPPED", "W_MIN", "AsyncGossip"]

PUSH = register_kind(
    "push", "communication", "push-sum: half the mass accumulated into a peer's window; peer, nbytes"
)
DRAIN = register_kind("drain", "communication", "push-sum: taking the mass pushed to this rank's windows")

EXCHANGE_DTYPE = np.dtype([("step", "<i8"), ("peer", "<i4"), ("pushes", "<i4"), ("age", "<f8")])
SKIPPED = -2  # the peer of an ``exchanges`` row of a push skipped at the weight floor
W_MIN = 2.0**-30  # the weight floor: a rank pushes only while w >= 2 W_MIN (module docstring)
DTYPES = ("float32", "float64")  # what the windows carry (float16: see the module docstring)


class AsyncGossip:
    """Push-sum gossip of a flat buffer of ``size`` ``dtype`` values over ``schedule``
    (``schedule.at(t)``: the topology at this rank's step t). Collective over ``comm``
    at construction and in :meth:`close` only.

    Not a split-phase :class:`~mpiml.protocols.Protocol`: nothing starts and finishes.
    It is a one-sided channel: :meth:`push` (half the mass into a peer's window),
    :meth:`drain` (take what was pushed here), :meth:`step` (drain, then push), and the
    collective :meth:`close`. ``z`` given to them is this rank's de-biased model, a
    C-contiguous float array of ``size`` values of ``dtype``, updated in place.

    Raises at construction, on every rank given the same arguments and before any
    window is allocated: ``ValueError`` for ``size`` < 1, a topology of the wrong
    size, a device ``xp``, ``w_min`` outside (0, 2^-2], and (agreed over ``comm``)
    ranks given different sizes or dtypes; ``TypeError`` for a ``dtype`` other than
    float32 or float64. Attributes: ``w`` (this rank's push-sum weight, >= ``w_min``),
    ``skipped`` (pushes skipped at the weight floor)."""

    name = "async_gossip"

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        schedule: Any,
        xp: Any = np,
        seed: int = 0,
        trace: Trace | None = None,
        w_min: float = W_MIN,
    ) -> None:
        check_workers(schedule, comm)
        size, dt = check_spec(self.name, size, dtype, DTYPES)
        if xp is not np:
            raise ValueError("async_gossip keeps its windows in host memory: backend.device must be 'cpu'")
        if not 0.0 < w_min <= 0.25:
            raise ValueError(f"async_gossip: w_min must be in (0, 0.25] (got {w_min!r})")
        # the windows are sized from (size, dtype): every rank must agree (one small
        # allgather at start-up) or an accumulate would run past a smaller peer's window
        specs = comm.allgather((size, dt.name))
        if any(s != specs[0] for s in specs):
            got = ", ".join(f"rank {r}: {s} {d}" for r, (s, d) in enumerate(specs))
            raise ValueError(f"async_gossip: every rank must give the same size and dtype (got {got})")
        n, rank = comm.Get_size(), comm.Get_rank()
        self.comm, self.rank, self.n, self.schedule = comm, rank, n, schedule
        self.size, self.dtype = size, dt
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA5, rank]))
        self.w = 1.0  # push-sum weight, never below w_min
        self.w_min = float(w_min)
        self.skipped = 0  # pushes skipped at the weight floor
        # window of the pushed numerators (model dtype), and of (weight, pushes, sum of send steps)
        intra: Any = comm  # an intracommunicator (Win.Allocate needs one)
        self.win_x = MPI.Win.Allocate(size * self.dtype.itemsize, self.dtype.itemsize, comm=intra)
        self.win_m = MPI.Win.Allocate(3 * 8, 8, comm=intra)
        mem_x: Any = self.win_x.tomemory()
        mem_m: Any = self.win_m.tomemory()
        self.acc_x = np.frombuffer(mem_x, dtype=self.dtype, count=size)
        self.acc_m = np.frombuffer(mem_m, dtype=np.float64, count=3)
        self.win_x.Lock(rank, MPI.LOCK_EXCLUSIVE)
        self.acc_x[...] = 0
        self.win_x.Unlock(rank)
        self.win_m.Lock(rank, MPI.LOCK_EXCLUSIVE)
        self.acc_m[...] = 0
        self.win_m.Unlock(rank)
        self.half = np.empty(size, dtype=self.dtype)  # what one push sends (allocated once)
        self.got = np.empty(size, dtype=self.dtype)
        self.meta_send = np.empty(3, dtype=np.float64)
        self.meta_got = np.empty(3, dtype=np.float64)
        self.closed = False
        comm.Barrier()  # every window zeroed before anyone pushes

    def drain(self, z: np.ndarray, step: int) -> None:
        """Take the mass pushed to this rank: z <- (z w + a_x) / (w + a_w)."""
        self._check(z)
        t0 = self.trace.now()
        # locks in the pushers' order (x, then m): the exclusive x lock keeps every pusher
        # out of both windows, so a numerator is never taken without its weight
        self.win_x.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        self.win_m.Lock(self.rank, MPI.LOCK_EXCLUSIVE)
        self.got[...] = self.acc_x
        self.acc_x[...] = 0
        self.meta_got[...] = self.acc_m
        self.acc_m[...] = 0
        self.win_m.Unlock(self.rank)
        self.win_x.Unlock(self.rank)
        a_w, pushes, step_sum = (float(v) for v in self.meta_got)
        if pushes > 0:
            z *= self.w
            z += self.got
            self.w += a_w
            z /= self.w
            age = step - step_sum / pushes
        else:
            age = -1.0
        self.trace.record(step, DRAIN, t0, self.trace.now(), 0 if pushes == 0 else self.got.nbytes)
        self.trace.add_row("exchanges", EXCHANGE_DTYPE, (step, -1, int(pushes), age))

    def push(self, z: np.ndarray, step: int) -> int:
        """Send half of this rank's mass to a random out-neighbour; returns the peer, or
        -1 when there was none or the weight is below ``2 w_min`` (the push is skipped,
        counted in ``skipped``, and traced as an ``exchanges`` row with peer -2)."""
        self._check(z)
        outs = self.schedule.at(step).out_neighbors(self.rank)
        if not outs:
            return -1
        peer = int(outs[self.rng.integers(len(outs))])  # drawn either way: skips leave the stream as it is
        if self.w < 2.0 * self.w_min:  # pushing would leave less than w_min here (docstring)
            self.skipped += 1
            self.trace.add_row("exchanges", EXCHANGE_DTYPE, (step, SKIPPED, 0, 0.0))
            return -1
        t0 = self.trace.now()
        self.w *= 0.5  # exact: keep half, send half
        np.multiply(z, self.w, out=self.half)  # numerator half = z (w / 2)
        self.meta_send[:] = (self.w, 1.0, float(step))
        self.win_x.Lock(peer, MPI.LOCK_SHARED)  # x, then m: the drain's order
        self.win_m.Lock(peer, MPI.LOCK_SHARED)
        self.win_x.Accumulate(self.half, peer, op=MPI.SUM)
        self.win_m.Accumulate(self.meta_send, peer, op=MPI.SUM)
        self.win_m.Unlock(peer)
        self.win_x.Unlock(peer)
        self.trace.record(step, PUSH, t0, self.trace.now(), self.half.nbytes, peer)
        self.trace.sent(self.half.nbytes + self.meta_send.nbytes)
        self.trace.add_row("exchanges", EXCHANGE_DTYPE, (step, peer, 0, 0.0))
        return peer

    def _check(self, z: np.ndarray) -> None:
        if getattr(z, "shape", None) != (self.size,) or getattr(z, "dtype", None) != self.dtype:
            raise ValueError(
                f"{self.name} expects z as a flat array of {self.size} {self.dtype} values "
                f"(got {getattr(z, 'shape', None)} {getattr(z, 'dtype', type(z).__name__)})"
            )
        if not z.flags.c_contiguous:
            raise ValueError(f"{self.name} expects z contiguous (got a strided view)")

    def step(self, z: np.ndarray, t: int) -> None:
        """One exchange of this rank at its step t: drain, then push (z stays the same
        by the push: only the weight and the numerator are halved)."""
        self.drain(z, t)
        self.push(z, t)

    def close(self, z: np.ndarray, step: int) -> None:
        """Collective: wait for every rank, take the last pushes, free the windows."""
        if self.closed:
            return
        self.comm.Barrier()
        self.drain(z, step)
        self.comm.Barrier()  # nobody frees a window another rank may still lock
        self.win_x.Free()
        self.win_m.Free()
        self.closed = True
