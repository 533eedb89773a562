"""Bounded FIFO channels between two ranks: a pipeline's activations (stage k -> k+1) and
error gradients (k+1 -> k), point to point, split-phase, on buffers allocated once.

A channel of depth D from rank a to rank b is a :class:`Sender` on a and a
:class:`Receiver` on b, on one (communicator, tag). Every message is one byte buffer:
a 16-byte header (int64 micro-batch id, int64 rows) and ``rows x width`` values of the
model's dtype (a message of 0 rows is an end mark, used by evaluation).

- The receiver keeps D receives preposted, one per buffer of a ring, and hands messages
  out in the order they were sent (MPI's non-overtaking rule on one communicator and
  tag: the sender's n-th message matches the receiver's n-th posted receive, which is
  ring slot n mod D). A slot is posted again only when its message has been used
  (:meth:`Receiver.release`).
- The sender has D send buffers in a ring; :meth:`Sender.send` copies the array into the
  next one and starts an Isend. When that buffer's previous Isend has not completed (D
  messages unreceived), it waits first: a send into a full channel blocks, as in the
  schedule simulator (:func:`mpiml.pipeline.simulate`). An MPI library may buffer more
  (eager sends); that only adds slack, never a wait.

So compute overlaps transfer: a send returns once its Isend is started, and the next
message's receive is posted long before it is needed; :meth:`Sender.poll` and
:meth:`Receiver.poll` (MPI_Testall) progress them between layers.

Checkpoints: :meth:`Receiver.drain` waits for ``n`` messages already sent and keeps
copies of them in a local FIFO (:meth:`Receiver.state`), which :meth:`Receiver.take`
serves before anything that arrives later; :meth:`Receiver.load` restores it. With every
sender flushed (:meth:`Sender.flush`) nothing is in flight, and a resumed run continues
from exactly the messages that were queued.

Events (per message, :class:`~mpiml.protocols.base.Messages` ids, so a report pairs each
send with its receive): ``send`` (starting the Isend), ``recv`` (the wait for the
message), ``pipe_wait`` (the same wait, in the wait category: the time a stage idles for
its input or gradient; the progress line's ``wait``), ``pipe_full`` (a send waiting for room).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, to_host
from ..kinds import register_kind
from ..trace import Trace
from .base import Messages

__all__ = ["FULL", "HEADER", "IDLE", "Receiver", "Sender"]

HEADER = 16  # bytes: int64 micro-batch id, int64 rows
IDLE = register_kind(
    "pipe_wait",
    "wait",
    "a pipeline stage waiting for a message it needs next (its input or a gradient): idle",
)
FULL = register_kind(
    "pipe_full", "wait", "a pipeline send waiting for room in a full channel (all its buffers unreceived)"
)


def _buffers(depth: int, width: int, max_rows: int, dtype: np.dtype) -> list[np.ndarray]:
    if depth < 1:
        raise ValueError(f"a channel needs depth >= 1 (got {depth})")
    nbytes = HEADER + max_rows * width * np.dtype(dtype).itemsize
    return [np.zeros(nbytes, dtype=np.uint8) for _ in range(depth)]


class _End:
    """What both ends share: communicator, peer, tag, message geometry, ids."""

    def __init__(
        self,
        comm: MPI.Comm,
        peer: int,
        tag: int,
        depth: int,
        width: int,
        max_rows: int,
        dtype: Any,
        trace: Trace,
        messages: Messages,
    ) -> None:
        self.comm, self.peer, self.tag, self.depth = comm, peer, tag, depth
        self.width, self.max_rows, self.dtype = int(width), int(max_rows), np.dtype(dtype)
        self.trace, self.messages = trace, messages
        self.bufs = _buffers(depth, self.width, self.max_rows, self.dtype)
        self.reqs: list[MPI.Request] = [MPI.REQUEST_NULL] * depth

    def _data(self, buf: np.ndarray, rows: int) -> np.ndarray:
        n = rows * self.width * self.dtype.itemsize
        return buf[HEADER : HEADER + n].view(self.dtype).reshape(rows, self.width)

    def poll(self) -> None:
        """Progress the requests in flight (never waits)."""
        MPI.Request.Testall(self.reqs)  # a completed send is done with


class Sender(_End):
    """The sending end of a channel (see the module docstring). Local construction."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.next = 0

    def send(self, step: int, mb: int, a: Array | None) -> None:
        """Send micro-batch ``mb``'s array ``a`` (shape (rows, width), rows <= max_rows,
        numpy or cupy; None: an end mark of 0 rows). Returns once the Isend is started
        (the array is copied first: the caller may reuse it at once); waits first while
        the channel is full."""
        rows = 0 if a is None else int(a.shape[0])
        if a is not None and (a.ndim != 2 or a.shape[1] != self.width or rows > self.max_rows):
            raise ValueError(
                f"channel to rank {self.peer}: a message is at most ({self.max_rows}, {self.width}) "
                f"(got shape {tuple(a.shape)})"
            )
        i = self.next
        self.next = (i + 1) % self.depth
        t0 = self.trace.now()
        if self.reqs[i] != MPI.REQUEST_NULL:
            self.reqs[i].Wait()
            t1 = self.trace.now()
            self.trace.record(step, FULL, t0, t1, peer=self.peer)
            t0 = t1
        buf = self.bufs[i]
        head = buf[:HEADER].view(np.int64)
        head[0], head[1] = mb, rows
        if a is not None:
            out = self._data(buf, rows)
            if isinstance(a, np.ndarray):
                np.copyto(out, a)
            else:
                out[...] = to_host(a)
        nbytes = HEADER + rows * self.width * self.dtype.itemsize
        self.reqs[i] = self.comm.Isend([buf[:nbytes], MPI.BYTE], self.peer, self.tag)
        t1 = self.trace.now()
        self.trace.sent(nbytes)
        self.messages.send(step, self.peer, t0, t1, nbytes)

    def flush(self) -> None:
        """Wait until every message sent has been received (its buffer is free)."""
        MPI.Request.Waitall(self.reqs)
        self.reqs = [MPI.REQUEST_NULL] * self.depth


class Receiver(_End):
    """The receiving end of a channel (see the module docstring). Posts its D receives at
    construction (local)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = 0  # the ring slot of the next message
        self.held: int | None = None  # the slot taken and not yet released
        self.queued: deque[tuple[int, np.ndarray]] = deque()  # drained/restored messages, served first
        self._held_queued = False
        for i in range(self.depth):
            self._post(i)

    def poll(self) -> None:
        """Progress the posted receives (MPI_Request_get_status: a completed receive keeps
        its request, and so its status, until :meth:`take` waits on it)."""
        for req in self.reqs:
            if req != MPI.REQUEST_NULL:
                req.Get_status()

    def _post(self, i: int) -> None:
        self.reqs[i] = self.comm.Irecv([self.bufs[i], MPI.BYTE], self.peer, self.tag)

    def _arrive(self, step: int) -> tuple[int, np.ndarray]:
        """Wait for the message of the head slot (traced: ``pipe_wait`` and its ``recv``);
        its (micro-batch id, rows x width view). RuntimeError when the message is not as
        long as its header says."""
        i = self.head
        t0 = self.trace.now()
        status = MPI.Status()
        self.reqs[i].Wait(status)
        t1 = self.trace.now()
        nbytes = status.Get_count(MPI.BYTE)
        self.trace.record(step, IDLE, t0, t1, peer=self.peer)  # counted as wait (the recv event is not)
        self.messages.recv(step, self.peer, t0, t1, nbytes)
        head = self.bufs[i][:HEADER].view(np.int64)
        mb, rows = int(head[0]), int(head[1])
        if nbytes != HEADER + rows * self.width * self.dtype.itemsize:
            raise RuntimeError(
                f"channel from rank {self.peer}: a message of {nbytes} bytes "
                f"does not hold the {rows} rows its header announces"
            )
        return mb, self._data(self.bufs[i], rows)

    def take(self, step: int, expect: int | None = None) -> tuple[int, np.ndarray]:
        """The next message: (micro-batch id, host array of shape (rows, width)), waiting
        for it. The array stays valid until :meth:`release`. ``expect``: the micro-batch
        id the schedule says comes next (a RuntimeError names both when it differs: the
        ranks do not run the same schedule)."""
        if self.held is not None or self._held_queued:
            raise RuntimeError(f"channel from rank {self.peer}: take() twice without release()")
        if self.queued:
            mb, arr = self.queued[0]
            self._held_queued = True
        else:
            mb, arr = self._arrive(step)
            self.held = self.head
        if expect is not None and mb != expect:
            raise RuntimeError(
                f"channel from rank {self.peer}: micro-batch {mb} arrived where the schedule expects {expect}"
            )
        return mb, arr

    def release(self) -> None:
        """Done with the message :meth:`take` returned: its buffer takes the next one."""
        if self._held_queued:
            self.queued.popleft()
            self._held_queued = False
            return
        if self.held is None:
            raise RuntimeError(f"channel from rank {self.peer}: release() without take()")
        i, self.held = self.held, None
        self._post(i)
        self.head = (i + 1) % self.depth

    def drain(self, step: int, n: int) -> None:
        """Wait for the next ``n`` messages from the MPI buffers (already sent, or about to
        be) and keep copies of them in the local FIFO; their buffers are posted again."""
        for _ in range(n):
            mb, arr = self._arrive(step)
            self.queued.append((mb, arr.copy()))
            self._post(self.head)
            self.head = (self.head + 1) % self.depth

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """The local FIFO as arrays (``<prefix>/mb``, ``<prefix>/rows``, ``<prefix>/data``)."""
        mbs = np.array([mb for mb, _ in self.queued], dtype=np.int64)
        rows = np.array([a.shape[0] for _, a in self.queued], dtype=np.int64)
        data = (
            np.concatenate([a.reshape(-1) for _, a in self.queued])
            if self.queued
            else np.zeros(0, dtype=self.dtype)
        )
        return {f"{prefix}/mb": mbs, f"{prefix}/rows": rows, f"{prefix}/data": data}

    def load(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        """Restore the local FIFO that :meth:`state` saved (ValueError when it does not fit)."""
        mbs, rows, data = arrays[f"{prefix}/mb"], arrays[f"{prefix}/rows"], arrays[f"{prefix}/data"]
        if (
            mbs.shape != rows.shape
            or int(rows.sum()) * self.width != data.size
            or (rows > self.max_rows).any()
        ):
            raise ValueError(
                f"{prefix}: {mbs.size} queued messages do not fit {data.size} values of width {self.width}"
            )
        self.queued.clear()
        at = 0
        for mb, r in zip(mbs.tolist(), rows.tolist(), strict=True):
            n = r * self.width
            self.queued.append(
                (int(mb), np.asarray(data[at : at + n], dtype=self.dtype).reshape(r, self.width).copy())
            )
            at += n

    def cancel(self) -> None:
        """Cancel the receives still posted (at the very end: nothing more will come)."""
        for i, req in enumerate(self.reqs):
            if req != MPI.REQUEST_NULL and i != self.held:
                req.Cancel()
                req.Wait()
        self.reqs = [MPI.REQUEST_NULL] * self.depth
