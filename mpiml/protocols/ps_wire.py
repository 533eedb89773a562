"""The parameter server's wire format: shards, message header, operations, tags.

A worker and a server exchange one kind of message each way, on the parameter
server's own communicator (a ``Dup`` of the job's world, so no other traffic can
match them):

- tag :data:`REQ`, worker -> server: a request, a flat byte buffer of a
  :data:`HEADER_BYTES`-byte header and, when it pushes, the shard's values;
- tag :data:`REPLY`, server -> worker: a reply, the header and, when it carries the
  model, a snapshot of the shard.

One tag each way means MPI's non-overtaking rule orders everything one worker sends
to one server (a push before the pull that follows it: a worker reads its own
writes), and everything one server sends to one worker. The header is 16 slots of 8
bytes, read as int64 (``h``) or float64 (``f``) views of the same bytes:

====  =====================================================================
slot  request (worker -> server) / reply (server -> worker)
====  =====================================================================
0     operation bits (:data:`PUSH`, :data:`PULL`, ...)
1     steps the worker has completed / reply: the agreed stop step (-1: none;
      :data:`STOP_NOW`: every worker stops after the step it is in)
2     the worker's clock: pushes made so far, this one included
3     push: the shard version the update was computed from / reply: the
      shard's version (updates applied) in this snapshot
4     stop-request bits seen by the sender (OR of every rank's)
5     request: the step of the evaluation these sums belong to (0: none)
      / reply (:data:`EVAL`): the step the sums belong to
6     DONE: updates this worker pushed to this shard in the whole run
7     QUIESCE: the step to checkpoint at
8     push: this step's minibatch loss (float64)
9-15  evaluation sums (float64): loss sum, loss count, test loss sum, correct,
      test rows, bytes sent / a FINAL reply to the first worker: staleness
      count, mean, median, p95, max of the shard
====  =====================================================================
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ACK",
    "DONE",
    "EVAL",
    "FINAL",
    "HEADER_BYTES",
    "HEADER_SLOTS",
    "PULL",
    "PUSH",
    "QUIESCE",
    "REPLY",
    "REQ",
    "STOP",
    "STOP_NOW",
    "Message",
    "shard_ranges",
]

REQ, REPLY = 31, 32  # tags on the parameter server's communicator

# operation bits (slot 0)
PUSH = 1  # the body holds an update of the shard
PULL = 2  # answer with the shard (once the staleness bound allows)
QUIESCE = 4  # the worker has completed the step in slot 7: checkpoint there once all have
DONE = 8  # the worker has finished the run (slot 6: its pushes to this shard)
EVAL = 16  # reply only: evaluation sums of every worker (slots 9-14) for the step in slot 5
FINAL = 32  # reply to DONE: the shard's final values
ACK = 64  # reply to QUIESCE: every worker has completed the step; checkpoint now
STOP = 128  # with QUIESCE / ACK: the checkpoint is a stop, return after it
STOP_NOW = -2  # reply slot 1: no staleness bound, so each worker stops at its own step

HEADER_SLOTS = 16
HEADER_BYTES = 8 * HEADER_SLOTS
EVAL_SLOTS = slice(9, 15)  # loss sum, loss count, test loss sum, correct, test rows, bytes sent


def shard_ranges(d: int, servers: int) -> list[tuple[int, int]]:
    """The parameter shards: ``servers`` contiguous ranges ``[lo, hi)`` covering
    ``0 .. d-1``, balanced by size. When ``servers`` does not divide ``d``, the first
    ``d % servers`` shards hold one element more (sizes ``d // servers + 1``, then
    ``d // servers``), as numpy's ``array_split`` cuts.

    >>> shard_ranges(10, 3)
    [(0, 4), (4, 7), (7, 10)]

    Raises ``ValueError`` unless ``1 <= servers <= d`` (a shard is never empty).
    """
    if servers < 1 or servers > d:
        raise ValueError(f"shard_ranges: need 1 <= servers <= d (got servers={servers}, d={d})")
    base, extra = divmod(d, servers)
    out, lo = [], 0
    for s in range(servers):
        hi = lo + base + (1 if s < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class Message:
    """One message buffer (allocated once): ``HEADER_BYTES`` of header then ``n`` values
    of ``dtype``, as a flat uint8 array ``raw`` for MPI, with views ``h`` (int64 header),
    ``f`` (float64 header) and ``body`` (the values). ``nbytes(with_body)`` is the
    length sent."""

    __slots__ = ("body", "f", "h", "raw")

    def __init__(self, n: int, dtype: np.dtype) -> None:
        self.raw = np.zeros(HEADER_BYTES + n * dtype.itemsize, dtype=np.uint8)
        self.h = self.raw[:HEADER_BYTES].view(np.int64)
        self.f = self.raw[:HEADER_BYTES].view(np.float64)
        self.body = self.raw[HEADER_BYTES:].view(dtype)

    def clear(self) -> None:
        """Zero the header (the body is left as it is)."""
        self.h[:] = 0

    def nbytes(self, with_body: bool) -> int:
        return int(self.raw.size) if with_body else HEADER_BYTES
