"""SDPIPE's groups of ready replicas, as a pure rule (no MPI): what the scheduler decides.

SDPIPE (Miao et al., VLDB 2023, appendix B) averages the P replicas of a stage in groups:
X_{k+1} = (X_k - eta G_k) W_k, where W_k is 1/|S| on the block of a group S of replicas
and the identity elsewhere (symmetric and doubly stochastic, Assumption 2(4)). A central
scheduler forms the groups from the replicas' ready signals; the published artifact's
mechanism, which issue #14 specifies:

- the first ready replica of a stage opens a group with deadline = now + its wait time;
  the group closes when all P replicas are ready (in it, or waiting in a round: none
  can join it any more) or when the deadline passes;
- a replica's wait time adapts (:func:`next_wait`): it doubles (up to ``wait_max_ms``)
  after a group of fewer than 2 members, else shrinks x0.9 (down to 0.01 ms);
- ``ssp_bound``: a *bound round* follows every ``ssp_bound * P`` updates of a stage (a
  replica averaging once is one update): it has no deadline and closes only once the
  groups since the last round, with it, connect all P replicas (union-find);
- ``sync_every``: every ``sync_every`` batches all P replicas average (a *sync round*).

**Rounds are aligned by batch id** (:func:`round_kind`): the bound round is the update
of batch b with (b + 1) % ssp_bound == 0, the sync round that of (b + 1) % sync_every
== 0 (and the run's last batch). Every replica updates once per batch, so a period
between two bound rounds holds exactly ssp_bound * P updates of the stage, the count
the artifact uses; aligning it by batch id instead of by arrival count is what makes
it deadlock-free with K >= 2 stages. With a count, a round of stage k opened by
replica p_k can wait for q_k, which waits for the gradient of q_{k+1}, which waits in a
round of stage k+1 for r_{k+1}, which waits for the activations of r_k ... a cycle
through the pipelines. Aligned, a round of batch b waits only for arrivals of batch b
(an arrival of another batch goes to the regular group, which has a deadline), and
every message a replica needs before its update of batch b is sent before its
neighbours' updates of batch b; so the replicas holding the smallest batch id always
progress (docs/sdpipe.md has the argument; tests/test_sdpipe_groups.py drives it).

:class:`StageGroups` is one stage's queues at the scheduler, driven by explicit times so
that a test (or a replay) decides every arrival; :class:`mpiml.protocols.sdpipe.GroupScheduler`
runs it on real ready signals. Choices where the issue is silent: an arrival at or
after the open group's deadline first closes that group, then opens a new one; a
replica already waiting is an error (it cannot be ready twice); a bound round whose
period already connects all replicas when its first replica arrives is met at once: the
next period starts there and the arrival joins the regular group (no group of one, and
no wait; :attr:`StageGroups.met` counts these); the first arrival of a round does not
close the regular group (it keeps its deadline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "doubly_stochastic",
    "group_matrix",
    "BOUND",
    "REGULAR",
    "ROUND_NAMES",
    "SYNC",
    "WAIT_FLOOR_MS",
    "Group",
    "StageGroups",
    "UnionFind",
    "next_wait",
    "round_kind",
]

WAIT_FLOOR_MS = 0.01

REGULAR, BOUND, SYNC = 0, 1, 2  # the kind of an update's round (:func:`round_kind`)
ROUND_NAMES = ("regular", "bound", "sync")
WHY = ("all", "deadline", "connected", "sync")  # why a group closed (codes 0..3)


def round_kind(batch: int, ssp_bound: int, sync_every: int, batches: int) -> int:
    """The round of a stage's update of batch ``batch`` (0-based) in a run of ``batches``:
    SYNC at the last batch of every ``sync_every`` and of the run, BOUND at the last of
    every ``ssp_bound`` (else), REGULAR otherwise."""
    if (batch + 1) % sync_every == 0 or batch == batches - 1:
        return SYNC
    if (batch + 1) % ssp_bound == 0:
        return BOUND
    return REGULAR


def group_matrix(P: int, members: Sequence[int]) -> np.ndarray:
    """W_S of a group (SDPIPE appendix B.1.1): P x P float64, 1/|S| on the block of
    ``members``, the identity elsewhere (the rows of ``members`` replaced by their mean
    when it left-multiplies X). ValueError unless ``members`` are ascending, distinct
    replicas of 0..P-1.

    >>> group_matrix(3, (0, 2)).tolist()
    [[0.5, 0.0, 0.5], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]]
    """
    ms = [int(m) for m in members]
    if not ms or ms != sorted(set(ms)) or ms[0] < 0 or ms[-1] >= P:
        raise ValueError(f"a group must list ascending replicas of 0..{P - 1} (got {list(members)})")
    w = np.eye(P)
    w[np.ix_(ms, ms)] = 1.0 / len(ms)
    return w


def doubly_stochastic(w: np.ndarray) -> bool:
    """Assumption 2 (4): ``w`` symmetric, non-negative, every row and column summing to 1."""
    return bool(
        np.array_equal(w, w.T)
        and (w >= 0).all()
        and np.allclose(w.sum(0), 1.0)
        and np.allclose(w.sum(1), 1.0)
    )


def next_wait(wait_ms: float, group_size: int, wait_max_ms: float = 10.0) -> float:
    """A replica's next wait time (ms) after a group of ``group_size`` members: doubled,
    capped at ``wait_max_ms``, when it averaged with nobody (size < 2), else x0.9, not
    below :data:`WAIT_FLOOR_MS`."""
    if not wait_ms > 0 or not wait_max_ms > 0:
        raise ValueError(f"wait times must be > 0 ms (got wait_ms={wait_ms}, wait_max_ms={wait_max_ms})")
    if group_size < 2:
        return min(2.0 * wait_ms, wait_max_ms)
    return max(0.9 * wait_ms, WAIT_FLOOR_MS)


class UnionFind:
    """Disjoint sets of 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"UnionFind needs n >= 1 (got {n})")
        self.parent = list(range(n))
        self.size = [1] * n
        self.sets = n

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        self.sets -= 1

    def connected(self) -> bool:
        """Whether every element is in one set."""
        return self.sets == 1

    def copy(self) -> UnionFind:
        uf = UnionFind(len(self.parent))
        uf.parent, uf.size, uf.sets = list(self.parent), list(self.size), self.sets
        return uf


@dataclass(frozen=True)
class Group:
    """A closed group: its members (replica indices, ascending), when it opened and
    closed (seconds), its deadline (None: a round), why it closed ("all", "deadline",
    "connected", "sync"), its round (REGULAR, BOUND, SYNC) and, for a round, its batch."""

    members: tuple[int, ...]
    opened: float
    closed: float
    deadline: float | None
    why: str
    kind: int = REGULAR
    batch: int = -1


class StageGroups:
    """One stage's groups at the scheduler, for P replicas (pure; times in seconds).

    Two queues: the regular group (deadline from its first arrival) and the round of a
    batch b (bound or sync; no deadline), open at the same time only while replicas
    behind b still average among themselves.

    ``join_any`` (for pipelines of one stage, K = 1): while a bound round is open, every
    arrival joins it, whatever its batch, as in the artifact, so a round waits at most
    for the next arrival of each replica it needs, not for a slow one to reach batch b.
    Deadlock-free only when no replica waits on another stage (K = 1): with K >= 2 a
    lagging member of one stage's round can hold back its pipeline's next stage, which
    another stage's round waits for (docs/sdpipe.md)."""

    def __init__(self, P: int, ssp_bound: int = 10, join_any: bool = False) -> None:
        if P < 1:
            raise ValueError(f"P must be >= 1 (got {P})")
        if ssp_bound < 1:
            raise ValueError(f"ssp_bound must be >= 1 (got {ssp_bound})")
        self.P, self.ssp_bound, self.join_any = P, ssp_bound, join_any
        self.members: list[int] = []  # the regular group
        self.opened = 0.0
        self.deadline: float | None = None
        self.round: list[int] = []  # the open round's members
        self.round_kind, self.round_batch, self.round_opened = REGULAR, -1, 0.0
        self.round_done = -1  # the batch of the last round closed
        self.met = 0  # bound rounds met at their first arrival (the period already connected)
        self.updates = 0  # memberships of closed groups since the last round
        self.links = UnionFind(P)  # the groups since the last round

    @property
    def open(self) -> bool:
        return bool(self.members) or bool(self.round)

    def waiting(self) -> list[int]:
        """The replicas waiting for their group."""
        return self.members + self.round

    def next_deadline(self) -> float | None:
        """When the regular group closes unless all replicas arrive first (None: none open)."""
        return self.deadline if self.members else None

    def due(self, now: float) -> list[Group]:
        """The regular group, closed, if its deadline has passed at ``now`` (and the open
        bound round, if that connects the replicas)."""
        if self.members and self.deadline is not None and now >= self.deadline:
            return [self._close(now, "deadline"), *self._round_connects(now)]
        return []

    def ready(
        self, replica: int, now: float, wait_ms: float, batch: int = -1, kind: int = REGULAR
    ) -> list[Group]:
        """Replica ``replica`` is ready at ``now`` with wait time ``wait_ms`` for its
        update of ``batch``, whose round is ``kind`` (:func:`round_kind`): the groups this
        closes (an expired regular group first, then possibly the one it joins)."""
        if not 0 <= replica < self.P:
            raise ValueError(f"replica must be in 0..{self.P - 1} (got {replica})")
        if not wait_ms > 0:
            raise ValueError(f"wait_ms must be > 0 (got {wait_ms})")
        if kind not in (REGULAR, BOUND, SYNC):
            raise ValueError(f"kind must be REGULAR, BOUND or SYNC (got {kind})")
        out = self.due(now)
        if replica in self.members or replica in self.round:
            raise ValueError(f"replica {replica} is already waiting in an open group")
        if kind == BOUND and batch > self.round_done and not self.round and self.links.connected():
            self.round_done, self.updates, self.links = batch, 0, UnionFind(self.P)  # met: a new period
            self.met += 1
            kind = REGULAR
        if self.join_any and kind == REGULAR and self.round and self.round_kind == BOUND:
            kind, batch = BOUND, self.round_batch  # K = 1: any arrival joins the open bound round
        if kind != REGULAR and batch > self.round_done:
            if self.round and batch != self.round_batch:
                raise ValueError(
                    f"replica {replica} is ready for the round of batch {batch} while that of batch "
                    f"{self.round_batch} is open (a replica skipped a round)"
                )
            if not self.round:
                self.round_kind, self.round_batch, self.round_opened = kind, batch, now
            self.round.append(replica)
            if len(self.round) == self.P:
                out.append(self._close_round(now, "sync" if kind == SYNC else "all"))
            else:
                out += self._round_connects(now)
            if self.members and len(self.members) + len(self.round) == self.P:  # all ready
                out.append(self._close(now, "all"))
                out += self._round_connects(now)
            return out
        if not self.members:
            self.opened = now
            self.deadline = now + wait_ms / 1000.0
        self.members.append(replica)
        if len(self.members) + len(self.round) == self.P:
            out.append(self._close(now, "all"))
            out += self._round_connects(now)
        return out

    def _round_connects(self, now: float) -> list[Group]:
        """The open bound round, closed, if the period's groups with it connect all."""
        if not self.round or self.round_kind != BOUND:
            return []
        uf = self.links.copy()
        for m in self.round[1:]:
            uf.union(self.round[0], m)
        return [self._close_round(now, "connected")] if uf.connected() else []

    def _close(self, now: float, why: str) -> Group:
        g = Group(tuple(sorted(self.members)), self.opened, now, self.deadline, why)
        for m in g.members[1:]:
            self.links.union(g.members[0], m)
        self.updates += len(g.members)
        self.members, self.deadline = [], None
        return g

    def _close_round(self, now: float, why: str) -> Group:
        g = Group(
            tuple(sorted(self.round)), self.round_opened, now, None, why, self.round_kind, self.round_batch
        )
        self.round_done = self.round_batch
        self.round = []
        self.updates = 0  # a new period starts
        self.links = UnionFind(self.P)
        return g

    # -- checkpoint ----------------------------------------------------------------

    def state(self) -> list[int]:
        """What a checkpoint keeps (nothing may be waiting): the period's union-find, the
        updates since the last round and that round's batch."""
        if self.open:
            raise RuntimeError(
                f"a stage's groups hold waiting replicas {self.waiting()}: nothing to checkpoint"
            )
        return [
            self.round_done,
            self.updates,
            self.met,
            self.links.sets,
            *self.links.parent,
            *self.links.size,
        ]

    def load(self, values: list[int]) -> None:
        P = self.P
        if len(values) != 4 + 2 * P:
            raise ValueError(f"a stage's group state for P = {P} has {4 + 2 * P} values (got {len(values)})")
        self.round_done, self.updates, self.met, self.links.sets = values[:4]
        self.links.parent = list(values[4 : 4 + P])
        self.links.size = list(values[4 + P : 4 + 2 * P])
