"""Asynchronous gossip (MixML §6 "AsyncDR"): push-sum over MPI-3 one-sided windows.

Between its own steps a rank exchanges with one randomly chosen out-neighbour of
the topology, with no global barrier and without waiting for the peer:

- **drain**: under exclusive locks on its *own* windows, the rank takes what others
  have pushed to it (a numerator a_x, a weight a_w) and zeroes the window; then its
  push-sum state (numerator s = z w, weight w) becomes (s + a_x, w + a_w) and its
  model the de-biased z = s / w;
- **push**: it halves its mass, keeps (s/2, w/2), and adds the other half into the
  peer's window with ``MPI_Accumulate(MPI_SUM)`` under a shared lock (accumulates
  to one target from several ranks are element-wise atomic).

Push-sum (Kempe et al.; Assran et al.'s SGP) keeps sum_i s_i + (mass in windows)
equal to the sum of the initial models, and sum_i w_i + (weights in windows) = n,
both up to rounding (halving is exact; adding weights far apart in exponent is not); every z_i converges to the average.

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
push); per exchange a row in the
``exchanges`` table: (step, peer, age) where the age of a drain is this rank's step
minus the mean step at which the drained pushes were sent (how old the peers'
copies were), and -1 when nothing had arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..kinds import register_kind
from ..trace import Trace
from .gossip import check_workers

__all__ = ["EXCHANGE_DTYPE", "AsyncGossip"]

PUSH = register_kind(
    "push", "communication", "push-sum: half the mass accumulated into a peer's window; peer, nbytes"
)
DRAIN = register_kind("drain", "communication", "push-sum: taking the mass pushed to this rank's windows")

EXCHANGE_DTYPE = np.dtype([("step", "<i8"), ("peer", "<i4"), ("pushes", "<i4"), ("age", "<f8")])


class AsyncGossip:
    """Push-sum gossip of a flat buffer of ``size`` ``dtype`` values over ``schedule``
    (``schedule.at(t)``: the topology at this rank's step t). Collective over ``comm``
    at construction and in :meth:`close` only.

    Not a split-phase :class:`~mpiml.protocols.Protocol`: nothing starts and finishes.
    It is a one-sided channel: :meth:`push` (half the mass into a peer's window),
    :meth:`drain` (take what was pushed here), :meth:`step` (drain, then push), and the
    collective :meth:`close`."""

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
    ) -> None:
        check_workers(schedule, comm)
        n, rank = comm.Get_size(), comm.Get_rank()
        if xp is not np:
            raise ValueError("async_gossip keeps its windows in host memory: backend.device must be 'cpu'")
        self.comm, self.rank, self.n, self.schedule = comm, rank, n, schedule
        self.size, self.dtype = size, np.dtype(dtype)
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA5, rank]))
        self.w = 1.0  # push-sum weight
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
        """Send half of this rank's mass to a random out-neighbour; returns the peer."""
        outs = self.schedule.at(step).out_neighbors(self.rank)
        if not outs:
            return -1
        peer = int(outs[self.rng.integers(len(outs))])
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
