"""Averaging a flat buffer over a group of ranks known only at run time (SDPIPE's W_k:
1/|S| on the group's block, the identity elsewhere; :mod:`mpiml.protocols.sdpipe` has the
scheduler that forms the groups).

Point to point: every member sends its buffer to every other member (Isend) and receives
theirs into receive buffers allocated once (Irecv), all posted before any wait, so no
order of arrival can deadlock (each member posts all its sends and receives for a group,
and a member's groups come in the order the scheduler closed them, the same order on
every member; MPI's non-overtaking rule keeps two groups' messages between a pair
apart on one tag). The average is summed in the members' ascending order and divided by
|S|: every member computes the same bits, and a serial replay does too
(:func:`average_of`). No communicator is created on the hot path. Cost: |S| - 1 sends of
the whole buffer per member (an AllReduce moves about 2 buffers; groups are small when
they matter, and P is small).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mpi4py import MPI

from ..backend import Array, is_device_array
from ..kinds import register_kind
from ..trace import Trace
from .base import FLOATS, WAIT, Messages, check_spec

__all__ = ["AVG_TAG", "GROUP_AVG", "GroupAverage", "average_of"]

AVG_TAG = 52

GROUP_AVG = register_kind(
    "group_average", "communication", "SDPIPE: averaging a stage's parameters over its group"
)


class GroupAverage:
    """Average a flat buffer of ``size`` values of ``dtype`` over a group of the ranks of
    ``comm`` (member i = rank i of ``comm``; the caller's own rank is a member).

    Point to point on tag AVG_TAG of ``comm`` (give it a communicator of its own, e.g. a
    Dup of the stage's replicas); receive buffers for every other rank allocated once
    (``n x size``: a row per rank, this rank's own row the send buffer). Split-phase: :meth:`start` copies the buffer and posts every
    send and receive; :meth:`finish` waits and writes the average into the array passed
    to :meth:`start`. Host buffers (a device array is copied into its send row and the
    average copied back into it: no allocation per average).
    ``world_ranks[i]``: the rank the trace names for member i (default i), so that sends
    and receives pair up with the job's other messages (ids on a channel of their own)."""

    def __init__(
        self,
        comm: MPI.Comm,
        size: int,
        dtype: Any,
        trace: Trace | None = None,
        world_ranks: Sequence[int] | None = None,
        world_size: int = 0,
    ) -> None:
        self.comm, self.n, self.rank = comm, comm.Get_size(), comm.Get_rank()
        self.names = list(world_ranks) if world_ranks is not None else list(range(self.n))
        self.size, self.dtype = check_spec("group_average", size, dtype, FLOATS)  # ValueError
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.bufs = np.zeros((self.n, self.size), dtype=self.dtype)  # row i: member i's (own row: the send)
        self.acc = np.zeros(self.size, dtype=self.dtype)
        self.messages = Messages(self.trace, max(world_size, max(self.names) + 1))
        self._reqs: list[MPI.Request] = []
        self._members: list[int] = []
        self._x: Array | None = None
        self._t0 = 0.0
        self._step = 0

    def start(self, x: Array, members: Sequence[int], step: int = 0) -> None:
        """Begin averaging ``x`` (flat, ``size`` values) over ``members`` (ascending ranks
        of ``comm``, this rank among them). ValueError for a bad group."""
        ms = [int(m) for m in members]
        if self.rank not in ms or ms != sorted(set(ms)) or ms[0] < 0 or ms[-1] >= self.n:
            raise ValueError(
                f"a group must list ascending ranks of 0..{self.n - 1} including {self.rank} (got {ms})"
            )
        if self._members:
            raise RuntimeError("GroupAverage.start() while the previous average is in flight")
        self._members, self._x, self._step = ms, x, step
        self._t0 = t0 = self.trace.now()
        own = self.bufs[self.rank]
        if is_device_array(x):
            x.get(out=own)  # into the send row: no temporary host copy
        else:
            own[...] = x
        reqs = []
        for m in ms:
            if m != self.rank:
                reqs.append(self.comm.Irecv(self.bufs[m], source=m, tag=AVG_TAG))
        for m in ms:
            if m != self.rank:
                reqs.append(self.comm.Isend(own, dest=m, tag=AVG_TAG))
                self.messages.send(step, self.names[m], t0, t0, own.nbytes)
                self.trace.sent(own.nbytes)
        self._reqs = reqs

    def finish(self) -> Array:
        """Wait; write (sum over members in ascending order) / |S| into ``x``; return it."""
        ms, x = self._members, self._x
        assert x is not None and ms
        t0 = self.trace.now()
        MPI.Request.Waitall(self._reqs)
        t1 = self.trace.now()
        for m in ms:
            if m != self.rank:
                self.messages.recv(self._step, self.names[m], t0, t1, self.bufs[m].nbytes)
        if len(ms) > 1:
            acc = self.acc
            acc[...] = self.bufs[ms[0]]
            for m in ms[1:]:
                acc += self.bufs[m]
            acc /= self.dtype.type(len(ms))
            if is_device_array(x):
                x.set(acc)  # back into the device array: no new device allocation per average
            else:
                x[...] = acc
        self.trace.record(
            self._step, GROUP_AVG, self._t0, self.trace.now(), self.bufs[self.rank].nbytes * (len(ms) - 1)
        )
        self.trace.record(self._step, WAIT, t0, t1)
        self._reqs, self._members, self._x = [], [], None
        return x

    def run(self, x: Array, members: Sequence[int], step: int = 0) -> Array:
        self.start(x, members, step)
        return self.finish()


def average_of(buffers: Sequence[np.ndarray], members: Sequence[int]) -> np.ndarray:
    """What :class:`GroupAverage` computes, serially: (sum in ascending member order) / |S|
    (a replay uses it)."""
    acc = np.array(buffers[members[0]], copy=True)
    for m in members[1:]:
        acc += buffers[m]
    if len(members) > 1:
        acc /= acc.dtype.type(len(members))
    return acc
