"""Compressed gossip: neighbours exchange quantized differences, DCD-PSGD style.

One round is lines 6-10 of Algorithm 2 (D-Quantized-PR-SGD) of
Quantized-PR-SGD (Wu et al., arXiv:2004.09125), for worker m with weights W (row m: W_mm and W_mj over
its in-neighbours j). Every rank keeps public copies: ``own`` = x~^(m) and
``copies[j]`` = x~^(j) for each in-neighbour j, identical to what j holds as its own
(all start from the same point, exchanged once uncompressed at construction). Given
the rank's model after its local steps, x = x_{n;K} (and x_{n;0} = x~^(m)):

    x_half = sum_j W_mj x~^(j) - x~^(m) + x        (line 7; the sum includes j = m)
    g^(m)  = Q(x~^(m) - x_half)                     (line 8; encoded, sent to out-neighbours)
    x~^(j) <- x~^(j) - g^(j)  for j = m and every in-neighbour j   (line 10)

and the rank continues from x~^(m): ``finish`` returns the new ``own``. Every copy
of x~^(m), on m and on its neighbours, subtracts the same decoded g^(m), so the
copies never drift apart; only Q's error enters the model (DCD-PSGD, Tang et al.
2018). With the identity codec the round is x <- W-mixing of the copies plus the local
progress, i.e. plain gossip of the models (the D-PSGD update), up to rounding.

The arithmetic is literal and in a fixed order (x_half = W_mm own, then + W_mj
copies[j] for ascending j, each product rounded then added, then - own, then + x;
g = own - x_half), so a serial simulator repeats it bit for bit.

Transport: point-to-point. ``start`` encodes and posts, to every out-neighbour, an
Isend of the payload length (int64) and an Isend of the payload, and an Irecv of
each in-neighbour's length; when the lengths have arrived (``test`` or ``finish``),
the payload Irecvs are posted into per-neighbour byte buffers that grow to the
largest message seen and are then reused. The sends are waited on with the payload
receives, never before them, so no rendezvous send can block a rank that has not
posted its receive yet. Rounds never overlap, so two tags suffice.

Static topologies only (a time-varying W would need copies of every model any round
ever mixes; mpiml refuses it). Slack gamma works: W' = (1 - gamma) I + gamma W.
Events: ``codec_compile`` (once, at construction: the codec's kernels readied, one
compile per node, :func:`~.lengths_first.warm_up`), ``encode``, ``compressed_gossip`` (start to observed completion, nbytes =
bytes sent: out-degree x (payload + 8)), ``decode``, ``wait``, and per message a
``send`` per out-neighbour and a ``recv`` per in-neighbour (post to the round's
observed completion; nbytes = payload + 8: the length and the payload are one
message, counted once), with ``msg`` = the running count of rounds' messages to (from)
that peer. They pair up by (source, destination, msg): each round sends one length
and one payload per pair, on two tags, and on one (comm, tag) MPI never lets a message
overtake an earlier one from the same sender; rounds never overlap. The initial
uncompressed exchange at construction is not traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, to_host
from ..compress import Codec
from ..kinds import register_kind
from ..trace import Trace
from .base import Messages
from .gossip import check_workers, mixing_row
from .lengths_first import DECODE, ENCODE, LengthsFirst, grow

__all__ = ["CompressedGossip"]

_TAG_LEN = 0x6056
_TAG_PAYLOAD = 0x6057
_TAG_INIT = 0x6058

COMPRESSED_GOSSIP = register_kind(
    "compressed_gossip",
    "in_flight",
    "a compressed gossip round (DCD), start to observed completion; nbytes = out-degree x (payload + 8)",
)


class CompressedGossip(LengthsFirst):
    """Algorithm 2 rounds of a flat model over a static ``schedule``, compressed with
    ``codec``; collective over ``comm`` at construction (one uncompressed exchange of
    ``x0``) and per round."""

    name = "compressed_gossip"

    def __init__(
        self,
        comm: MPI.Comm,
        x0: Array,
        schedule: Any,
        codec: Codec,
        xp: Any = np,
        gamma: float = 1.0,
        trace: Trace | None = None,
        progress: str = "test",
        stream: Sequence[int] | None = None,
    ) -> None:
        super().__init__(comm, int(x0.size), x0.dtype, codec, xp, trace, progress, stream)
        if not schedule.static:
            raise ValueError(
                "compressed gossip needs a static topology (a time-varying W would need copies "
                "of every model any round mixes)"
            )
        check_workers(schedule, comm)
        rank = self.rank
        top = schedule.at(0)
        self.self_weight, self.w_in = mixing_row(top, rank, gamma)
        self.peers = [j for j, _ in self.w_in]
        self.outs = list(top.out_neighbors(rank))
        k = len(self.w_in)
        self.own = xp.array(x0, copy=True)
        self.copies = xp.empty((max(k, 1), self.size), dtype=self.dtype)
        self._half = xp.empty(self.size, dtype=self.dtype)
        self._tmp = xp.empty(self.size, dtype=self.dtype)
        self._g = np.empty(self.size, dtype=self.dtype)  # decoded messages (host)
        self._gdev: Any = self._g if xp is np else xp.empty(self.size, dtype=self.dtype)
        self._len = np.zeros(1, dtype=np.int64)
        self._lens = np.zeros(max(k, 1), dtype=np.int64)
        self._rbufs = [np.empty(0, dtype=np.uint8) for _ in range(k)]
        self._payload = np.empty(0, dtype=np.uint8)
        self._sends: list[MPI.Request] = []
        self._phase = 0
        self.messages = Messages(self.trace, comm.Get_size())
        self._exchange_initial(x0)

    def _exchange_initial(self, x0: Array) -> None:
        """copies[j] <- x0 of in-neighbour j (one uncompressed exchange, blocking; into
        the copies directly on the host, through one host buffer for device copies)."""
        host = np.ascontiguousarray(to_host(x0))
        on_host = isinstance(self.copies, np.ndarray)
        recv = self.copies if on_host else np.empty(self.copies.shape, dtype=self.dtype)
        reqs = [self.comm.Irecv(recv[i], source=j, tag=_TAG_INIT) for i, j in enumerate(self.peers)]
        reqs += [self.comm.Isend(host, dest=j, tag=_TAG_INIT) for j in self.outs]
        MPI.Request.Waitall(reqs)
        if not on_host:
            self.copies.set(recv)

    def difference(self, x: Array) -> Array:
        """x~^(m) - x_half (lines 7-8 before Q), in the protocol's scratch buffer."""
        xp, half, tmp = self.xp, self._half, self._tmp
        xp.multiply(self.own, self.self_weight, out=half)
        for i, (_, w) in enumerate(self.w_in):
            xp.multiply(self.copies[i], w, out=tmp)
            half += tmp
        half -= self.own
        half += x
        xp.subtract(self.own, half, out=half)
        return half

    def start(self, x: Array, step: int = 0, *, snapshot: bool = False, round: int | None = None) -> None:
        """Compute g^(m) = Q(x~^(m) - x_half) from the local model ``x`` and post the
        round (``snapshot`` is implied: ``x`` is not read after ``start``). The codec is
        reseeded for message ``round`` (``step`` when no round is given); the topology is
        static, so the round picks no matrix."""
        self._check(x)
        self._begin(step)
        t0 = self.trace.now()
        payload = self._encode(self.difference(x), step if round is None else round)
        self.codec.decode(payload, out=self._g)  # what every copy of x~^(m) will subtract
        self._payload = payload
        t1 = self.trace.now()
        self.trace.record(step, ENCODE, t0, t1, int(payload.size))
        self._t_start = t1
        self._len[0] = payload.size
        self._phase = 0
        lens = [
            self.comm.Irecv(self._lens[i : i + 1], source=j, tag=_TAG_LEN) for i, j in enumerate(self.peers)
        ]
        self._sends = [self.comm.Isend(self._len, dest=j, tag=_TAG_LEN) for j in self.outs]
        self._sends += [self.comm.Isend([payload, MPI.BYTE], dest=j, tag=_TAG_PAYLOAD) for j in self.outs]
        self._posted(lens)
        self.trace.sent(len(self.outs) * (int(payload.size) + 8))

    def _post_payloads(self) -> None:
        reqs = []
        for i, j in enumerate(self.peers):
            n = int(self._lens[i])
            self._rbufs[i] = grow(self._rbufs[i], n)
            reqs.append(self.comm.Irecv([self._rbufs[i][:n], MPI.BYTE], source=j, tag=_TAG_PAYLOAD))
        self._reqs = reqs + self._sends
        self._phase = 1

    def _subtract(self, target: Array) -> None:
        if self._gdev is not self._g:
            self._gdev.set(self._g)
        target -= self._gdev

    def finish(self, step: int | None = None) -> Array:
        """Wait, apply every g^(j) to its copy (ascending j) and g^(m) to ``own``;
        return ``own`` (x~_{n+1}^(m), owned by the protocol)."""
        t0 = self.trace.now()
        self._stop_thread()
        self._wait_all()
        blocked = self.trace.now() - t0
        t1 = self.trace.now()
        self._subtract(self.own)  # self._g holds g^(m), decoded in start
        for i in range(len(self.peers)):
            self.codec.decode(self._rbufs[i][: int(self._lens[i])], out=self._g)
            self._subtract(self.copies[i])
        self.trace.record(self.step if step is None else step, DECODE, t1, self.trace.now())
        assert self._t_done is not None
        t_post, t_done, msgs, sent = self._t_start, self._t_done, self.messages, int(self._payload.size) + 8
        for i, j in enumerate(self.peers):  # in the order the receives were posted
            msgs.recv(self.step, j, t_post, t_done, int(self._lens[i]) + 8)
        for j in self.outs:  # in the order the sends were posted
            msgs.send(self.step, j, t_post, t_done, sent)
        self._done(COMPRESSED_GOSSIP, len(self.outs) * sent, step, t0, blocked)
        self._sends = []
        return self.own

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The public copies (a checkpoint needs them to resume bit for bit)."""
        return {"own": to_host(self.own).copy(), "copies": to_host(self.copies).copy()}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        if arrays["copies"].shape != self.copies.shape:
            raise ValueError(
                f"compressed gossip: checkpoint holds {arrays['copies'].shape[0]} neighbour copies, "
                f"this topology needs {self.copies.shape[0]}"
            )
        self.own[...] = self.xp.asarray(arrays["own"])
        self.copies[...] = self.xp.asarray(arrays["copies"])
