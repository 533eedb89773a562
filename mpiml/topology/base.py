"""The two objects of the package: a gossip matrix W (:class:`Topology`) and a sequence of
them over time (:class:`Schedule`).

Convention (Quantized-PR-SGD (Wu et al., arXiv:2004.09125) §5, eq. 9 with models as rows): one gossip round
is x_i <- sum_j W[i, j] x_j, so row i holds the weights rank i gives to what it
receives; rank i receives from its in-neighbours (j != i with W[i, j] != 0) and sends
to its out-neighbours (j != i with W[j, i] != 0).

With X the n x d matrix of models and J = 11^T / n, a doubly stochastic W gives
X' - JX' = (W - J)(X - JX), so the consensus error ||X - JX||_F shrinks by at least
||W - J||_2 per round. That norm is the quantity reported as ``rho``:

- W symmetric: Assumption 2's rho = max(|lambda_2(W)|, |lambda_n(W)|), eigenvalues
  sorted in decreasing order (``numpy.linalg.eigvalsh``); for a symmetric doubly
  stochastic W it equals ||W - J||_2;
- W not symmetric: the second largest singular value of W, sqrt(lambda_2(W^T W)),
  which is ||W - J||_2 for a doubly stochastic W (W^T W - J = (W - J)^T (W - J)).

A time-varying schedule W_0, ..., W_{p-1} (period p) contracts by ||M - J||_2 per
period, M = W_{p-1} ... W_0; :meth:`Schedule.rho_effective` reports its per-round
geometric mean ||M - J||_2^(1/p).

Nothing here talks to anyone: building a topology is pure and needs no MPI.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Schedule", "Topology", "TopologyError", "support_components"]


class TopologyError(ValueError):
    """A topology that cannot be built or used; the message names what fails and where."""


def _freeze(W: object) -> np.ndarray:
    try:
        a = np.array(W, dtype=np.float64)  # a copy: the caller's array stays theirs
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"W must be an n x n array of numbers ({exc})") from None
    if a.ndim != 2:
        raise TopologyError(f"W must be a 2-D n x n array (got {a.ndim} dimension(s), shape {a.shape})")
    if a.shape[0] != a.shape[1]:
        raise TopologyError(f"W must be square (got {a.shape[0]}x{a.shape[1]})")
    if a.shape[0] == 0:
        raise TopologyError("W is empty: a topology needs at least one rank")
    a.setflags(write=False)
    return a


def support_components(W: np.ndarray) -> list[list[int]]:
    """Connected components of the undirected graph {i, j} with W[i, j] or W[j, i] != 0,
    each sorted, ordered by their smallest rank."""
    adj = _undirected(W)
    seen = [False] * len(adj)
    comps: list[list[int]] = []
    for s in range(len(adj)):
        if not seen[s]:
            comp = sorted(_bfs(adj, s))
            for v in comp:
                seen[v] = True
            comps.append(comp)
    return comps


def _undirected(W: np.ndarray) -> list[list[int]]:
    nz = (W != 0) | (W.T != 0)
    np.fill_diagonal(nz, False)
    return [np.flatnonzero(row).tolist() for row in nz]


def _bfs(adj: list[list[int]], s: int) -> dict[int, int]:
    """Hop distances from ``s`` to every vertex it reaches."""
    dist = {s: 0}
    queue = deque([s])
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _contraction_norm(M: np.ndarray) -> float:
    """||M - J||_2: the worst-case shrink factor of the consensus error under M."""
    n = M.shape[0]
    return float(np.linalg.norm(M - np.full((n, n), 1.0 / n), 2))


@dataclass(frozen=True, eq=False)
class Topology:
    """A gossip matrix W (n x n, float64, read-only) and its name.

    >>> from mpiml.topology import ring
    >>> top = ring(8)
    >>> top.in_neighbors(0), top.self_weight(0), round(top.rho(), 6)
    ([1, 7], 0.3333333333333333, 0.804738)
    """

    name: str
    W: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "W", _freeze(self.W))

    @property
    def n(self) -> int:
        """Number of ranks."""
        return int(self.W.shape[0])

    def _rank(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"rank {i} is out of range for a topology of {self.n} ranks")
        return int(i)

    def in_neighbors(self, i: int) -> list[int]:
        """Ranks j != i that rank i receives from (W[i, j] != 0), ascending."""
        row = self.W[self._rank(i)]
        return [j for j in np.flatnonzero(row).tolist() if j != i]

    def out_neighbors(self, i: int) -> list[int]:
        """Ranks j != i that rank i sends to (W[j, i] != 0), ascending."""
        col = self.W[:, self._rank(i)]
        return [j for j in np.flatnonzero(col).tolist() if j != i]

    def self_weight(self, i: int) -> float:
        """W[i, i]: the weight rank i keeps of its own model."""
        return float(self.W[self._rank(i), i])

    def weights_from(self, i: int) -> dict[int, float]:
        """{j: W[i, j]} over rank i's in-neighbours, ascending j."""
        return {j: float(self.W[i, j]) for j in self.in_neighbors(i)}

    @property
    def degree(self) -> int:
        """The largest in-degree (messages a rank receives per round)."""
        nz = self.W != 0
        np.fill_diagonal(nz, False)
        return int(nz.sum(axis=1).max())

    @property
    def symmetric(self) -> bool:
        """W == W^T exactly (bit for bit, as the generators build it) or within 1e-12."""
        return bool(np.allclose(self.W, self.W.T, rtol=0.0, atol=1e-12))

    def diameter(self) -> int | None:
        """Hops of the longest shortest path in the undirected support graph (edges where
        W[i, j] or W[j, i] != 0); None if that graph is disconnected."""
        adj = _undirected(self.W)
        longest = 0
        for s in range(self.n):
            dist = _bfs(adj, s)
            if len(dist) < self.n:
                return None
            longest = max(longest, max(dist.values()))
        return longest

    def rho(self) -> float:
        """Spectral gap parameter (quantized-pr-sgd §5, Assumption 2).

        Symmetric W: max(|lambda_2|, |lambda_n|) of W's eigenvalues in decreasing order.
        Otherwise: the second largest singular value of W, sqrt(lambda_2(W^T W)), the
        contraction factor of ||X - mean|| per round. Both equal ||W - J||_2 when W is
        doubly stochastic; 0 for a single rank.
        """
        if self.n == 1:
            return 0.0
        if self.symmetric:
            lam = np.sort(np.linalg.eigvalsh(self.W))[::-1]
            return float(max(abs(lam[1]), abs(lam[-1])))
        sigma = np.linalg.svd(self.W, compute_uv=False)  # decreasing
        return float(sigma[1])

    def contraction(self) -> float:
        """Guaranteed shrink factor of the consensus error ||X - JX||_F per round: rho()
        (= ||W - J||_2 for a doubly stochastic W)."""
        return self.rho()


@dataclass(frozen=True, eq=False)
class Schedule:
    """The topology of every gossip round t: ``at(t) = steps[t % period]``.

    A static schedule has one step (period 1). A time-varying one cycles through
    ``period`` matrices, the same on every rank, so rank i at round t knows its peers
    without asking anyone.
    """

    name: str
    steps: tuple[Topology, ...]

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        if not steps:
            raise TopologyError(f"schedule {self.name!r} has no steps")
        sizes = sorted({s.n for s in steps})
        if len(sizes) > 1:
            raise TopologyError(f"schedule {self.name!r} mixes topologies of {sizes} ranks")
        object.__setattr__(self, "steps", steps)

    @classmethod
    def of(cls, top: Topology) -> Schedule:
        """The static schedule that uses ``top`` at every round."""
        return cls(top.name, (top,))

    @property
    def n(self) -> int:
        return self.steps[0].n

    @property
    def period(self) -> int:
        """Rounds before the matrices repeat (1 for a static schedule)."""
        return len(self.steps)

    @property
    def static(self) -> bool:
        """True when every round uses the same W (period 1)."""
        return self.period == 1

    def at(self, t: int) -> Topology:
        """The topology of round ``t`` (any integer; periodic)."""
        return self.steps[t % self.period]

    @property
    def degree(self) -> int:
        """The largest in-degree over the period."""
        return max(s.degree for s in self.steps)

    def union(self) -> Topology:
        """Every edge used in one period, with the mean of the period's weights
        (doubly stochastic if every step is): the graph whose connectivity matters."""
        W = sum((s.W for s in self.steps), np.zeros((self.n, self.n))) / self.period
        return Topology(f"{self.name} (union of {self.period} steps)", W)

    def product(self, start: int = 0) -> np.ndarray:
        """M = W_{start+p-1} ... W_start: the mixing of one period from round ``start``,
        X_{start+p} = M X_start."""
        M = np.eye(self.n)
        for t in range(start, start + self.period):
            M = self.at(t).W @ M
        return M

    def rho_effective(self) -> float:
        """Per-round contraction over a period: ||M - J||_2^(1/period), M as in
        :meth:`product`, the worst over the period's starting rounds (so it bounds any
        ``period`` consecutive rounds; all equal when the steps commute, as one-peer
        exponential's do); rho() of the single W when static."""
        if self.static:
            return self.steps[0].rho()
        worst = max(_contraction_norm(self.product(s)) for s in range(self.period))
        return worst ** (1.0 / self.period)

    def contraction(self) -> float:
        """Guaranteed shrink factor of the consensus error per round, on average over a
        period: :meth:`rho_effective`."""
        return self.rho_effective()
