"""Synchronous gossip averaging over a topology: x_i <- sum_j W_ij x_j.

One round (Quantized-PR-SGD (Wu et al., arXiv:2004.09125) §5, eq. of its Algorithm 2 without
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
nbytes = bytes sent, recorded at the start step), ``wait`` (blocked in finish), and
per message (both transports) a ``send`` per out-neighbour and a ``recv`` per
in-neighbour, from the post to the observed completion (a p2p receive into host
buffers: when its own wait returned; otherwise the round's completion), nbytes = the
buffer, ``msg`` = the running count of messages to (from) that peer
(:class:`mpiml.protocols.base.Messages`). They pair up by (source, destination, msg):
p2p rounds use one (comm, tag), on which MPI never lets a message overtake an earlier
one from the same sender, and rounds never overlap; a neighbourhood collective is
matched in the order the rounds are issued on every rank, each round completing
before the next starts, so the k-th message from i to j is j's k-th from i either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, Staging, axpy
from ..kinds import register_kind
from ..trace import Trace
from .base import Messages, Protocol

__all__ = ["Gossip", "check_workers", "mixing_row"]

_TAG = 0x6055

GOSSIP = register_kind(
    "gossip", "in_flight", "a gossip round, start to observed completion; nbytes = bytes sent"
)


def mixing_row(top: Any, rank: int, gamma: float = 1.0) -> tuple[float, list[tuple[int, float]]]:
    """Row ``rank`` of W' = (1 - gamma) I + gamma W (MixML's slack matrix; gamma = 1 is W):
    the self weight and the (in-neighbour, weight) pairs in ascending neighbour order."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1] (got {gamma})")
    w_in = sorted(top.weights_from(rank).items())
    sw = top.self_weight(rank)
    if gamma != 1.0:
        sw = 1.0 - gamma * (1.0 - sw)
        w_in = [(j, gamma * w) for j, w in w_in]
    return sw, w_in


def check_workers(schedule: Any, comm: MPI.Comm) -> None:
    """The topology must have one worker per rank of ``comm`` (local check, no MPI call)."""
    if schedule.n != comm.Get_size():
        raise ValueError(f"the topology has {schedule.n} workers but comm has {comm.Get_size()} ranks")


class Gossip(Protocol):
    """Gossip rounds of a flat buffer over ``schedule`` (``schedule.at(r)`` is the
    topology of round r); collective over ``comm`` at construction and per round.

    ``size`` >= 1 elements of ``dtype`` float16, float32 or float64 (the mixing weights
    are real: integers cannot carry W x), checked at construction before any
    communication (:func:`mpiml.protocols.base.check_spec`)."""

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
        super().__init__(comm, size, dtype, xp, trace, progress)
        if method not in ("p2p", "neighbor"):
            raise ValueError(f"method must be 'p2p' or 'neighbor' (got {method!r})")
        check_workers(schedule, comm)
        rank = self.rank
        self.schedule = schedule
        self.method, self.gamma = method, gamma
        self.period = 1 if schedule.static else schedule.period
        # per round of the period: (self weight, [(peer, weight)] ascending, out-neighbours)
        self.plan: list[tuple[float, list[tuple[int, float]], list[int]]] = []
        for r in range(self.period):
            top = schedule.at(r)
            sw, w_in = mixing_row(top, rank, gamma)
            self.plan.append((sw, w_in, list(top.out_neighbors(rank))))
        max_in = max((len(p[1]) for p in self.plan), default=0)
        self.recvbuf = xp.empty((max(max_in, 1), size), dtype=self.dtype)
        self.out = xp.empty(size, dtype=self.dtype)
        self._tmp = xp.empty(size, dtype=self.dtype)
        self.sendbuf: Array | None = None
        self.staging = Staging(cuda_aware)
        self.graphs: list[MPI.Distgraphcomm] = []
        if method == "neighbor":
            intra: Any = comm  # graph communicators are made from an intracommunicator
            for _, w_in, outs in self.plan:
                self.graphs.append(
                    intra.Create_dist_graph_adjacent([j for j, _ in w_in], outs, reorder=False)
                )
        self._round = 0
        self._src: Array | None = None
        self.messages = Messages(self.trace, comm.Get_size())
        self._t_post = 0.0
        self._t_recv = np.zeros(max(max_in, 1))  # each receive's observed completion (p2p, in order)

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False, round: int | None = None) -> None:
        """Post gossip round ``round`` (default: ``step``) of ``x``."""
        self._check(x)
        self._begin(step)
        self._round = (step if round is None else round) % self.period
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
        self._t_post = self.trace.now()
        if self.method == "neighbor":
            reqs = [self.graphs[self._round].Ineighbor_allgather(send, recv[:k])]
        else:
            reqs = [self.comm.Irecv(recv[i], source=j, tag=_TAG) for i, (j, _) in enumerate(w_in)]
            reqs += [self.comm.Isend(send, dest=j, tag=_TAG) for j in outs]
        self._posted(reqs)
        self.trace.sent(len(outs) * x.nbytes)

    def finish(self, step: int | None = None) -> Array:
        """Wait for the round and return W-mixed x in a buffer the protocol owns
        (valid until the next ``finish``)."""
        t0 = self.trace.now()
        self._stop_thread()
        sw, w_in, outs = self.plan[self._round]
        out, src = self.out, self._src
        assert src is not None
        self.xp.multiply(src, sw, out=out)  # the self term while the neighbours' data arrive
        # p2p into host buffers: wait for each neighbour in ascending order and mix it in
        # while the next one arrives; the order (hence the rounding) never depends on
        # arrival times. Otherwise: wait for everything, then mix in the same order.
        in_order = self.method == "p2p" and isinstance(self.recvbuf, np.ndarray) and self._t_done is None
        blocked = 0.0
        if not in_order:
            blocked = self._wait_all()
            self.staging.finish_recv(self.recvbuf, "recv")
        for i, (_, w) in enumerate(w_in):
            if in_order:
                tw = self.trace.now()
                self._reqs[i].Wait()
                t_recv = self.trace.now()
                blocked += t_recv - tw
                self._t_recv[i] = t_recv
            axpy(w, self.recvbuf[i], out, self._tmp)
        if in_order:
            blocked += self._wait_all()  # the sends
        assert self._t_done is not None
        t_post, t_done, nbytes, msgs = self._t_post, self._t_done, src.nbytes, self.messages
        for i, (j, _) in enumerate(w_in):  # in the order the receives were posted
            msgs.recv(self.step, j, t_post, float(self._t_recv[i]) if in_order else t_done, nbytes)
        for j in outs:  # in the order the sends were posted
            msgs.send(self.step, j, t_post, t_done, nbytes)
        self._done(GOSSIP, len(outs) * src.nbytes, step, t0, blocked)
        return out
