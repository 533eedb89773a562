"""Topology generators: pure functions from the number of ranks n (and parameters) to a
:class:`Topology` or a time-varying :class:`Schedule`, in :data:`REGISTRY`.

Where two of a rank's neighbours coincide on a small graph (a ring of 2, a torus with a
side of 1 or 2), their weights are merged into one entry, so every W stays doubly
stochastic and the closed-form eigenvalues still hold. docs/topologies.md lists each
W, its degree and its rho.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from .base import Schedule, Topology, TopologyError, support_components
from .weights import from_edges

__all__ = [
    "REGISTRY",
    "complete",
    "exponential",
    "hypercube",
    "one_peer_exponential",
    "random_regular",
    "ring",
    "star",
    "torus",
]


def _int(where: str, name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise TopologyError(f"{where}: {name} must be an integer >= {lo} (got {value!r})")
    return int(value)


def _mixing(n: int, entries: Iterable[tuple[int, int, float]]) -> np.ndarray:
    """W with W[i, j] += w for every (i, j, w): coinciding neighbours merge their weights."""
    W = np.zeros((n, n))
    for i, j, w in entries:
        W[i, j] += w
    return W


def _circulant(n: int, offsets: Iterable[int], w: float) -> np.ndarray:
    """W[i, (i + s) mod n] += w for every offset s (0 for the self weight)."""
    return _mixing(n, ((i, (i + s) % n, w) for s in offsets for i in range(n)))


def ring(n: int) -> Topology:
    """Ring: itself and its two neighbours, 1/3 each.

    MixML §6 SyncDR, the ring of quantized-pr-sgd §6.1. n = 2: the two neighbours
    coincide and merge, W = [[1/3, 2/3], [2/3, 1/3]]; n = 1: [[1]].
    Eigenvalues 1/3 + 2/3 cos(2 pi j / n): rho = 1/3 + 2/3 cos(2 pi / n) for n >= 3, 1/3
    for n = 2.
    """
    n = _int("ring", "n", n, 1)
    return Topology("ring", _circulant(n, (0, 1, -1), 1.0 / 3.0))


def _grid(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    if rows is None and cols is None:
        rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)  # the most square
        return rows, n // rows
    if rows is not None:
        rows = _int("torus", "rows", rows, 1)
    if cols is not None:
        cols = _int("torus", "cols", cols, 1)
    r = rows if rows is not None else n // (cols or 1)
    c = cols if cols is not None else n // r
    if r * c != n:
        raise TopologyError(f"torus: rows x cols = {r} x {c} = {r * c} but the job has {n} ranks")
    return r, c


def torus(n: int, rows: int | None = None, cols: int | None = None) -> Topology:
    """2-D torus rows x cols: itself and its 4 grid neighbours, 1/5 each (params rows, cols).

    A grid with wraparound, rank i at (i // cols, i % cols); neighbours that coincide (a
    side of 1 or 2) merge their weights. The most square factorisation of n unless
    ``rows``/``cols`` are given (a prime n gives 1 x n, a ring with self weight 3/5).
    Eigenvalues (1 + 2 cos(2 pi a / rows) + 2 cos(2 pi b / cols)) / 5.
    """
    n = _int("torus", "n", n, 1)
    r, c = _grid(n, rows, cols)

    def at(i: int, dr: int, dc: int) -> int:
        return ((i // c + dr) % r) * c + (i % c + dc) % c

    moves = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))
    return Topology(f"torus({r}x{c})", _mixing(n, ((i, at(i, *m), 0.2) for i in range(n) for m in moves)))


def _exponential_offsets(n: int) -> list[int]:
    powers = [1 << k for k in range(max(n - 1, 0).bit_length())]  # 2^k < n
    return sorted({s % n for p in powers for s in (p, -p)} - {0})


def exponential(n: int) -> Topology:
    """Static exponential graph: i linked to i +- 2^k mod n, uniform weights.

    Every 2^k < n is an offset; weight 1/(d + 1) over itself and its d distinct
    neighbours (circulant, so regular and doubly stochastic). The undirected form of
    SGP's / BlueFog's ``ExponentialGraph``, which link i -> i + 2^k only.
    """
    n = _int("exponential", "n", n, 1)
    offsets = _exponential_offsets(n)
    return Topology("exponential", _circulant(n, [0, *offsets], 1.0 / (len(offsets) + 1)))


def one_peer_exponential(n: int) -> Schedule:
    """Time-varying: at round t average with rank i + 2^(t mod L), weight 1/2.

    One-peer exponential graph (SGP; BlueFog's dynamic one-peer topology): at round t
    every rank i averages with rank (i + 2^k) mod n, k = t mod L, L = ceil(log2 n):
    W_t = (I + P_k) / 2 with P_k a cyclic shift, doubly stochastic but not symmetric
    unless 2^k = n/2. One message in and one out per round.

    n a power of 2: the product over a period is exactly J (exact averaging in log2 n
    rounds, rho_effective = 0). Otherwise the same L offsets 2^0 .. 2^(L-1) are used; the
    period product is a positive circulant but not J, rho_effective in (0, 1).
    """
    n = _int("one_peer_exponential", "n", n, 1)
    L = max(1, (n - 1).bit_length())
    steps = []
    for k in range(L):
        W = _mixing(n, ((i, j, 0.5) for i in range(n) for j in (i, (i + (1 << k)) % n)))
        steps.append(Topology(f"one_peer_exponential[t={k}: i+{1 << k}]", W))
    return Schedule("one_peer_exponential", tuple(steps))


def hypercube(n: int) -> Topology:
    """Hypercube (n a power of 2): i linked to i XOR 2^k, weights 1/(log2 n + 1).

    rho = (L - 1) / (L + 1), L = log2 n (eigenvalues (1 + L - 2m) / (L + 1), m = 0..L).
    """
    n = _int("hypercube", "n", n, 1)
    if n & (n - 1):
        raise TopologyError(f"hypercube needs a power of 2 ranks (got {n}); try exponential")
    L = n.bit_length() - 1
    entries = ((i, i ^ b, 1.0 / (L + 1)) for i in range(n) for b in [0, *(1 << k for k in range(L))])
    return Topology("hypercube", _mixing(n, entries))


def complete(n: int) -> Topology:
    """Complete graph, 1/n everywhere: one round is an exact average, rho = 0."""
    n = _int("complete", "n", n, 1)
    return Topology("complete", np.full((n, n), 1.0 / n))


def star(n: int, weights: str = "metropolis") -> Topology:
    """Star centred on rank 0, Metropolis weights (param weights=metropolis|uniform).

    Metropolis: W_0j = W_j0 = 1/n, W_00 = 1/n, W_jj = 1 - 1/n; rho = 1 - 1/n for n >= 3.
    ``weights="uniform"`` is not doubly stochastic for n >= 3 (the centre's column sums
    to 1/n + (n - 1)/2), and the checks reject it.
    """
    n = _int("star", "n", n, 1)
    name = "star" if weights == "metropolis" else f"star({weights})"
    return from_edges(n, [(0, j) for j in range(1, n)], weights, name)


def _pairing(n: int, k: int, rng: np.random.Generator) -> set[tuple[int, int]] | None:
    """One try of the pairing model with retries of only the clashing stubs (as
    networkx's random_regular_graph); None when the leftover stubs cannot pair."""
    edges: set[tuple[int, int]] = set()
    stubs = [v for v in range(n) for _ in range(k)]
    for _ in range(100 * n * k):
        if not stubs:
            return edges
        rng.shuffle(stubs)
        left: list[int] = []
        for a, b in zip(stubs[::2], stubs[1::2], strict=True):
            e = (min(a, b), max(a, b))
            if a != b and e not in edges:
                edges.add(e)
            else:
                left += [a, b]
        ends = sorted(set(left))
        if left and not any((u, v) not in edges for i, u in enumerate(ends) for v in ends[i + 1 :]):
            return None
        stubs = left
    return None


def random_regular(n: int, k: int = 3, seed: int = 0, weights: str = "metropolis") -> Topology:
    """Connected random k-regular graph, weights 1/(k + 1) (params k=3, seed=0).

    Drawn from ``seed``: every rank passes the same seed and builds the same graph, with
    no communication. On a regular graph the metropolis and uniform rules agree.
    """
    where = "random_regular"
    n = _int(where, "n", n, 1)
    k = _int(where, "k", k, 0)
    seed = _int(where, "seed", seed, 0)
    name = f"random_regular(k={k}, seed={seed})"
    if k >= n:
        raise TopologyError(f"{where}: k must be < n (got k={k} for {n} ranks)")
    if n * k % 2:
        raise TopologyError(f"{where}: n x k must be even (got {n} x {k}): each edge has two ends")
    if (k == 0 and n > 1) or (k == 1 and n > 2):
        raise TopologyError(f"{where}: a {k}-regular graph on {n} ranks is disconnected; use k >= 2")
    if k == n - 1:
        return from_edges(n, [(i, j) for i in range(n) for j in range(i + 1, n)], weights, name)
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        edges = _pairing(n, k, rng)
        if edges is None:
            continue
        top = from_edges(n, sorted(edges), weights, name)
        if len(support_components(top.W)) == 1:
            return top
    raise TopologyError(f"{where}: no connected {k}-regular graph on {n} ranks found in 1000 tries")


REGISTRY: dict[str, Callable[..., Topology | Schedule]] = {
    "ring": ring,
    "torus": torus,
    "exponential": exponential,
    "one_peer_exponential": one_peer_exponential,
    "hypercube": hypercube,
    "complete": complete,
    "star": star,
    "random_regular": random_regular,
}
