"""SDPIPE's group averaging in MixML's model: the matrices W_S, the replay of a group
schedule, and what a schedule says about t_mix (MixML (Lu, Nash & De Sa,
arXiv:2005.06706), eq. (1), Assumptions 1-2; SDPIPE (Miao et al., VLDB 2023), appendix
B: X_{k+1} = (X_k - eta G_k) W_k; docs/mixing.md, section "SDPIPE").

State: X, P x d, row p replica p's parameters. A closed group S (replica indices,
ascending) is one communication event: the rows of S become their mean,

    W_S = I on the rows outside S,  1/|S| on the block S x S   (symmetric, doubly stochastic),

so M_inf = J = 11^T / P (Assumption 1) and ||W X - J X|| = ||(W - J)(X - J X)||.

**Time** (MixML footnote 2): one time step is one replica's update; a replica updates
once per group it is in, so the group that closes k-th ends at t_k = |S_1| + ... + |S_k|,
and an iteration in which every replica updates once is P time steps (a group of all
P replicas every iteration is AllReduce: t_mix = P). The groups of one stage are closed
by the scheduler in one order (their ``seq``), and every replica's groups come in that
order, so applying them to X in ``seq`` order gives the states the replicas hold: a
replica enters a group with its state after its previous group, which closed before.

A *schedule* here is the list of groups in ``seq`` order (tuples of replica indices).
Pure numpy; no MPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..pipeline.groups import group_matrix

__all__ = [
    "ScheduleMix",
    "consensus_curve",
    "group_matrix",
    "group_times",
    "live_groups",
    "replay",
    "t_mix_of_groups",
]


def group_times(groups: Sequence[Sequence[int]]) -> np.ndarray:
    """t_0 = 0, t_k = the updates made by the end of group k (int64, length len(groups) + 1).

    >>> group_times([(0, 1), (2,), (0, 1, 2)]).tolist()
    [0, 2, 3, 6]
    """
    return np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)


def live_groups(P: int, groups: Sequence[Sequence[int]]) -> int:
    """How many groups, from the first, close while every replica is still running: up
    to and with the group of the first replica to make its last update (after it the
    others update without that replica, which is the end of the run, not the protocol).

    >>> live_groups(3, [(0, 1, 2), (0, 1), (2,), (0, 1), (0,)])   # replica 2 is done after group 2
    3
    """
    last = [-1] * P
    for j, g in enumerate(groups):
        for m in g:
            last[int(m)] = j
    return min(last) + 1


def replay(x0: np.ndarray, groups: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """The states X_1, ..., X_m (each P x d) after each group, from X_0 = ``x0``, averaged
    as :class:`~mpiml.protocols.sdpipe.GroupAverage` does (:func:`~mpiml.protocols.sdpipe.average_of`:
    summed in ascending member order, then divided by |S|), so bit for bit the replicas'."""
    from ..protocols.sdpipe import average_of

    x = np.array(x0, dtype=np.float64, copy=True)
    out = []
    for g in groups:
        ms = [int(m) for m in g]
        if len(ms) > 1:
            x[ms] = average_of(list(x), ms)
        out.append(x.copy())
    return out


def consensus_curve(x0: np.ndarray, states: Sequence[np.ndarray]) -> np.ndarray:
    """||X_k - J X_0||_F for X_0 = ``x0`` and each of ``states`` (float64, length
    len(states) + 1; the rows summed in replica order)."""
    ref = np.sum(x0, axis=0) / x0.shape[0]
    out = []
    for x in [x0, *states]:
        dev = x - ref
        out.append(math.sqrt(float(np.sum(np.einsum("ij,ij->i", dev, dev)))))
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class ScheduleMix:
    """Assumption 2 on a schedule: ``t_mix`` = max over the starts that halve of
    h_k = t_j - t_k (j the first group after k with ||W_{S_j} ... W_{S_{k+1}} - J||_2 <= 1/2:
    every state halves), attained at ``worst_start``; inf when the start t = 0 never
    halves. ``starts`` used, ``censored`` starts left out (the run ended first)."""

    t_mix: float
    worst_start: float
    starts: int
    censored: int


def t_mix_of_groups(P: int, groups: Sequence[Sequence[int]], rtol: float = 1e-9) -> ScheduleMix:
    """Assumption 2's t_mix of a schedule of groups of P replicas, for the worst state.

    A window's product A is doubly stochastic, so A X - J X = (A - J)(X - J X) and the
    window halves *every* state iff ||A - J||_2 <= 1/2 (up to a relative ``rtol``). Each
    start k (the state after k groups; the state is constant until the next group, so
    t_k is the worst start in its interval) is followed until its product halves; starts
    the schedule ends before halving are left out (counted in ``censored``).

    >>> t_mix_of_groups(2, [(0, 1), (0, 1)]).t_mix            # AllReduce: P
    2.0
    >>> t_mix_of_groups(4, [(0, 1), (2, 3), (1, 2), (0, 3)] * 5).t_mix   # pairs that connect: 2 P
    8.0
    >>> t_mix_of_groups(4, [(0, 1), (2, 3)] * 5).t_mix                    # pairs that never do
    inf
    """
    if P < 1:
        raise ValueError(f"P must be >= 1 (got {P})")
    t = group_times(groups)
    m = len(groups)
    h = np.full(m, np.inf)
    if P == 1:
        h[:] = [t[k + 1] - t[k] for k in range(m)]  # one replica is at consensus already
    J = np.full((P, P), 1.0 / P)
    eye = np.eye(P)
    open_k: list[int] = []  # starts not yet halved
    prods = np.empty((0, P, P))
    for j, g in enumerate(groups if P > 1 else []):
        ms = [int(v) for v in g]
        group_matrix(P, ms)  # ValueError for a bad group
        open_k.append(j)  # the start after j groups: its product begins empty (identity)
        prods = np.concatenate([prods, eye[None]], axis=0)
        if len(ms) < 2:
            continue  # W = I: no product changes, none halves here
        prods[:, ms, :] = prods[:, ms, :].mean(axis=1, keepdims=True)
        norms = np.linalg.norm(prods - J, ord=2, axis=(1, 2))
        done = norms <= 0.5 * (1.0 + rtol)
        for i in np.flatnonzero(done):
            k = open_k[i]
            h[k] = t[j + 1] - t[k]
        keep = ~done
        open_k = [k for k, o in zip(open_k, keep, strict=True) if o]
        prods = prods[keep]
    if m == 0 or math.isinf(h[0]):
        return ScheduleMix(math.inf, 0.0, 0, int(np.isinf(h).sum()))
    used = np.isfinite(h)
    k = int(np.flatnonzero(used)[np.argmax(h[used])])
    return ScheduleMix(float(h[k]), float(t[k]), int(used.sum()), int((~used).sum()))
