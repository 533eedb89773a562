"""SDPIPE's protocol (Miao et al., "SDPipe: A Semi-Decentralized Framework for
Heterogeneity-aware Pipeline-parallel Training", VLDB 2023; the appendix's update
X_{k+1} = (X_k - eta G_k) W_k): replicas of one stage average in groups of the ready ones,
which a central scheduler chooses.

Three parts, on one communicator each side agrees on (the training program's world Dup,
the mixing tool's world):

- :class:`GroupScheduler` (the scheduler rank): a service loop, one
  :class:`~mpiml.pipeline.groups.StageGroups` per stage, serving ready signals in arrival
  order (one receive preposted per worker; completed ones taken in the order
  ``MPI_Testsome`` returns them, oldest first). A ready signal is 6 float64 values
  (stage, replica, batch id, step, stop-request bits, wait time in ms); the reply 5 + P
  int64 values (the group's sequence number at its stage, its size, why it closed, the
  agreed stop step or -1, the stop-request bits seen, then the members' replica indices,
  ascending, padded with -1).
  Buffers, no pickles. Closed groups are logged (tables ``sdpipe_groups`` and
  ``sdpipe_members``, always kept: a replay needs them).
- :class:`GroupClient` (each worker): split-phase: :meth:`GroupClient.ready` starts the
  ready signal's Isend and the reply's Irecv; the worker steps its optimizer meanwhile;
  :meth:`GroupClient.group` waits for the reply and adapts the wait time
  (:func:`~mpiml.pipeline.groups.next_wait`).
- :class:`~mpiml.protocols.group_average.GroupAverage` (each worker): averages a flat
  buffer over the members, point to point: every member sends its buffer to every other member (Isend) and receives theirs
  into receive buffers allocated once (Irecv), all posted before any wait, so no order of
  arrival can deadlock (every member of a group posts all of its sends and receives for
  that group, and a member's groups come in the order the scheduler closed them, the same
  order on every member). The average is summed in the members' ascending order and
  divided by |S|: every member computes the same bits, and a serial replay does too. No
  communicator is created on the hot path. Cost: |S| - 1 sends of the whole buffer per
  member (an AllReduce moves ~2; groups are small when they matter, and P is small).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
from mpi4py import MPI

from ..kinds import register_kind
from ..pipeline.groups import WHY, Group, StageGroups, next_wait, round_kind
from ..trace import Trace
from .base import Messages
from .group_average import AVG_TAG, GroupAverage, average_of

__all__ = [
    "AVG_DTYPE",
    "AVG_TAG",
    "GROUP_DTYPE",
    "MEMBER_DTYPE",
    "READY_TAG",
    "REPLY_TAG",
    "GroupAverage",
    "GroupClient",
    "GroupScheduler",
    "Reply",
    "average_of",
]

READY_TAG, REPLY_TAG = 50, 51
READY_LEN = 6  # stage, replica, batch, step, stop bits, wait_ms (float64)
REPLY_HEAD = 5  # seq, size, why, stop step, stop bits (int64), then P members

GROUP_WAIT = register_kind(
    "group_wait", "wait", "SDPIPE: a replica waiting for the scheduler to close its group"
)
SCHED_WAIT = register_kind("scheduler_idle", "wait", "SDPIPE's scheduler waiting for a ready signal")

GROUP_DTYPE = np.dtype(
    [
        ("step", "<i8"),  # the round's batch (-1 for a regular group): tables need a step field
        ("stage", "<i4"),
        ("seq", "<i8"),  # the group's number at its stage (0, 1, ...)
        ("size", "<i4"),
        ("kind", "<i1"),  # 0 regular, 1 bound round, 2 sync round
        ("why", "<i1"),  # 0 all ready, 1 deadline, 2 connected (bound round), 3 sync
        ("opened", "<f8"),  # seconds since the run start (the scheduler's clock)
        ("closed", "<f8"),
        ("deadline", "<f8"),  # NaN for a round
    ]
)
MEMBER_DTYPE = np.dtype(
    [("step", "<i8"), ("stage", "<i4"), ("seq", "<i8"), ("replica", "<i4"), ("wait_ms", "<f8")]
)
AVG_DTYPE = np.dtype(  # one row per averaging event, on the worker
    [
        ("step", "<i8"),  # the loop step of the update
        ("batch", "<i8"),
        ("seq", "<i8"),
        ("size", "<i4"),
        ("wait_ms", "<f8"),  # the wait time in force when it sent its ready signal
        ("waited", "<f8"),  # seconds from its ready signal to its reply
    ]
)


class Reply:
    """A worker's group: ``seq`` (its number at the stage), ``members`` (replica indices,
    ascending), ``why`` ("all", "deadline", "connected", "sync"), ``stop_step`` (-1: none)
    and ``stop_bits`` (the stop requests the scheduler has seen)."""

    __slots__ = ("members", "seq", "stop_bits", "stop_step", "why")

    def __init__(self, seq: int, members: list[int], why: str, stop_step: int, stop_bits: int = 0) -> None:
        self.seq, self.members, self.why, self.stop_step = seq, members, why, stop_step
        self.stop_bits = stop_bits


class GroupClient:
    """A worker's side of the scheduler (stage ``stage``, replica ``replica`` of P).

    Not collective: point to point with ``scheduler`` on ``comm`` (tags READY_TAG and
    REPLY_TAG). ``wait_ms`` is the initial wait time (ms, > 0), ``wait_max_ms`` its cap.
    ValueError for a bad argument."""

    def __init__(
        self,
        comm: MPI.Comm,
        scheduler: int,
        P: int,
        stage: int,
        replica: int,
        wait_ms: float,
        wait_max_ms: float,
        trace: Trace | None = None,
    ) -> None:
        if not wait_ms > 0 or not wait_max_ms >= wait_ms:
            raise ValueError(f"need 0 < wait_ms <= wait_max_ms (got {wait_ms}, {wait_max_ms})")
        if not 0 <= replica < P:
            raise ValueError(f"replica must be in 0..{P - 1} (got {replica})")
        self.comm, self.scheduler, self.P = comm, scheduler, P
        self.stage, self.replica = stage, replica
        self.wait_ms, self.wait_max_ms = float(wait_ms), float(wait_max_ms)
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.out = np.zeros(READY_LEN, dtype=np.float64)
        self.inbox = np.zeros(REPLY_HEAD + P, dtype=np.int64)
        self._reqs: list[MPI.Request] = []
        self._t0 = 0.0
        self._step = 0
        self._batch = -1
        self.stop_step = -1
        self.stop_bits = 0
        self.messages = Messages(self.trace, comm.Get_size())

    def ready(self, batch: int, step: int, flags: int = 0) -> None:
        """Send the ready signal for the update of ``batch`` (at loop step ``step``; ``flags``:
        this rank's stop-request bits) and post the reply's receive. Returns at once."""
        if self._reqs:
            raise RuntimeError("GroupClient.ready() while the previous group is not taken")
        self.out[:] = (self.stage, self.replica, batch, step, flags, self.wait_ms)
        self._t0 = self.trace.now()
        self._step, self._batch = step, batch
        self._reqs = [
            self.comm.Irecv([self.inbox, MPI.INT64_T], source=self.scheduler, tag=REPLY_TAG),
            self.comm.Isend([self.out, MPI.DOUBLE], dest=self.scheduler, tag=READY_TAG),
        ]
        self.messages.send(step, self.scheduler, self._t0, self._t0, self.out.nbytes)
        self.trace.sent(self.out.nbytes)

    def group(self) -> Reply:
        """Wait for the group (traced as ``group_wait``); adapt the wait time; log the event."""
        if not self._reqs:
            raise RuntimeError("GroupClient.group() without ready()")
        t0 = self.trace.now()
        MPI.Request.Waitall(self._reqs)
        self._reqs = []
        t1 = self.trace.now()
        self.trace.record(self._step, GROUP_WAIT, t0, t1)
        self.messages.recv(self._step, self.scheduler, t0, t1, self.inbox.nbytes)
        seq, size, why, stop, bits = (int(v) for v in self.inbox[:REPLY_HEAD])
        members = [int(v) for v in self.inbox[REPLY_HEAD : REPLY_HEAD + size]]
        if size < 1 or self.replica not in members:
            raise RuntimeError(f"SDPIPE scheduler sent replica {self.replica} a group {members} without it")
        if stop >= 0:
            self.stop_step, self.stop_bits = stop, bits
        self.trace.add_row(  # wait_ms: the one in force when the ready signal went
            "sdpipe_average",
            AVG_DTYPE,
            (self._step, self._batch, seq, size, self.wait_ms, t1 - self._t0),
            always=True,
        )
        self.wait_ms = next_wait(self.wait_ms, size, self.wait_max_ms)
        return Reply(seq, members, WHY[why], stop, bits)


class GroupScheduler:
    """SDPIPE's scheduler: serves the ready signals of ``workers[k][p]`` (the rank on
    ``comm`` of stage k's replica p) and answers each with its group.

    ``ssp_bound`` (>= 1) and ``sync_every`` (>= 1) place the rounds
    (:func:`~mpiml.pipeline.groups.round_kind`) over a run of ``batches`` batches;
    ``updates_of(k, step)`` is how many updates stage k's replicas have made by the end of
    loop step ``step`` (the scheduler's view of who is done; default: one per step).
    ``flags()``: this rank's own stop-request bits; ``stop_margin``: steps added to the
    furthest step any worker reported when fixing a stop step (every worker hears it
    with its next reply, before it gets there). Not collective; point to point on
    ``comm``."""

    def __init__(
        self,
        comm: MPI.Comm,
        workers: Sequence[Sequence[int]],
        ssp_bound: int,
        sync_every: int,
        batches: int,
        trace: Trace | None = None,
        updates_of: Callable[[int, int], int] | None = None,
        flags: Callable[[], int] | None = None,
        stop_margin: int = 2,
    ) -> None:
        self.comm = comm
        self.workers = [list(w) for w in workers]
        self.K, self.P = len(self.workers), len(self.workers[0])
        if ssp_bound < 1 or sync_every < 1 or batches < 1:
            raise ValueError(
                f"need ssp_bound, sync_every, batches >= 1 (got {ssp_bound}, {sync_every}, {batches})"
            )
        self.ssp_bound, self.sync_every, self.batches = ssp_bound, sync_every, batches
        self.trace = trace if trace is not None else Trace(enabled=False)
        self.updates_of = updates_of if updates_of is not None else (lambda k, s: s + 1)
        self.flags = flags if flags is not None else (lambda: 0)
        self.stop_margin = stop_margin
        self.index: dict[int, tuple[int, int]] = {}
        for k, ranks in enumerate(self.workers):
            if len(ranks) != self.P:
                raise ValueError(f"every stage needs P = {self.P} replicas (stage {k} has {len(ranks)})")
            for p, r in enumerate(ranks):
                self.index[r] = (k, p)
        self.order = [r for ranks in self.workers for r in ranks]  # worker i = k * P + p: one receive each
        n = len(self.order)
        self.inbox = np.zeros((n, READY_LEN), dtype=np.float64)
        self.outbox = np.zeros((n, REPLY_HEAD + self.P), dtype=np.int64)
        # one stage per pipeline: a bound round takes any arrival (nothing else to wait on)
        self.stages = [StageGroups(self.P, ssp_bound, join_any=self.K == 1) for _ in range(self.K)]
        self.seq = np.zeros(self.K, dtype=np.int64)
        self.answered = np.zeros((self.K, self.P), dtype=np.int64)  # updates answered per worker
        self.last_step = np.full((self.K, self.P), -1, dtype=np.int64)
        self.wait_ms = np.zeros((self.K, self.P), dtype=np.float64)  # each worker's wait time, last seen
        self.sizes = np.zeros((self.K, self.P + 1), dtype=np.int64)  # group-size histogram per stage
        self.rounds = np.zeros((self.K, 3), dtype=np.int64)  # closed: regular, bound, sync
        self.stop_step = -1
        self.flags_seen = 0
        self.messages = Messages(self.trace, comm.Get_size())
        self._recv: list[MPI.Request] = [MPI.REQUEST_NULL] * n
        self._send: list[MPI.Request] = [MPI.REQUEST_NULL] * n

    # -- the service loop -----------------------------------------------------------

    def done_through(self, step: int) -> bool:
        """Whether every worker's updates through loop step ``step`` have been answered."""
        return all(int(self.answered[k].min()) >= self.updates_of(k, step) for k in range(self.K))

    def serve(self, until: Callable[[], bool], tick: Callable[[], None] | None = None) -> None:
        """Serve ready signals (and close groups at their deadlines) until ``until()``;
        ``tick()`` after each pass. Receives stay posted between calls (cancelled by
        :meth:`close`)."""
        tr = self.trace
        for i, r in enumerate(self.order):
            if self._recv[i] == MPI.REQUEST_NULL:
                self._recv[i] = self.comm.Irecv([self.inbox[i], MPI.DOUBLE], source=r, tag=READY_TAG)
        idle_since = tr.now()
        next_flags = 0.0
        while not until():
            idx = MPI.Request.Testsome(self._recv) or []
            now = tr.now()
            served = False
            if idx:
                tr.record(int(self.last_step.max()), SCHED_WAIT, idle_since, now)
                # oldest first: Testsome returns completed receives; among those, arrival order is
                # not visible to MPI, so serve them by (step, stage, replica) for repeatability
                for i in sorted(idx, key=lambda i: (self.inbox[i][3], self.inbox[i][0], self.inbox[i][1])):
                    self._ready(i, now)
                    r = self.order[i]
                    self._recv[i] = self.comm.Irecv([self.inbox[i], MPI.DOUBLE], source=r, tag=READY_TAG)
                served = True
            for k, st in enumerate(self.stages):
                for g in st.due(now):
                    self._answer(k, g)
                    served = True
            if tick is not None:
                tick()
            if now >= next_flags:  # this rank's own stop request (a signal, the stop file), every 10 ms
                self._maybe_stop()
                next_flags = now + 0.01
            if served:
                idle_since = tr.now()
            else:
                # yield the core to the ranks that compute: 50 us while a group's deadline is
                # pending (it closes within that of its time), 200 us with none open
                nxt = [d for d in (st.next_deadline() for st in self.stages) if d is not None]
                time.sleep(min(max(min(nxt) - now, 0.0), 50e-6) if nxt else 200e-6)

    def _ready(self, i: int, now: float) -> None:
        stage, replica, batch, step, flags, wait_ms = self.inbox[i]
        k, p = self.index[self.order[i]]
        if (int(stage), int(replica)) != (k, p):
            raise RuntimeError(
                f"SDPIPE scheduler: rank {self.order[i]} (stage {k}, replica {p}) sent a ready signal for "
                f"stage {int(stage)}, replica {int(replica)}"
            )
        self.messages.recv(int(step), self.order[i], now, now, self.inbox[i].nbytes)
        self.last_step[k, p] = int(step)
        self.wait_ms[k, p] = float(wait_ms)
        if int(flags):
            self.flags_seen |= int(flags)
        self._maybe_stop()
        kind = round_kind(int(batch), self.ssp_bound, self.sync_every, self.batches)
        for g in self.stages[k].ready(p, now, float(wait_ms), int(batch), kind):
            self._answer(k, g)

    def _maybe_stop(self) -> None:
        if self.stop_step < 0:
            self.flags_seen |= self.flags()
            if self.flags_seen:
                self.stop_step = int(self.last_step.max()) + 1 + self.stop_margin

    def _answer(self, k: int, g: Group) -> None:
        seq = int(self.seq[k])
        self.seq[k] = seq + 1
        size = len(g.members)
        self.sizes[k, size] += 1
        self.rounds[k, g.kind] += 1
        tr = self.trace
        dl = float("nan") if g.deadline is None else g.deadline
        tr.add_row(
            "sdpipe_groups",
            GROUP_DTYPE,
            (g.batch, k, seq, size, g.kind, WHY.index(g.why), g.opened, g.closed, dl),
            always=True,
        )
        now = tr.now()
        for p in g.members:
            tr.add_row("sdpipe_members", MEMBER_DTYPE, (g.batch, k, seq, p, self.wait_ms[k, p]), always=True)
            i = k * self.P + p
            r = self.order[i]
            if self._send[i] != MPI.REQUEST_NULL:
                self._send[i].Wait()  # the previous reply (received long ago: the worker has sent since)
            out = self.outbox[i]
            out[:REPLY_HEAD] = (seq, size, WHY.index(g.why), self.stop_step, self.flags_seen)
            out[REPLY_HEAD:] = -1
            out[REPLY_HEAD : REPLY_HEAD + size] = g.members
            self._send[i] = self.comm.Isend([out, MPI.INT64_T], dest=r, tag=REPLY_TAG)
            self.messages.send(int(self.last_step[k, p]), r, now, now, out.nbytes)
            tr.sent(out.nbytes)
            self.answered[k, p] += 1

    def close(self) -> None:
        """Cancel the posted receives; complete the replies (end of the run)."""
        for i, req in enumerate(self._recv):
            if req != MPI.REQUEST_NULL:
                req.Cancel()
                req.Wait()
                self._recv[i] = MPI.REQUEST_NULL
        MPI.Request.Waitall(self._send)

    # -- what the run reports ----------------------------------------------------------

    def summary(self) -> str:
        """Group sizes and rounds per stage, one line each (printed at the end of a run)."""
        lines = []
        for k in range(self.K):
            hist = ", ".join(
                f"{s}: {int(self.sizes[k, s])}" for s in range(1, self.P + 1) if self.sizes[k, s]
            )
            n = int(self.sizes[k].sum())
            mean = float((self.sizes[k] * np.arange(self.P + 1)).sum()) / n if n else float("nan")
            reg, bnd, syn = (int(v) for v in self.rounds[k])
            lines.append(
                f"sdpipe stage {k}: {n} groups, mean size {mean:.2f} of P = {self.P} (sizes {hist}); "
                f"{bnd + self.stages[k].met} bound rounds ({self.stages[k].met} met at once), {syn} sync rounds"
            )
        return "\n".join(lines)

    # -- checkpoint ------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {
            "sdpipe/seq": self.seq.copy(),
            "sdpipe/answered": self.answered.copy(),
            "sdpipe/wait_ms": self.wait_ms.copy(),
            "sdpipe/sizes": self.sizes.copy(),
            "sdpipe/rounds": self.rounds.copy(),
        }
        out["sdpipe/groups"] = np.array([st.state() for st in self.stages], dtype=np.int64)
        return out

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        for name in ("seq", "answered", "wait_ms", "sizes", "rounds"):
            a = arrays[f"sdpipe/{name}"]
            dst = getattr(self, name)
            if a.shape != dst.shape:
                raise ValueError(
                    f"sdpipe/{name} of shape {a.shape} in the checkpoint, this job's is {dst.shape}"
                )
            dst[...] = a
        for st, row in zip(self.stages, arrays["sdpipe/groups"].tolist(), strict=True):
            st.load([int(v) for v in row])
