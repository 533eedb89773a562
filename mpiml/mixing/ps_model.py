"""AsyncPS in MixML's model: the communication matrices, the closed forms of t_mix, and
what a pull schedule says about t_mix (MixML (Lu, Nash & De Sa, arXiv:2005.06706),
eq. (1), Assumptions 1-2; docs/mixing.md, section "AsyncPS").

State: X = [x_0; x_1; ...; x_n], (n + 1) x d, row 0 the servers' parameters, row i
worker i's cached copy. Time: one push applied anywhere is one time step (MixML
footnote 2). With the updates Delta_t zero, a push changes nothing (M = I: a push's
update is the computation term, accumulated into row 0), and a pull by worker i
replaces row i by row 0:

    P_i = I - e_i e_i^T + e_i e_0^T,     M_inf = 1 e_0^T   (every row = the server's).

With S shards the columns split into S blocks and a pull of shard s applies P_i to
block s only. So ||X_t - M_inf X_t||_F^2 is the sum over the (worker, shard) pairs not
pulled since the start of ||x_i^s - x_0^s||^2, and Assumption 2's t_mix is the longest
gap, in pushes applied, between two pulls of one (worker, shard) (:func:`t_mix_of_pulls`).

A *schedule* here is the pull times of each worker: ``pulls[i]`` is the increasing
int64 array of the times (pushes applied to the shard when the reply's snapshot was
taken) at which worker i's pulls were answered. :mod:`mpiml.mixing.ps_sim` makes them
from a model of the protocol, :mod:`mpiml.mixing.ps_ranks` from the servers' logs.

Pure numpy; no MPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ScheduleMix",
    "consensus_curve",
    "estimate",
    "m_inf",
    "pull_matrix",
    "t_mix_equal",
    "t_mix_of_pulls",
    "t_mix_slow",
    "t_mix_ssp_bound",
    "t_mix_ssp_level",
    "t_mix_ssp_slow",
]


# ----------------------------------------------------------------- the matrices


def pull_matrix(n: int, i: int) -> np.ndarray:
    """P_i, (n + 1) x (n + 1) float64: worker i (1..n) replaces its row by the server's
    (row 0). Left-multiplies the state: X' = P_i X."""
    if not 1 <= i <= n:
        raise ValueError(f"pull_matrix: worker i must be in 1..n (got i={i}, n={n})")
    m = np.eye(n + 1)
    m[i, i] = 0.0
    m[i, 0] = 1.0
    return m


def m_inf(n: int) -> np.ndarray:
    """M_inf = 1 e_0^T, (n + 1) x (n + 1): every row becomes the server's row."""
    m = np.zeros((n + 1, n + 1))
    m[:, 0] = 1.0
    return m


# ----------------------------------------------------------------- closed forms


def t_mix_equal(n: int) -> int:
    """n workers at equal speeds whose requests are served in the same order every
    round (or all at once, as BSP does): a worker's pulls are n pushes apart."""
    return n


def t_mix_slow(n: int, r: int) -> int:
    """Fully asynchronous, n - 1 workers at one speed and one r times slower (r a
    positive integer): between two of the slow worker's pulls each fast worker pushes r
    times and the slow one once, so (n - 1) r + 1 (not r n: the slow worker does not
    push r times). The fast workers' gaps are n at most."""
    return (n - 1) * r + 1


def t_mix_ssp_bound(n: int, s: int) -> int:
    """The SSP bound s (a pull at clock c is answered once every clock >= c - s), any
    speeds, any start: (2 s + 1)(n - 1) + 1. When worker i's pull at clock c is answered
    every other clock is >= c - s; before i's next pull is answered another worker's
    pushes reach clock c + s + 1 at most (its push k waits for its pull at k - 1, which
    needs i's clock >= k - 1 - s while i is at c). Attained when i ran s clocks ahead,
    then stalled."""
    return (2 * s + 1) * (n - 1) + 1


def t_mix_ssp_level(n: int, s: int) -> int:
    """SSP bound s from a level start (every clock equal, e.g. t = 0): another worker
    can push s + 1 times before i's next pull, so (s + 1)(n - 1) + 1 (the issue's
    formula: it holds for the first gap, not for any start)."""
    return (s + 1) * (n - 1) + 1


def t_mix_ssp_slow(n: int, r: int, s: int) -> int:
    """SSP bound s, one worker r times slower (fixed speeds, all starting level at
    t = 0): the first gap of the slow worker is (n - 1) min(r, s + 1) + 1; once the fast
    workers are s + 1 clocks ahead they push once per slow push and the gaps are n."""
    return (n - 1) * min(r, s + 1) + 1


def estimate(n: int, slow: int = 1, staleness: int | None = None) -> int:
    """The model's t_mix for n workers, one of them ``slow`` times slower (1: equal
    speeds), SSP bound ``staleness`` (None: fully asynchronous).

    >>> estimate(4), estimate(4, slow=3), estimate(4, slow=3, staleness=1), estimate(4, 1, 0)
    (4, 10, 7, 4)
    """
    if n < 1 or slow < 1:
        raise ValueError(f"estimate: need n >= 1 and slow >= 1 (got n={n}, slow={slow})")
    if staleness is not None and staleness < 0:
        raise ValueError(f"estimate: staleness must be >= 0 or None (got {staleness})")
    if staleness is None:
        return t_mix_slow(n, slow)
    return t_mix_ssp_slow(n, slow, staleness)


# ----------------------------------------------------------------- a schedule's t_mix


@dataclass(frozen=True)
class ScheduleMix:
    """Assumption 2 on a schedule: ``t_mix`` the longest gap between two pulls of one
    worker (the first gap counted from t = 0), ``worst_start`` the time it starts at,
    ``worker`` whose gap it is; ``gaps[i]`` worker i's gaps in order; ``t_end`` the
    last start covered (every worker pulls again after every start < t_end)."""

    t_mix: float
    worst_start: int
    worker: int
    gaps: tuple[np.ndarray, ...]
    t_end: int


def _check_pulls(pulls: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = [np.asarray(p, dtype=np.int64) for p in pulls]
    for i, p in enumerate(out):
        if p.ndim != 1 or (p.size and (p[0] < 0 or np.any(np.diff(p) < 0))):
            raise ValueError(f"pulls[{i}] must be a 1-D array of times >= 0, not decreasing")
    return out


def t_mix_of_pulls(pulls: Sequence[np.ndarray]) -> ScheduleMix:
    """t_mix of the schedule ``pulls`` (one array of pull times per worker, or per
    (worker, shard) pair): for any start t and any state X, the window (t, t + T]
    halves the distance iff it holds a pull of every pair carrying mass; a state on one
    pair alone does not move until that pair pulls. So t_mix = max over pairs and over
    starts t < t_end of (next pull after t) - t = the longest gap, where t_end is the
    earliest last pull (later starts are censored: the run ended). inf when a pair
    never pulled.

    >>> t_mix_of_pulls([np.array([1, 3, 5]), np.array([2, 4, 6])]).t_mix
    2.0
    """
    ps = _check_pulls(pulls)
    if not ps:
        raise ValueError("t_mix_of_pulls: no workers")
    if any(p.size == 0 for p in ps):
        w = next(i for i, p in enumerate(ps) if p.size == 0)
        return ScheduleMix(math.inf, 0, w, tuple(np.diff(p, prepend=0) for p in ps), 0)
    t_end = int(min(p[-1] for p in ps))
    best, start, who = -1, 0, 0
    gaps = []
    for i, p in enumerate(ps):
        g = np.diff(p, prepend=0)
        gaps.append(g)
        starts = p - g  # the start of each gap: the previous pull (0 for the first)
        ok = starts < t_end
        if ok.any():
            k = int(np.argmax(np.where(ok, g, -1)))
            if g[k] > best:
                best, start, who = int(g[k]), int(starts[k]), i
    return ScheduleMix(float(best), start, who, tuple(gaps), t_end)


def consensus_curve(first_pull: np.ndarray, sq_dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distance ||X_t - M_inf X_t||_F from t = 0 with zero updates: the square root
    of the sum of ``sq_dist[k]`` (= ||x_i^s - x_0^s||^2 at t = 0) over the pairs k whose
    first pull ``first_pull[k]`` is later than t. Records at t = 0 and at each time a
    first pull lands (int64 times, float64 distances, summed in pair order per record).

    >>> consensus_curve(np.array([2, 1]), np.array([4.0, 5.0]))[1].tolist()
    [3.0, 2.0, 0.0]
    """
    fp = np.asarray(first_pull, dtype=np.int64)
    e = np.asarray(sq_dist, dtype=np.float64)
    if fp.shape != e.shape or fp.ndim != 1:
        raise ValueError(f"first_pull and sq_dist must be 1-D of one length (got {fp.shape}, {e.shape})")
    times = np.unique(np.concatenate([[0], fp[fp > 0]]))
    dists = np.array([math.sqrt(float(np.sum(e[fp > t]))) for t in times])
    return times, dists
