"""AllReduce: every rank ends with the sum (or mean) of all ranks' buffers.

Blocking (``run``: one MPI_Allreduce, no extra copy) and split-phase (``start``:
MPI_Iallreduce; ``test``: MPI_Test, which progresses it; ``finish``: MPI_Wait).
Receive (and, for snapshots, send) buffers are allocated once, at construction,
for one size and dtype. Device arrays are handed to a CUDA-aware MPI directly or
staged through reused host buffers (``backend.Staging``).

Events: ``allreduce`` spans a blocking ``run``; ``iallreduce`` spans a split-phase
operation from ``start`` to its observed completion (the rank computed meanwhile),
recorded at the step it was started (nbytes = payload size, both); ``wait`` spans the time ``finish`` blocked,
recorded at the step that finished it. How a started operation progresses in the
meantime is ``progress`` (see :mod:`mpiml.protocols.progress`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, Staging
from ..kinds import register_kind
from ..trace import Trace
from .base import FLOATS, INTEGERS, Protocol

__all__ = ["AllReduce"]

ALLREDUCE = register_kind("allreduce", "communication", "a blocking AllReduce; nbytes = payload")
IALLREDUCE = register_kind(
    "iallreduce", "in_flight", "a split-phase AllReduce, start to observed completion; nbytes = payload"
)


class AllReduce(Protocol):
    """AllReduce of a flat buffer of ``size`` elements of ``dtype``; collective over ``comm``.

    ``op`` is "sum" or "mean" (sum, then divided by n in place). ``dtype``: float16,
    float32 or float64; a sum also carries integers (int8 ... uint64), a mean does not
    (its in-place division has no integer result). ``size`` >= 1. Both are checked at
    construction, before any communication (``ValueError`` / ``TypeError`` naming the
    argument, :func:`mpiml.protocols.base.check_spec`).
    """

    name = "allreduce"

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        xp: Any = np,
        op: str = "mean",
        trace: Trace | None = None,
        cuda_aware: bool | None = None,
        progress: str = "test",
    ) -> None:
        if op not in ("sum", "mean"):
            raise ValueError(f"op must be 'sum' or 'mean' (got {op!r})")
        self.op = op  # before the base checks dtype: what is allowed depends on it
        super().__init__(comm, size, dtype, xp, trace, progress)
        self.recvbuf = xp.empty(size, dtype=self.dtype)
        self.sendbuf: Array | None = None  # allocated on the first snapshot, then kept
        self.staging = Staging(cuda_aware)

    def _allowed(self) -> tuple[str, ...]:
        return FLOATS + INTEGERS if self.op == "sum" else FLOATS

    def _scale(self) -> None:
        if self.op == "mean" and self.n > 1:
            # divide, not multiply by 1/n: n equal inputs then average to exactly themselves
            self.recvbuf /= self.n

    def run(self, x: Array, step: int = 0) -> Array:
        self._check(x)
        t0 = self.trace.now()
        send = self.staging.send_view(x, "send")
        recv = self.staging.recv_view(self.recvbuf, "recv")
        self.comm.Allreduce(send, recv, op=MPI.SUM)
        self.staging.finish_recv(self.recvbuf, "recv")
        self._scale()
        t1 = self.trace.now()
        self.trace.record(step, ALLREDUCE, t0, t1, x.nbytes)
        self.trace.sent(x.nbytes)
        return self.recvbuf

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False) -> None:
        self._check(x)
        self._begin(step)
        src = x
        if snapshot:
            if self.sendbuf is None:
                self.sendbuf = self.xp.empty(self.size, dtype=self.dtype)
            self.sendbuf[...] = x
            src = self.sendbuf
        send = self.staging.send_view(src, "send")
        recv = self.staging.recv_view(self.recvbuf, "recv")
        self._posted([self.comm.Iallreduce(send, recv, op=MPI.SUM)])
        self.trace.sent(x.nbytes)

    def finish(self, step: int | None = None) -> Array:
        """Wait for completion; the ``wait`` event is recorded at ``step`` (default:
        the step that started the operation)."""
        t0 = self.trace.now()
        self._stop_thread()
        self._wait_all()
        blocked = self.trace.now() - t0
        self.staging.finish_recv(self.recvbuf, "recv")
        self._scale()
        self._done(IALLREDUCE, self.recvbuf.nbytes, step, t0, blocked)
        return self.recvbuf
