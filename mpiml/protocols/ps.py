"""The worker side of the parameter server: push updates to every shard's server and
pull the shards back, split-phase (:mod:`mpiml.protocols.ps_wire` for the messages,
:mod:`mpiml.protocols.ps_server` for the server).

:meth:`ShardClient.request` sends one request to every server (``MPI_Isend`` of a
buffer allocated once: a header and, for a push, the shard's slice of the update) and
posts the receives of the replies; :meth:`ShardClient.wait` completes them and copies
each shard's snapshot into the caller's parameters only once the whole reply has
arrived (so a shard is never half old, half new). A push and the pull that follows
it travel in one message: the reply holds the model with this worker's own update
applied (a worker reads its own writes), without a second round trip. (Starting
the pull of step t+1 before step t's gradient is pushed would hide the reply's
latency behind the compute, at the price of one more step of staleness on every
update; it is not done.)

Besides the model, replies carry the agreed stop step and the stop-request bits of
every rank (see :class:`mpiml.protocols.ps_server.ShardServer`), and the coordinator
sends the first worker the evaluation sums of every worker (EVAL), which
:meth:`ShardClient.wait` collects in :attr:`ShardClient.evals`.

Buffers are host memory: with cupy the update is staged through the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from ..backend import Array, to_host
from ..kinds import register_kind
from ..trace import Trace
from .base import WAIT, Messages
from .ps_wire import (
    ACK,
    DONE,
    EVAL,
    EVAL_SLOTS,
    FINAL,
    HEADER_BYTES,
    PULL,
    PUSH,
    QUIESCE,
    REPLY,
    REQ,
    STOP,
    Message,
)

__all__ = ["PS_EXCHANGE", "ShardClient"]

PS_EXCHANGE = register_kind(
    "ps_exchange", "communication", "a worker's request to every parameter server, until every reply is in"
)


class ShardClient:
    """A worker's channel to the servers of every shard.

    ``comm``: the parameter server's communicator; ``servers``: the server rank of each
    shard (in comm), ``ranges``: each shard's ``[lo, hi)`` in the flat parameters
    (:func:`mpiml.protocols.ps_wire.shard_ranges`); ``dtype``: the parameters' dtype.
    ``first``: this is the first worker (it receives the evaluations and the
    staleness statistics). Point-to-point only; not collective.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        servers: Sequence[int],
        ranges: Sequence[tuple[int, int]],
        dtype: np.dtype,
        xp: object = np,
        trace: Trace | None = None,
        *,
        first: bool = False,
    ) -> None:
        self.comm, self.servers, self.ranges = comm, list(servers), list(ranges)
        self.dtype, self.xp, self.first = np.dtype(dtype), xp, first
        self.trace = trace if trace is not None else Trace(enabled=False)
        s = len(self.servers)
        self.out = [Message(hi - lo, self.dtype) for lo, hi in self.ranges]
        self.inbox = [Message(hi - lo, self.dtype) for lo, hi in self.ranges]
        self.versions = np.zeros(s, dtype=np.int64)  # each shard's version in the model held
        self.pushed = np.zeros(s, dtype=np.int64)  # pushes made to each shard
        self.stop_step = -1  # the agreed stop step, once the coordinator has fixed one
        self.flags = 0  # stop-request bits seen in replies (forwarded with the next request)
        self.seen_flags = 0  # every stop-request bit seen in any reply (what stopped the run)
        self.stopping = False  # the last ACK said: stop after this checkpoint
        self.ack_step = 0  # the step of the checkpoint the last ACK agreed on
        self.evals: list[tuple[int, np.ndarray]] = []  # (step, sums) from the coordinator
        # FINAL (first worker): per shard [pushes, mean, p50, p95, max staleness, updates applied]
        self.staleness: list[np.ndarray] = []
        self.msgs = Messages(self.trace, comm.Get_size())
        self._send: list[MPI.Request] = [MPI.REQUEST_NULL] * s
        self._recv: list[MPI.Request] = [MPI.REQUEST_NULL] * s
        self._sizes = [0] * s
        self._t_post = np.zeros(s)
        self._expect = 0  # the reply op awaited (PULL, ACK or FINAL), 0: none
        self._step = 0
        self._t0 = 0.0
        self._sent_bytes = 0

    @property
    def clock(self) -> int:
        """Pushes made (to every shard alike)."""
        return int(self.pushed[0])

    def request(
        self,
        op: int,
        done: int,
        update: Array | None = None,
        *,
        loss: float = 0.0,
        flags: int = 0,
        eval_step: int = 0,
        eval_sums: np.ndarray | None = None,
        quiesce_step: int = 0,
    ) -> None:
        """Send one request to every server: ``op`` bits of PUSH (``update``, the flat
        update of shape (d,) in the parameters' dtype: a gradient or a delta), PULL,
        QUIESCE (``quiesce_step``; with STOP: a stop checkpoint), DONE. ``done``: the
        steps this worker has completed; ``flags``: its stop-request bits;
        ``eval_step``/``eval_sums``: its evaluation sums for that step (6 float64).
        Replies are awaited by :meth:`wait`."""
        if self._expect or any(r != MPI.REQUEST_NULL for r in self._send):
            raise RuntimeError("ShardClient.request: the previous request has not been waited for")
        host = to_host(update) if update is not None and not isinstance(update, np.ndarray) else update
        tr = self.trace
        self._t0, self._step, self._sent_bytes = tr.now(), done, 0
        for s, (lo, hi) in enumerate(self.ranges):
            m = self.out[s]
            m.clear()
            m.h[0], m.h[1], m.h[4] = op, done, flags | self.flags
            if op & PUSH:
                assert host is not None
                self.pushed[s] += 1
                m.h[3] = self.versions[s]
                m.body[...] = host[lo:hi]
                m.f[8] = loss
            m.h[2] = self.pushed[s]
            if eval_step:
                assert eval_sums is not None
                m.h[5] = eval_step
                m.f[EVAL_SLOTS] = eval_sums
            if op & QUIESCE:
                m.h[7] = quiesce_step
            if op & DONE:
                m.h[6] = self.pushed[s]
            n = m.nbytes(bool(op & PUSH))
            t_send = tr.now()
            self._send[s] = self.comm.Isend([m.raw[:n], MPI.BYTE], dest=self.servers[s], tag=REQ)
            tr.sent(n)
            self._sent_bytes += n
            self.msgs.send(int(self.pushed[s]), self.servers[s], t_send, t_send, n)
        self.flags = 0
        # DONE: the final shard, or (a stop while this worker was done) an ACK of the stop
        self._expect = PULL if op & PULL else ACK if op & QUIESCE else FINAL | ACK if op & DONE else 0
        if self._expect:
            for s in range(len(self.servers)):
                self._post(s)

    def _post(self, s: int) -> None:
        self._t_post[s] = self.trace.now()
        self._recv[s] = self.comm.Irecv([self.inbox[s].raw, MPI.BYTE], source=self.servers[s], tag=REPLY)

    def wait(self, x: Array | None = None) -> None:
        """Complete the request: its sends, and every server's reply. A PULL or FINAL
        reply's shard is copied into ``x[lo:hi]`` (``x``: the worker's flat parameters,
        numpy or cupy) once it has arrived whole."""
        tr = self.trace
        t0 = tr.now()
        MPI.Request.Waitall(self._send)
        expect, self._expect = self._expect, 0
        status = MPI.Status()
        left = sum(1 for r in self._recv if r != MPI.REQUEST_NULL)
        while left:
            s = MPI.Request.Waitany(self._recv, status)
            m = self.inbox[s]
            op, nbytes = int(m.h[0]), status.Get_count(MPI.BYTE)
            self.msgs.recv(self._step, self.servers[s], float(self._t_post[s]), tr.now(), nbytes)
            self._recv[s] = MPI.REQUEST_NULL
            if op == EVAL:  # the coordinator's evaluation sums, ahead of the reply awaited
                self.evals.append((int(m.h[5]), m.f[EVAL_SLOTS].copy()))
                self._post(s)
                continue
            if not op & expect:
                raise RuntimeError(f"parameter server: reply {op} from server {s}, expected {expect}")
            body = bool(op & (PULL | FINAL))
            if nbytes != m.nbytes(body):
                raise RuntimeError(
                    f"parameter server: a reply of {nbytes} bytes from server {s} (expected {m.nbytes(body)})"
                )
            if body and x is not None:
                lo, hi = self.ranges[s]
                x[lo:hi] = m.body if isinstance(x, np.ndarray) else self.xp.asarray(m.body)  # type: ignore[attr-defined]
            if body:  # the version of the model now held (an ACK carries no model)
                self.versions[s] = m.h[3]
            self.flags |= int(m.h[4])
            self.seen_flags |= int(m.h[4])
            if s == 0 and m.h[1] != -1:
                self.stop_step = int(m.h[1])
            if op & ACK:
                self.stopping = bool(op & STOP)
                self.ack_step = int(m.h[7])
            if op & FINAL and self.first:
                self.staleness.append(m.f[9:15].copy())
            left -= 1
        t1 = tr.now()
        tr.record(self._step, WAIT, t0, t1)
        tr.record(self._step, PS_EXCHANGE, self._t0, t1, self._sent_bytes)

    def drain_evals(self) -> list[tuple[int, np.ndarray]]:
        """The evaluations received so far (first worker), oldest first; forgets them."""
        out, self.evals = self.evals, []
        return out

    @staticmethod
    def header_bytes() -> int:
        return HEADER_BYTES


__all__ += ["ACK", "DONE", "EVAL", "FINAL", "PULL", "PUSH", "QUIESCE", "STOP"]
