"""AllReduce of compressed payloads: every rank ends with the mean (or sum) of all
ranks' *decoded* messages (Quantized-PR-SGD (Wu et al., arXiv:2004.09125), Algorithm 1 lines 7-9:
"Send g to all other nodes; receive g^(j) for all j; Delta <- (1/M) sum_j g^(j)").

Payloads differ in length from rank to rank (QSGD's Elias code, top-k of a varying
k), so one operation is two nonblocking collectives on ``comm``:

1. ``MPI_Iallgather`` of the payload lengths (one int64 per rank);
2. once those are known, ``MPI_Iallgatherv`` of the payload bytes into one receive
   buffer, displacements from the lengths.

Then every rank decodes the M payloads in rank order and adds them up in that order
(``acc = D(p_0); acc += D(p_1); ...``), divides by M for the mean. The result is
therefore the same on every rank, bit for bit, and does not depend on the MPI
library's reduction order: with the ``identity`` codec it equals a plain AllReduce
wherever the sum's association does not matter (2 ranks, or exactly representable
sums), and a serial reference that adds in rank order everywhere.

Split-phase like every protocol: ``start`` encodes (traced as ``encode``, category
``codec``) and posts
step 1; ``test`` moves step 1 into step 2 when the lengths have arrived (so the
``test`` and ``thread`` progress modes drive both); ``finish`` waits and decodes
(traced as ``decode``, category ``codec``). The encode happens in ``start``, so the payload is a snapshot:
the caller may change ``x`` at once. Buffers: the result, one decode scratch and the
lengths are allocated once; the byte buffer grows to the largest total seen and is
reused from then on. Device (cupy) arrays are encoded and decoded on the host (the
codecs are host code) and the result is copied back once.

Bytes: ``nbytes`` of the ``compressed_allreduce`` event and the rank's ``bytes_sent``
count what this rank contributes, its payload plus the 8-byte length, as a plain
AllReduce counts its buffer; the Allgatherv then delivers that payload to the M - 1
other ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array
from ..compress import Codec
from ..kinds import register_kind
from ..trace import Trace
from .lengths_first import DECODE, ENCODE, LengthsFirst, grow

__all__ = ["CompressedAllReduce"]

COMPRESSED_ALLREDUCE = register_kind(
    "compressed_allreduce",
    "in_flight",
    "a compressed AllReduce (lengths, then Allgatherv of payloads), start to observed completion",
)


class CompressedAllReduce(LengthsFirst):
    """Mean (``op="mean"``) or sum of the ranks' ``codec``-decoded buffers of ``size``
    elements of ``dtype``; collective over ``comm``, construction included (the codec's
    kernels are readied there, one compile per node: :func:`~.lengths_first.warm_up`)."""

    name = "compressed_allreduce"

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        codec: Codec,
        xp: Any = np,
        op: str = "mean",
        trace: Trace | None = None,
        progress: str = "test",
        stream: Sequence[int] | None = None,
    ) -> None:
        super().__init__(comm, size, dtype, codec, xp, trace, progress, stream)
        if op not in ("sum", "mean"):
            raise ValueError(f"op must be 'sum' or 'mean' (got {op!r})")
        self.op = op
        self.recvbuf = xp.empty(size, dtype=self.dtype)
        self._acc = self.recvbuf if xp is np else np.empty(size, dtype=self.dtype)
        self._tmp = np.empty(size, dtype=self.dtype)
        self._len = np.zeros(1, dtype=np.int64)
        self._lens = np.zeros(self.n, dtype=np.int64)
        self._displs = np.zeros(self.n, dtype=np.int64)  # where each rank's payload starts
        self._bytes = np.empty(0, dtype=np.uint8)
        self._payload = np.empty(0, dtype=np.uint8)
        self._phase = 0

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False) -> None:
        """Encode ``x`` (the codec reseeded for message ``step``) and post the exchange
        of lengths (``snapshot`` is implied)."""
        self._check(x)
        self._begin(step)  # refuses a second operation before the codec's state moves
        t0 = self.trace.now()
        self._payload = self._encode(x, step)
        t1 = self.trace.now()
        self.trace.record(step, ENCODE, t0, t1, int(self._payload.size))
        self._t_start = t1
        self._len[0] = self._payload.size
        self._phase = 0
        self._posted([self.comm.Iallgather(self._len, self._lens)])
        self.trace.sent(int(self._payload.size) + 8)

    def _post_payloads(self) -> None:
        """Step 2: the lengths are known; post the Allgatherv of the payloads."""
        lens = self._lens
        self._bytes = grow(self._bytes, int(lens.sum()))
        np.cumsum(lens[:-1], out=self._displs[1:])
        recv = [self._bytes, (lens.tolist(), self._displs.tolist()), MPI.BYTE]
        self._reqs = [self.comm.Iallgatherv([self._payload, MPI.BYTE], recv)]
        self._phase = 1

    def payload(self, rank: int) -> np.ndarray:
        """Rank ``rank``'s payload of the last finished operation (a view)."""
        off = int(self._displs[rank])
        return self._bytes[off : off + int(self._lens[rank])]

    def finish(self, step: int | None = None) -> Array:
        """Wait, decode the M payloads in rank order and return their mean (or sum), in
        the protocol's buffer (the caller's until the next ``start``)."""
        t0 = self.trace.now()
        self._stop_thread()
        self._wait_all()
        blocked = self.trace.now() - t0
        t1 = self.trace.now()
        acc, tmp = self._acc, self._tmp
        for j in range(self.n):
            if j == 0:
                self.codec.decode(self.payload(0), out=acc)
            else:
                acc += self.codec.decode(self.payload(j), out=tmp)
        if self.op == "mean" and self.n > 1:
            acc /= self.n  # divide, not multiply by 1/n, as AllReduce does
        if acc is not self.recvbuf:
            self.recvbuf.set(acc)  # cupy: one host-to-device copy
        self.trace.record(self.step if step is None else step, DECODE, t1, self.trace.now())
        self._done(COMPRESSED_ALLREDUCE, int(self._payload.size), step, t0, blocked)
        return self.recvbuf
