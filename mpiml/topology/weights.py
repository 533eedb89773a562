"""Weight rules: from an undirected edge list to a gossip matrix W.

``metropolis`` (Metropolis-Hastings; Boyd, Diaconis & Xiao, "Fastest mixing Markov chain
on a graph", MixML ref. [41]): W_ij = 1 / (1 + max(d_i, d_j)) on each edge,
W_ii = 1 - sum_{j != i} W_ij. Symmetric and doubly stochastic on any graph.

``uniform``: W_ij = 1 / (d_i + 1) for j in N(i) and for j = i. Rows sum to 1 always,
columns only when the graph is regular: on a star the centre's column sums to
1/n + (n - 1)/2, and :func:`~mpiml.topology.check` rejects it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .base import Topology, TopologyError

__all__ = ["WEIGHTS", "degrees", "edge_set", "from_edges", "metropolis", "uniform"]

Edges = Iterable[Sequence[int]]


def edge_set(n: int, edges: Edges) -> list[tuple[int, int]]:
    """Undirected edges as sorted (i, j) pairs with i < j, duplicates merged; a self-loop or
    a rank outside 0..n-1 is an error."""
    out: set[tuple[int, int]] = set()
    for k, e in enumerate(edges):
        pair = list(e)
        if len(pair) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in pair
        ):
            raise TopologyError(f"edge {k} is {pair!r}: an edge is a pair of ranks [i, j]")
        i, j = int(pair[0]), int(pair[1])
        for v in (i, j):
            if not 0 <= v < n:
                raise TopologyError(
                    f"edge {k} [{i}, {j}] names rank {v} but the job has {n} ranks (0..{n - 1})"
                )
        if i == j:
            raise TopologyError(
                f"edge {k} [{i}, {j}] is a self-loop: the self weight W_ii follows from the rule"
            )
        out.add((min(i, j), max(i, j)))
    return sorted(out)


def degrees(n: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    d = np.zeros(n, dtype=np.int64)
    for i, j in edges:
        d[i] += 1
        d[j] += 1
    return d


def metropolis(n: int, edges: Edges) -> np.ndarray:
    """Metropolis-Hastings weights: symmetric and doubly stochastic for any graph."""
    es = edge_set(n, edges)
    d = degrees(n, es)
    W = np.zeros((n, n))
    for i, j in es:
        W[i, j] = W[j, i] = 1.0 / (1.0 + max(d[i], d[j]))
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def uniform(n: int, edges: Edges) -> np.ndarray:
    """1 / (d_i + 1) to each neighbour and to itself: doubly stochastic only on a regular graph."""
    es = edge_set(n, edges)
    d = degrees(n, es)
    W = np.zeros((n, n))
    for i, j in es:
        W[i, j] = 1.0 / (d[i] + 1)
        W[j, i] = 1.0 / (d[j] + 1)
    np.fill_diagonal(W, 1.0 / (d + 1))
    return W


WEIGHTS: dict[str, Callable[[int, Edges], np.ndarray]] = {"metropolis": metropolis, "uniform": uniform}


def from_edges(n: int, edges: Edges, weights: str = "metropolis", name: str = "edges") -> Topology:
    """A topology from an undirected edge list and a rule in :data:`WEIGHTS` (unchecked)."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise TopologyError(f"the number of ranks must be an integer >= 1 (got {n!r})")
    rule = WEIGHTS.get(weights)
    if rule is None:
        raise TopologyError(f"weights must be one of {', '.join(map(repr, WEIGHTS))} (got {weights!r})")
    return Topology(name, rule(int(n), edges))
