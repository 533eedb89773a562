"""SDPIPE's groups of ready replicas, as a pure rule (groundwork for issue #14; no MPI).

SDPIPE (Miao et al., VLDB 2023, appendix B) averages the P replicas of a stage in groups:
X_{k+1} = (X_k - eta G_k) W_k, where W_k is 1/|S| on the block of a group S of replicas
and the identity elsewhere (symmetric and doubly stochastic, Assumption 2(4)). A central
scheduler forms the groups from the replicas' ready signals; the published artifact's
mechanism, which issue #14 specifies:

- the first ready replica of a stage opens a group with deadline = now + its wait time;
  the group closes when all P replicas are in it or when the deadline passes;
- a replica's wait time adapts (:func:`next_wait`): it doubles (up to ``wait_max_ms``)
  after a group of fewer than 2 members, else shrinks x0.9 (down to 0.01 ms);
- ``ssp_bound``: after ``ssp_bound * P`` updates (a replica averaging once is one
  update) since the last bound round, the next group has no deadline: it closes only
  once the groups since that round, with it, connect all P replicas (union-find).

:class:`StageGroups` is one stage's queue at the scheduler, driven by explicit times so
that a test (or a replay) decides every arrival; the scheduler's service loop will run it
on real ready signals. Choices where the issue is silent: an arrival at or after the
open group's deadline first closes that group, then opens a new one; a replica that is
already waiting in the open group is an error (it cannot be ready twice).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WAIT_FLOOR_MS", "Group", "StageGroups", "UnionFind", "next_wait"]

WAIT_FLOOR_MS = 0.01


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


@dataclass(frozen=True)
class Group:
    """A closed group: its members (replica indices, ascending), when it opened and
    closed, its deadline (None: a bound round), and why it closed ("all", "deadline",
    "connected")."""

    members: tuple[int, ...]
    opened: float
    closed: float
    deadline: float | None
    why: str


class StageGroups:
    """One stage's groups at the scheduler, for P replicas (pure; times in seconds)."""

    def __init__(self, P: int, ssp_bound: int = 10) -> None:
        if P < 1:
            raise ValueError(f"P must be >= 1 (got {P})")
        if ssp_bound < 1:
            raise ValueError(f"ssp_bound must be >= 1 (got {ssp_bound})")
        self.P, self.ssp_bound = P, ssp_bound
        self.members: list[int] = []
        self.opened = 0.0
        self.deadline: float | None = None
        self.updates = 0  # memberships of closed groups since the last bound round
        self.links = UnionFind(P)  # the groups since the last bound round

    @property
    def open(self) -> bool:
        return bool(self.members)

    def next_deadline(self) -> float | None:
        """When the open group closes unless all replicas arrive first (None: no group
        open, or a bound round)."""
        return self.deadline if self.members else None

    def due(self, now: float) -> list[Group]:
        """The open group, closed, if its deadline has passed at ``now``."""
        if self.members and self.deadline is not None and now >= self.deadline:
            return [self._close(now, "deadline")]
        return []

    def ready(self, replica: int, now: float, wait_ms: float) -> list[Group]:
        """Replica ``replica`` is ready at ``now`` with wait time ``wait_ms``: the groups
        this closes (an expired open group first, then possibly the one it joins)."""
        if not 0 <= replica < self.P:
            raise ValueError(f"replica must be in 0..{self.P - 1} (got {replica})")
        if not wait_ms > 0:
            raise ValueError(f"wait_ms must be > 0 (got {wait_ms})")
        out = self.due(now)
        if replica in self.members:
            raise ValueError(f"replica {replica} is already waiting in the open group")
        if not self.members:
            self.opened = now
            bound = self.updates >= self.ssp_bound * self.P
            self.deadline = None if bound else now + wait_ms / 1000.0
        self.members.append(replica)
        if len(self.members) == self.P:
            out.append(self._close(now, "all"))
        elif self.deadline is None and self._connects():
            out.append(self._close(now, "connected"))
        return out

    def _connects(self) -> bool:
        """Whether the groups since the bound round, with the open group, connect all."""
        uf = UnionFind(self.P)
        uf.parent, uf.size, uf.sets = list(self.links.parent), list(self.links.size), self.links.sets
        for m in self.members[1:]:
            uf.union(self.members[0], m)
        return uf.connected()

    def _close(self, now: float, why: str) -> Group:
        g = Group(tuple(sorted(self.members)), self.opened, now, self.deadline, why)
        for m in g.members[1:]:
            self.links.union(g.members[0], m)
        if g.deadline is None:  # a bound round: the next period starts
            self.updates = 0
            self.links = UnionFind(self.P)
        else:
            self.updates += len(g.members)
        self.members, self.deadline = [], None
        return g
