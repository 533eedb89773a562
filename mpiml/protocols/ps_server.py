"""The server side of the parameter server: a service loop over one parameter shard.

:class:`ShardServer` holds shard ``[lo, hi)`` of the flat parameters (host memory) and
serves the workers' requests (:mod:`mpiml.protocols.ps_wire`): one receive is preposted
per worker, completed requests are served in the order ``MPI_Waitsome`` returns them,
taken round-robin from the worker after the one served last (so no worker is
starved), and the receive is reposted once its request is handled.

**Updates.** Every push is applied exactly once, by ``apply(x, update, worker)`` (the
job's optimizer on the shard, or ``x += delta``), and increments the shard's version
(the number of updates applied). With a staleness bound ``s = 0`` (BSP) the server
instead waits for the clock's push of every worker and applies their sum, added in
worker order 0, 1, ..., W-1, as one update: synchronous minibatch SGD, repeatable bit
for bit. Every applied push is logged (table ``ps_apply``: the worker, its clock, the
version it was computed from and the version it was applied to; staleness = their
difference), so a serial replay reproduces an asynchronous run bit for bit.

**Staleness bound (SSP, Petuum Bösen).** A worker's clock is the number of its pushes
applied. A pull by a worker at clock c is answered only once every worker's clock is
>= c - s (``staleness`` s; None: never held back). The bound is enforced here, per
pull, never by a barrier; answered pulls are logged (table ``ps_pull``: the worker,
its clock, the slowest clock, the version sent).

**No torn read.** A pull is answered with a copy of the shard taken between two
updates (into the worker's reply buffer, then sent): never half old, half new.

**No lost update.** The server counts the pushes it applied per worker; a worker's
last request (DONE) says how many it pushed; :meth:`serve` raises
:class:`LostUpdateError` unless they are equal, and the counts are written to the
table ``ps_counts``.

Under a bound every worker must push as many times as the others (the job's workers all
run the same steps): a worker that stopped pushing more than s clocks early would hold
the others' pulls back for good.

**Quiescence.** A worker that has completed step c and wants a checkpoint there sends
QUIESCE(c) after its last pull was answered. Once every worker has, nothing is in
flight: the server acknowledges them all and calls ``on_quiesce(c, stop)`` (the
checkpoint, collective over the job with the workers, which are waiting in the
same collective). Deadlock-free by construction: a worker blocks only on a reply
that the server sends once slower workers progress, and the slowest worker's pulls
are always answerable (its clock is the minimum).

The server of shard 0 is the *coordinator*: it adds up the workers' evaluation sums
(sent with their pushes) and sends each completed evaluation to the first worker
(reply EVAL), and it agrees on a stop: on the first stop-request bit it sees
(carried by requests, or its own), it fixes the stop step at the most steps any
worker has reported + ``stop_margin`` and sends it with every reply; every worker
learns it before reaching it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from mpi4py import MPI

from ..kinds import register_kind
from ..trace import Trace
from .base import WAIT, Messages
from .ps_log import APPLY_DTYPE, COUNTS_DTYPE, PULL_DTYPE, EvalSlots, LostUpdateError, StalenessHistogram
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
    STOP_NOW,
    Message,
)

__all__ = ["APPLY_DTYPE", "COUNTS_DTYPE", "PULL_DTYPE", "LostUpdateError", "ShardServer"]

PS_APPLY = register_kind("ps_apply", "compute", "a parameter server applying one update to its shard")


class ShardServer:
    """Serves shard ``[lo, hi)`` (``x``, host array, updated in place) to ``workers``.

    ``comm``: the parameter server's communicator (workers and servers); ``workers``:
    their ranks in it, in worker order. ``apply(x, update, worker)`` applies one update
    (``worker`` -1 for a BSP sum). ``staleness``: the SSP bound s (None: unbounded;
    0: BSP, summed in worker order). ``coordinator``: this server agrees on stops and
    adds up evaluations. ``flags()``: this rank's own stop-request bits.
    ``stop_margin``: steps added to the furthest worker's when fixing a stop step.

    Not collective: point-to-point with the workers only (``on_quiesce`` is the
    caller's collective). Raises :class:`LostUpdateError` at the end when counts
    differ, ``RuntimeError`` on a malformed request (a wrong length, a clock out of
    order).
    """

    def __init__(
        self,
        comm: MPI.Comm,
        workers: Sequence[int],
        x: np.ndarray,
        apply: Callable[[np.ndarray, np.ndarray, int], None],
        *,
        staleness: int | None,
        trace: Trace | None = None,
        coordinator: bool = False,
        flags: Callable[[], int] = lambda: 0,
        stop_margin: int = 2,
    ) -> None:
        if staleness is not None and staleness < 0:
            raise ValueError(f"ShardServer: staleness must be >= 0 or None (got {staleness})")
        self.comm, self.workers, self.x, self.apply = comm, list(workers), x, apply
        self.staleness, self.coordinator, self.flags_fn = staleness, coordinator, flags
        self.stop_margin = stop_margin
        self.trace = trace if trace is not None else Trace(enabled=False)
        w, n = len(self.workers), x.size
        self.n_workers = w
        self.index = {r: i for i, r in enumerate(self.workers)}
        self.bsp = staleness == 0
        self.inbox = [Message(n, x.dtype) for _ in range(w)]
        self.outbox = [Message(n, x.dtype) for _ in range(w)]
        self.acc = np.empty_like(x) if self.bsp else None
        self._send_req: list[MPI.Request] = [MPI.REQUEST_NULL] * w
        self._recv_req: list[MPI.Request] = [MPI.REQUEST_NULL] * w
        self._t_post = np.zeros(w)
        self._statuses = [MPI.Status() for _ in range(w)]
        self._evals = EvalSlots(len(self.workers))  # the coordinator's evaluations under way
        self._eval_out: list[tuple[Message, MPI.Request]] = []
        self.msgs = Messages(self.trace, comm.Get_size())
        self.reset_run_state()
        # checkpointed state
        self.version = 0
        self.clock = np.zeros(w, dtype=np.int64)  # pushes applied per worker
        self.received = np.zeros(w, dtype=np.int64)  # pushes received per worker
        self.stale_hist = StalenessHistogram()  # updates applied per staleness (versions)

    def reset_run_state(self) -> None:
        """Forget what one segment of serving holds (pending pulls, quiesce and done
        requests, the held BSP pushes, the stop agreement)."""
        w = self.n_workers
        self.pending: list[tuple[int, int, int]] = []  # (worker, clock, steps done): pulls not answered yet
        self.holding = np.zeros(w, dtype=bool)  # BSP: this worker's push waits for the round
        self.quiesce_at = np.full(w, -1, dtype=np.int64)
        self.quiesce_stop = False
        self.done = np.zeros(w, dtype=bool)
        self.last_done = np.zeros(w, dtype=np.int64)  # each worker's steps completed, from its last request
        self.pushed_total = np.zeros(w, dtype=np.int64)
        self.flags_seen = 0
        self.stop_step = -1
        self.max_done = 0
        self._rr = 0

    # ---- the service loop -------------------------------------------------------

    def serve(self, on_quiesce: Callable[[int, bool], None], tick: Callable[[], None] | None = None) -> bool:
        """Serve until every worker has sent DONE (returns True) or until a stop
        checkpoint (returns False after ``on_quiesce(step, True)``). ``tick()`` is called
        after every batch of requests served (e.g. to flush the trace now and then)."""
        self.reset_run_state()
        for i in range(self.n_workers):
            self._post(i)
        tr = self.trace
        try:
            while True:
                t0 = tr.now()
                try:
                    idx = MPI.Request.Waitsome(self._recv_req, self._statuses) or []
                except MPI.Exception:  # MPI_ERR_TRUNCATE: a request longer than header + shard
                    self._too_long()
                tr.record(int(self.clock.min()), WAIT, t0, tr.now())
                # statuses[k] belongs to idx[k]; serve round-robin from the worker after the last one served
                counts = {i: self._statuses[k].Get_count(MPI.BYTE) for k, i in enumerate(idx)}
                got = sorted(idx, key=lambda i: (i - self._rr) % self.n_workers)
                for i in got:
                    self._handle(i, counts[i])
                if got:
                    self._rr = (got[-1] + 1) % self.n_workers
                if self.bsp:
                    self._bsp_round()
                self._answer_pulls()
                if tick is not None:
                    tick()
                if self._all_quiesced():
                    step, stop = self._quiesced()
                    on_quiesce(step, stop)
                    if stop:
                        return False
                    for i in range(self.n_workers):
                        self._post(i)
                if self.done.all() and not self.pending and not self.holding.any():
                    self._finish()
                    return True
        finally:
            for i in range(self.n_workers):
                req = self._recv_req[i]
                if req != MPI.REQUEST_NULL:
                    req.Cancel()
                    req.Wait()
            self._drain_sends()

    def _too_long(self) -> None:
        """Raise naming the worker whose request did not fit (its receive failed)."""
        bad = [st.Get_source() for st in self._statuses if st.Get_error() != MPI.SUCCESS]
        who = ", ".join(f"worker {self.index[r]}" for r in bad if r in self.index) or "a worker"
        most = self.inbox[0].nbytes(True)
        raise RuntimeError(
            f"parameter server: a request of more than {most} bytes from {who} (expected at most {most}: "
            f"{HEADER_BYTES}-byte header and the shard)"
        )

    def _post(self, i: int) -> None:
        if self._recv_req[i] == MPI.REQUEST_NULL:
            self._t_post[i] = self.trace.now()
            self._recv_req[i] = self.comm.Irecv(
                [self.inbox[i].raw, MPI.BYTE], source=self.workers[i], tag=REQ
            )

    def _handle(self, i: int, nbytes: int) -> None:
        m = self.inbox[i]
        op, clock = int(m.h[0]), int(m.h[2])
        self.msgs.recv(clock, self.workers[i], float(self._t_post[i]), self.trace.now(), nbytes)
        with_body = bool(op & PUSH)
        if nbytes != m.nbytes(with_body):
            raise RuntimeError(
                f"parameter server: a request of {nbytes} bytes from worker {i} (expected "
                f"{m.nbytes(with_body)}: {HEADER_BYTES}-byte header{' and the shard' if with_body else ''})"
            )
        self.flags_seen |= int(m.h[4])
        self.max_done = max(self.max_done, int(m.h[1]))
        if self.coordinator and self.flags_seen and self.stop_step == -1:
            # with a bound, a stop step past every worker, reached soon by all; without
            # one a straggler could take minutes to get there: each stops where it is
            self.stop_step = STOP_NOW if self.staleness is None else self.max_done + self.stop_margin
        if self.coordinator and m.h[5] > 0:
            self._add_eval(int(m.h[5]), m.f[EVAL_SLOTS])
        if op & PUSH:
            if clock != self.received[i] + 1:
                raise RuntimeError(
                    f"parameter server: worker {i} pushed clock {clock} after {int(self.received[i])} (out of order)"
                )
            self.received[i] = clock
            if self.bsp:
                self.holding[i] = True  # applied with the round; the receive is reposted then
            else:
                self._apply(i, m.body, clock, int(m.h[3]), int(m.h[1]))
        if op & PULL:
            self.pending.append((i, int(self.received[i]), int(m.h[1])))
        self.last_done[i] = int(m.h[1])
        if op & QUIESCE:
            self.quiesce_at[i] = int(m.h[7])
            self.quiesce_stop |= bool(op & STOP)
        if op & DONE:
            self.done[i] = True
            self.pushed_total[i] = int(m.h[6])
        self._recv_req[i] = MPI.REQUEST_NULL
        if not self.holding[i] and not (op & QUIESCE):
            self._post(i)

    def _apply(self, i: int, update: np.ndarray, clock: int, version_read: int, done: int) -> None:
        t0 = self.trace.now()
        self.apply(self.x, update, i)
        t1 = self.trace.now()
        self.trace.record(done - 1, PS_APPLY, t0, t1)
        self._log_apply(i, clock, version_read, t1, done)
        self.version += 1
        self.clock[i] += 1

    def _log_apply(self, i: int, clock: int, version_read: int, t: float, done: int) -> None:
        row = (done - 1, i, clock, version_read, self.version, t)
        self.trace.add_row("ps_apply", APPLY_DTYPE, row, always=True)
        self.stale_hist.add(self.version - version_read)

    def _bsp_round(self) -> None:
        """BSP: once every worker's push of the next clock is here, add them in worker
        order and apply the sum as one update."""
        if not self.holding.all():
            return
        assert self.acc is not None
        t0 = self.trace.now()
        self.acc[...] = self.inbox[0].body
        for i in range(1, self.n_workers):
            self.acc += self.inbox[i].body
        self.apply(self.x, self.acc, -1)
        t1 = self.trace.now()
        self.trace.record(int(self.inbox[0].h[1]) - 1, PS_APPLY, t0, t1)
        for i in range(self.n_workers):
            m = self.inbox[i]
            self._log_apply(i, int(self.received[i]), int(m.h[3]), t1, int(m.h[1]))
            self.clock[i] += 1
        self.version += 1
        self.holding[:] = False
        for i in range(self.n_workers):
            if self.quiesce_at[i] < 0:
                self._post(i)

    def _answer_pulls(self) -> None:
        if not self.pending:
            return
        slowest = int(self.clock.min())
        keep = []
        for i, c, done in self.pending:
            if self.staleness is not None and slowest < c - self.staleness:
                keep.append((i, c, done))
                continue
            if self.bsp and self.holding[i]:  # its own push is not applied yet
                keep.append((i, c, done))
                continue
            m = self._outbox(i)
            m.h[0] = PULL
            m.body[...] = self.x  # the snapshot: between two updates, never torn
            self._send(i, m, True, c)
            row = (done - 1, i, c, slowest, self.version, self.trace.now())
            self.trace.add_row("ps_pull", PULL_DTYPE, row, always=True)
        self.pending = keep

    def _outbox(self, i: int) -> Message:
        """Worker i's reply buffer, once its previous reply has left."""
        if self._send_req[i] != MPI.REQUEST_NULL:
            self._send_req[i].Wait()
            self._send_req[i] = MPI.REQUEST_NULL
        m = self.outbox[i]
        m.clear()
        m.h[1] = self.stop_step
        m.h[3] = self.version
        m.h[4] = self.flags_seen | self.flags_fn()
        return m

    def _send(self, i: int, m: Message, with_body: bool, clock: int) -> None:
        n = m.nbytes(with_body)
        t0 = self.trace.now()
        self._send_req[i] = self.comm.Isend([m.raw[:n], MPI.BYTE], dest=self.workers[i], tag=REPLY)
        self.trace.sent(n)
        self.msgs.send(clock, self.workers[i], t0, t0, n)

    # ---- coordinator: evaluations -------------------------------------------------

    def _add_eval(self, step: int, sums: np.ndarray) -> None:
        total = self._evals.add(step, sums)
        if total is not None:
            m = Message(0, self.x.dtype)  # a small one-off message (once per evaluation)
            m.h[0], m.h[5] = EVAL, step
            m.f[EVAL_SLOTS] = total
            t0 = self.trace.now()
            req = self.comm.Isend([m.raw, MPI.BYTE], dest=self.workers[0], tag=REPLY)
            self.trace.sent(HEADER_BYTES)
            self.msgs.send(step, self.workers[0], t0, t0, HEADER_BYTES)
            self._eval_out.append((m, req))
            self._eval_out = [(mm, r) for mm, r in self._eval_out if not r.Test()]

    # ---- quiescence and the end -------------------------------------------------

    def _all_quiesced(self) -> bool:
        """Every worker asked for the checkpoint, or (a stop) asked or is done."""
        asked = self.quiesce_at >= 0
        return bool(asked.all() or (self.quiesce_stop and asked.any() and (asked | self.done).all()))

    def _quiesced(self) -> tuple[int, bool]:
        """Acknowledge the checkpoint to every worker; (its step, whether it is a stop).
        A checkpoint is where every worker completed the same step; a stop without a
        staleness bound (:data:`STOP_NOW`) is where each worker is: its step is the
        furthest worker's (each worker's own is in its checkpoint)."""
        asked = self.quiesce_at >= 0
        steps = set(self.quiesce_at[asked].tolist()) | set(self.last_done[~asked].tolist())
        stop = self.quiesce_stop
        if len(steps) != 1 and not (stop and self.staleness is None):  # STOP_NOW: each where it is
            raise RuntimeError(
                f"parameter server: workers asked to checkpoint at different steps {sorted(steps)}"
            )
        step = max(steps)
        for i in range(self.n_workers):
            m = self._outbox(i)
            m.h[0] = ACK | (STOP if stop else 0)
            m.h[7] = step
            self._send(i, m, False, int(self.clock[i]))
        self._drain_sends()
        self.quiesce_at[:] = -1
        self.quiesce_stop = False
        return step, stop

    def _drain_sends(self) -> None:
        MPI.Request.Waitall(self._send_req)
        self._send_req = [MPI.REQUEST_NULL] * self.n_workers
        MPI.Request.Waitall([r for _, r in self._eval_out])
        self._eval_out = []

    def _finish(self) -> None:
        """Every worker is done: check and record the counts, send the final shard."""
        for i in range(self.n_workers):
            self.trace.add_row(
                "ps_counts",
                COUNTS_DTYPE,
                (int(self.last_done[i]) - 1, i, int(self.pushed_total[i]), int(self.clock[i])),
                always=True,
            )
        lost = [
            (i, int(p), int(a))
            for i, (p, a) in enumerate(zip(self.pushed_total, self.clock, strict=True))
            if p != a
        ]
        if lost:
            detail = ", ".join(f"worker {i} pushed {p}, applied {a}" for i, p, a in lost)
            raise LostUpdateError(f"parameter server: updates lost on this shard: {detail}")
        stats = self.staleness_stats()
        for i in range(self.n_workers):
            m = self._outbox(i)
            m.h[0] = FINAL
            m.body[...] = self.x
            if i == 0:
                m.f[9:14] = stats
                m.f[14] = self.version  # updates applied (BSP: one per W pushes)
            self._send(i, m, True, int(self.clock[i]))
        self._drain_sends()

    def staleness_stats(self) -> np.ndarray:
        """[count, mean, median, p95, max] of the staleness of every update applied
        (:meth:`StalenessHistogram.stats`)."""
        return self.stale_hist.stats()

    # ---- checkpoint -----------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """The server's counters (the shard and the optimizer state are the caller's)."""
        return {
            "ps/version": np.array([self.version], dtype=np.int64),
            "ps/clock": self.clock.copy(),
            "ps/received": self.received.copy(),
            "ps/staleness_hist": self.stale_hist.counts.copy(),
            # the coordinator's evaluations still waiting for some worker's sums (a stop
            # with no bound leaves workers at different steps)
            **self._evals.state_arrays(),
        }

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.version = int(arrays["ps/version"][0])
        self.clock[...] = arrays["ps/clock"]
        self.received[...] = arrays["ps/received"]
        self.stale_hist.counts = np.array(arrays["ps/staleness_hist"], dtype=np.int64)
        self._evals.load_state(arrays)
