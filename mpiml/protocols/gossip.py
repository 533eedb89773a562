"""Synchronous gossip averaging over a topology: x_i <- sum_j W_ij x_j.

One round (papers/quantized-pr-sgd.txt §5, eq. of its Algorithm 2 without
quantization; MixML §6 "SyncDR" on a ring): every rank sends its buffer to its
out-neighbours (j with W_ji != 0), receives its in-neighbours' buffers, and mixes

    x_i' = W_ii x_i + sum_{j in N_in(i), ascending j} W_ij x_j

in that order (each peer term added with BLAS axpy for numpy buffers), so a serial
reference can reproduce the result bit for bit. The
"slack matrix" variant of MixML §6, x_i' = x_i + gamma sum_j W_ij (x_j - x_i), is
the same round with W' = (1 - gamma) I + gamma W (``gamma``; 1 is plain gossip).

Time-varying topologies (one-peer exponential) give a different W at each round:
``schedule.at(round)``. Two transports, chosen by ``method``:

``p2p``
    MPI_Irecv from every in-neighbour, MPI_Isend to every out-neighbour (one tag,
    rounds never overlap on a pair), MPI_Waitall in ``finish``;
``neighbor``
    MPI_Ineighbor_allgather on a distributed-graph communicator made once per
    distinct W at construction (collective over comm).

Receive buffers are allocated once (max in-degree over the schedule's period).
Split-phase like every protocol: ``start`` posts the round, ``test`` progresses it,
``finish`` waits and mixes. Events: ``gossip`` (start to observed completion,
nbytes = bytes sent, recorded at the start step), ``wait`` (blocked in finish).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, Staging
from ..io.trace import Trace
from .base import Protocol
from .progress import MODES, ProgressThread

__all__ = ["Gossip"]

_TAG = 0x6055


def _blas_axpy(xp: Any, dtype: np.dtype) -> Any:
    """scipy's BLAS ``saxpy``/``daxpy`` (in place on a contiguous y) for numpy buffers."""
    if xp is not np or dtype not in (np.float32, np.float64):
        return None
    from scipy.linalg import blas

    return blas.saxpy if dtype == np.float32 else blas.daxpy


class Gossip(Protocol):
    """Gossip rounds of a flat buffer over ``schedule`` (``schedule.at(r)`` is the
    topology of round r); collective over ``comm`` at construction and per round."""

    name = "gossip"

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        schedule: Any,
        xp: Any = np,
        method: str = "p2p",
        gamma: float = 1.0,
        trace: Trace | None = None,
        cuda_aware: bool | None = None,
        progress: str = "test",
    ) -> None:
        super().__init__(trace)
        if method not in ("p2p", "neighbor"):
            raise ValueError(f"method must be 'p2p' or 'neighbor' (got {method!r})")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] (got {gamma})")
        if progress not in MODES:
            raise ValueError(f"progress must be one of {', '.join(map(repr, MODES))} (got {progress!r})")
        n, rank = comm.Get_size(), comm.Get_rank()
        if schedule.n != n:
            raise ValueError(f"the topology has {schedule.n} workers but comm has {n} ranks")
        self.comm, self.rank, self.schedule = comm, rank, schedule
        self.size, self.dtype, self.xp = size, np.dtype(dtype), xp
        self.method, self.gamma, self.progress = method, gamma, progress
        self.period = 1 if schedule.static else schedule.period
        # per round of the period: (self weight, [(peer, weight)] ascending, out-neighbours)
        self.plan: list[tuple[float, list[tuple[int, float]], list[int]]] = []
        for r in range(self.period):
            top = schedule.at(r)
            w_in = sorted(top.weights_from(rank).items())
            sw = top.self_weight(rank)
            if gamma != 1.0:
                sw = 1.0 - gamma * (1.0 - sw)
                w_in = [(j, gamma * w) for j, w in w_in]
            self.plan.append((sw, w_in, list(top.out_neighbors(rank))))
        max_in = max((len(p[1]) for p in self.plan), default=0)
        self.recvbuf = xp.empty((max(max_in, 1), size), dtype=self.dtype)
        self.out = xp.empty(size, dtype=self.dtype)
        self._tmp = xp.empty(size, dtype=self.dtype)
        self._blas_axpy = _blas_axpy(xp, self.dtype)
        self.sendbuf: Array | None = None
        self.staging = Staging(cuda_aware)
        self.graphs: list[MPI.Distgraphcomm] = []
        if method == "neighbor":
            intra: Any = comm  # graph communicators are made from an intracommunicator
            for _, w_in, outs in self.plan:
                self.graphs.append(
                    intra.Create_dist_graph_adjacent([j for j, _ in w_in], outs, reorder=False)
                )
        self._reqs: list[MPI.Request] = []
        self._active = False
        self._round = 0
        self._src: Array | None = None
        self._t_start = 0.0
        self._t_done: float | None = None
        self._thread: ProgressThread | None = None
        self._span = 0

    @property
    def in_flight(self) -> bool:
        return self._active

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False, round: int | None = None) -> None:
        """Post gossip round ``round`` (default: ``step``) of ``x``."""
        if x.shape != (self.size,) or x.dtype != self.dtype:
            raise ValueError(
                f"gossip expects a flat array of {self.size} {self.dtype} values (got {x.shape} {x.dtype})"
            )
        if self._active:
            raise RuntimeError("gossip: start() called while the previous round is still in flight")
        self.step = step
        self._round = (step if round is None else round) % self.period
        self._t_start = self.trace.now()
        self._t_done = None
        src = x
        if snapshot:
            if self.sendbuf is None:
                self.sendbuf = self.xp.empty(self.size, dtype=self.dtype)
            self.sendbuf[...] = x
            src = self.sendbuf
        self._src = src
        _, w_in, outs = self.plan[self._round]
        send = self.staging.send_view(src, "send")
        k = len(w_in)
        recv = self.staging.recv_view(self.recvbuf, "recv")
        if self.method == "neighbor":
            self._reqs = [self.graphs[self._round].Ineighbor_allgather(send, recv[:k] if k else recv[:0])]
        else:
            self._reqs = [self.comm.Irecv(recv[i], source=j, tag=_TAG) for i, (j, _) in enumerate(w_in)]
            self._reqs += [self.comm.Isend(send, dest=j, tag=_TAG) for j in outs]
        self._active = True
        self._span = self.trace.open(self._t_start)
        self.trace.sent(len(outs) * x.nbytes)
        if self.progress == "thread":
            self._thread = ProgressThread(self._test)

    def _test(self) -> bool:
        if self._t_done is None and MPI.Request.Testall(self._reqs):
            self._t_done = self.trace.now()
        return self._t_done is not None

    def test(self) -> bool:
        if not self._active:
            return True
        if self.progress == "test":
            return self._test()
        return self._t_done is not None

    def _axpy(self, w: float, i: int) -> None:
        """out += w * recvbuf[i]: one BLAS pass for numpy float32/float64 (the rounding
        of BLAS axpy, possibly fused multiply-add), multiply-then-add otherwise."""
        out, x = self.out, self.recvbuf[i]
        if self._blas_axpy is not None:
            self._blas_axpy(x, out, a=w)
        else:
            self.xp.multiply(x, w, out=self._tmp)
            out += self._tmp

    def finish(self, step: int | None = None) -> Array:
        """Wait for the round and return W-mixed x in a buffer the protocol owns
        (valid until the next ``finish``)."""
        if not self._active:
            raise RuntimeError("gossip: finish() without start()")
        t0 = self.trace.now()
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()
        sw, w_in, outs = self.plan[self._round]
        out, src = self.out, self._src
        assert src is not None
        self.xp.multiply(src, sw, out=out)  # the self term while the neighbours' data arrive
        blocked = 0.0
        staged = not isinstance(self.recvbuf, np.ndarray)
        if self.method == "p2p" and not staged and self._t_done is None:
            # wait for each neighbour in ascending order and mix it in while the next one
            # arrives: the order (hence the rounding) never depends on arrival times
            for i, (_, w) in enumerate(w_in):
                tw = self.trace.now()
                self._reqs[i].Wait()
                blocked += self.trace.now() - tw
                self._axpy(w, i)
            tw = self.trace.now()
            MPI.Request.Waitall(self._reqs)
            blocked += self.trace.now() - tw
            self._t_done = self.trace.now()
        else:
            if self._t_done is None:
                tw = self.trace.now()
                MPI.Request.Waitall(self._reqs)
                self._t_done = self.trace.now()
                blocked = self._t_done - tw
            self.staging.finish_recv(self.recvbuf, "recv")
            for i, (_, w) in enumerate(w_in):  # ascending peer order (a serial reference repeats it)
                self._axpy(w, i)
        t1 = t0 + blocked
        self._active = False
        self._reqs = []
        self.trace.record(self.step, "gossip", self._t_start, self._t_done, len(outs) * src.nbytes)
        self.trace.close(self._span)
        self.trace.record(self.step if step is None else step, "wait", t0, t1)
        return out
