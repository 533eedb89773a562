"""SDPIPE's groups on P pipelines x K stages of DSP, as a pure discrete-event simulation.

Each (pipeline, stage) worker runs its row of DSP's :class:`~mpiml.pipeline.dsp.Timetable`:
at global step t, stage k takes the activations of batch ``slot.forward`` from stage k-1 of
its pipeline, forwards, sends them on; takes the gradient of ``slot.backward`` from stage
k+1, backwards, sends it back and *updates*: a ready signal for that batch to the scheduler,
then it blocks until its group closes (averaging costs 0). One group rule per stage:

- ``rule="batch"``: :class:`~mpiml.pipeline.groups.StageGroups`, rounds aligned by batch
  id (:func:`~mpiml.pipeline.groups.round_kind`);
- ``rule="count"``: the artifact's literal rule (:class:`CountGroups`): the first arrival
  after ``ssp_bound * P`` updates of the stage opens a bound round, whatever its batch,
  which every later arrival joins until the period connects all P; no sync rounds.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .dsp import Timetable, dsp_depths
from .groups import BOUND, REGULAR, Group, StageGroups, UnionFind, group_matrix, next_wait, round_kind
from .simulate import ScheduleError

__all__ = ["CountGroups", "Deadlock", "Run", "mixing", "simulate_sdpipe"]


class Deadlock(ScheduleError):
    """No event can fire, work is left; ``waits``: (pipeline, stage) -> what it waits for.
    (Not simulate.Deadlock: that keys one Op per stage; a group wait is no Op.)"""

    def __init__(self, waits: dict[tuple[int, int], str]) -> None:
        parts = [f"pipeline {q} stage {k} waits {why}" for (q, k), why in sorted(waits.items())]
        super().__init__("deadlock, no event can fire: " + "; ".join(parts))
        self.waits = waits


class CountGroups:
    """The artifact's count rule at one stage (StageGroups' interface), one queue: a group
    opened after >= ``ssp_bound * P`` memberships of groups since the last round is a round
    (no deadline), closed once the period's groups with it connect all P (a replica that made
    its last update counts as joined, :meth:`finish`); others close at all P or deadline."""

    def __init__(self, P: int, ssp_bound: int) -> None:
        self.P, self.ssp_bound = P, ssp_bound
        self.members: list[int] = []
        self.opened, self.batch = 0.0, -1
        self.deadline: float | None = None
        self.updates, self.links = 0, UnionFind(P)
        self.finished: set[int] = set()

    @property
    def round(self) -> list[int]:
        return self.members if self.members and self.deadline is None else []

    def next_deadline(self) -> float | None:
        return self.deadline if self.members else None

    def due(self, now: float) -> list[Group]:
        d = self.next_deadline()
        return [self._close(now, "deadline")] if d is not None and now >= d else []

    def ready(self, replica: int, now: float, wait_ms: float, batch: int = -1, kind: int = 0) -> list[Group]:
        out = self.due(now)
        if not self.members:
            self.opened, self.batch = now, batch
            bound = self.updates >= self.ssp_bound * self.P
            self.deadline = None if bound else now + wait_ms / 1000.0
        self.members.append(replica)
        if len(self.members) == self.P:
            out.append(self._close(now, "all"))
        else:
            out += self._connects(now)
        return out

    def finish(self, replica: int, now: float) -> list[Group]:
        """``replica`` made its last update: the open round, closed if that connects it."""
        self.finished.add(replica)
        return self._connects(now)

    def _connects(self, now: float) -> list[Group]:
        if not self.members or self.deadline is not None:
            return []
        uf = self.links.copy()
        for r in self.members[1:] + sorted(self.finished):
            uf.union(self.members[0], r)
        return [self._close(now, "connected")] if uf.connected() else []

    def _close(self, now: float, why: str) -> Group:
        ms, dl, bound = tuple(sorted(self.members)), self.deadline, self.deadline is None
        g = Group(ms, self.opened, now, dl, why, BOUND if bound else REGULAR, self.batch if bound else -1)
        self.members, self.deadline = [], None
        if bound:
            self.updates, self.links = 0, UnionFind(self.P)
        else:
            self.updates += len(ms)
            for r in ms[1:]:
                self.links.union(ms[0], r)
        return g


@dataclass
class Run:
    """A run: ``groups[k]``, stage k's closed groups in closing order; ``end``: its end (s)."""

    groups: list[list[Group]]
    end: float


def mixing(groups: Sequence[Group], P: int) -> list[np.ndarray]:
    """W_k of each group, in order: P x P float64, 1/|S| on the group's block, identity elsewhere."""
    return [group_matrix(P, g.members) for g in groups]


def _ops(table: Timetable, k: int) -> list[tuple[str, int]]:
    K, ops = len(table.p), []
    for t in range(table.length):
        s = table.slot(k, t)
        if s.forward is not None:
            ops += [("recv_act", s.forward)] * (k > 0) + [("forward", s.forward)]
            ops += [("send_act", s.forward)] * (k < K - 1)
        if s.backward is not None:
            ops += [("recv_grad", s.backward)] * (k < K - 1) + [("backward", s.backward)]
            ops += [("send_grad", s.backward)] * (k > 0) + [("update", s.backward)]
    return ops


def simulate_sdpipe(
    P: int,
    p: Sequence[int],
    m: Sequence[int],
    steps: int,
    *,
    rule: str = "batch",
    ssp_bound: int = 2,
    sync_every: int | None = None,
    seed: int = 0,
    slow: int | None = None,
    slow_factor: float = 2.0,
    op_ms: float = 1.0,
    wait_ms: float = 1.0,
    wait_max_ms: float = 10.0,
    bounded: bool = True,
    hetero: float = 0.0,
) -> Run:
    """Run P pipelines of DSP(p; m) over ``steps`` batches with SDPIPE's groups (``rule``);
    return the :class:`Run` or raise :class:`Deadlock` (who waits for whom). Times in
    seconds; op times random (``seed``): forward ``op_ms`` ms x U(0.5, 1.5), backward 2x
    (3x where m_k > 0: DSP's recompute), x ``slow_factor`` on pipeline ``slow``, + ``hetero
    * op_ms`` ms with probability 0.1 (the artifact's knob); messages take 0; ``bounded``:
    channels hold DSP's queues (:func:`dsp_depths`), a send into a full one blocks.
    ``wait_ms`` / ``wait_max_ms``: a replica's first / largest wait; ``sync_every``: default
    ``steps``. ValueError for a bad ``rule`` (or as Timetable / StageGroups)."""
    if rule not in ("batch", "count", "join"):
        raise ValueError(f"rule must be 'batch', 'count' or 'join' (got {rule!r})")
    table, K, sync = Timetable(p, m, steps), len(p), (steps if sync_every is None else sync_every)
    rules: list[StageGroups | CountGroups] = [
        # "batch": the scheduler's rule (any arrival joins a bound round only when K = 1);
        # "join": any arrival joins a bound round whatever K (not deadlock-free for K >= 2)
        StageGroups(P, ssp_bound, join_any=K == 1 or rule == "join")
        if rule != "count"
        else CountGroups(P, ssp_bound)
        for _ in range(K)
    ]
    caps = dsp_depths(p, m) if bounded else {}
    ops = [_ops(table, k) for k in range(K)]
    rng = np.random.default_rng(seed)
    pc, waits = np.zeros((P, K), dtype=int), np.full((P, K), wait_ms)
    sent: Counter[tuple[int, int, int]] = Counter()  # (pipeline, from, to) -> messages sent
    taken: Counter[tuple[int, int, int]] = Counter()  # ... -> received
    blocked: dict[tuple[int, int], str] = {}  # a worker waiting, and for what
    groups: list[list[Group]] = [[] for _ in range(K)]
    # events (time, order, pipeline or -1 for a deadline, stage); every worker starts at 0
    heap = [(0.0, i, q, k) for i, (q, k) in enumerate(np.ndindex(P, K))]
    order, armed = itertools.count(len(heap)), [-1.0] * K
    last = [max(i for i, (what, _) in enumerate(o) if what == "update") for o in ops]

    def push(t: float, q: int, k: int) -> None:
        heapq.heappush(heap, (t, next(order), q, k))

    def wake(q: int, k: int, t: float, on: str) -> None:
        if blocked.get((q, k), "").startswith(on):
            del blocked[q, k]
            push(t, q, k)

    def release(k: int, closed: list[Group], t: float) -> None:
        for g in closed:
            groups[k].append(g)
            for r in g.members:
                waits[r, k] = next_wait(float(waits[r, k]), len(g.members), wait_max_ms)
                pc[r, k] += 1
                wake(r, k, t, "in ")
                if pc[r, k] > last[k] and isinstance(st := rules[k], CountGroups):
                    release(k, st.finish(r, t), t)
        d = rules[k].next_deadline()
        if d is not None and d != armed[k]:
            armed[k] = d
            push(d, -1, k)

    def advance(q: int, k: int, t: float) -> None:
        while pc[q, k] < len(ops[k]):
            what, b = ops[k][pc[q, k]]
            if what in ("forward", "backward"):
                u = float(rng.uniform(0.5, 1.5)) * op_ms / 1000.0 * (slow_factor if q == slow else 1.0)
                dt = u if what == "forward" else u * (3.0 if m[k] > 0 else 2.0)
                dt += hetero * op_ms / 1000.0 * float(rng.random() < 0.1)
                pc[q, k] += 1
                push(t + dt, q, k)
                return
            if what.startswith("recv"):
                src = k - 1 if what == "recv_act" else k + 1
                if sent[q, src, k] <= taken[q, src, k]:
                    blocked[q, k] = f"for {what[5:]}({b}) from stage {src}"
                    return
                taken[q, src, k] += 1
                wake(q, src, t, f"to send to stage {k}")
            elif what.startswith("send"):
                dst = k + 1 if what == "send_act" else k - 1
                cap = caps.get((k, dst, what[5:]), 1 << 30)
                if sent[q, k, dst] - taken[q, k, dst] >= cap:
                    blocked[q, k] = f"to send to stage {dst}: {what}({b}), {cap} unreceived"
                    return
                sent[q, k, dst] += 1
                wake(q, dst, t, "for ")
            else:  # update: the ready signal; blocked until the group closes
                blocked[q, k] = f"in the group of stage {k} for batch {b}"
                kind = round_kind(b, ssp_bound, sync, steps)
                release(k, rules[k].ready(q, t, float(waits[q, k]), b, kind), t)
                return
            pc[q, k] += 1

    end = 0.0
    while heap:
        t, _, q, k = heapq.heappop(heap)  # in time order
        if q < 0:
            release(k, rules[k].due(t), t)
        else:
            end = t  # (a deadline may fire after the last worker is done)
            advance(q, k, t)
    for (q, k), why in blocked.items():
        if why.startswith("in "):  # where it waits, and with whom
            ms, rnd = sorted({*rules[k].members, *rules[k].round}), q in rules[k].round
            blocked[q, k] += f" ({'round' if rnd else 'regular group'}: {ms})"
    if blocked:
        raise Deadlock(dict(blocked))
    return Run(groups, end)
