"""The spectral estimate of gossip's t_mix, to set beside the measured value.

One synchronous gossip round is X <- W X with W doubly stochastic, so with J = 11^T / n

    X' - J X' = (W - J)(X - J X),   ||X' - J X'||_F <= rho ||X - J X||_F,   rho = ||W - J||_2

(:meth:`mpiml.topology.Topology.rho`). The distance therefore halves within

    r = ceil(log(1/2) / log(rho))

rounds from *any* state and any start, and a round is n time steps in MixML's units
(footnote 2: every worker updates once per round), so t_mix <= n r. For a symmetric
static W the bound is attained (X along the eigenvector of the eigenvalue of modulus
rho shrinks by exactly rho per round), so n r *is* Assumption 2's t_mix; a measurement
on random states can only come out <= n r, and its worst start approaches n r as the
slow mode takes over (see docs/mixing.md).

A time-varying schedule W_0, ..., W_{p-1} is bounded period by period: starting at
round s, p rounds apply M_s = W_{s+p-1} ... W_s, so with rho_p = max_s ||M_s - J||_2
the distance halves within p ceil(log(1/2) / log(rho_p)) rounds (an upper bound only:
it may halve inside a period). The slack matrix of MixML §6, W' = (1 - gamma) I +
gamma W, is estimated on W' (``gamma``).

Pure numpy; no MPI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Estimate", "contraction", "gossip_estimate", "rounds_to_halve"]


def contraction(M: np.ndarray) -> float:
    """||M - J||_2: the worst-case shrink factor of the consensus distance under M."""
    n = M.shape[0]
    if n == 1:
        return 0.0
    return float(np.linalg.norm(M - np.full((n, n), 1.0 / n), 2))


def rounds_to_halve(rho: float, tol: float = 1e-12) -> float:
    """ceil(log(1/2) / log(rho)): rounds of a rho-contraction to halve any distance;
    1 when rho is 0 (up to ``tol``: exact averaging), inf when rho >= 1 (no guarantee).

    >>> rounds_to_halve(0.5), rounds_to_halve(0.8047378541243649), rounds_to_halve(1.0)
    (1, 4, inf)
    """
    if rho < 0:
        raise ValueError(f"rho must be >= 0 (got {rho})")
    if rho <= tol:
        return 1
    if rho >= 1.0 - tol:
        return math.inf
    # a ratio within 1e-9 of an integer is that integer (rho = 2^(-1/k) exactly in theory)
    return max(1, math.ceil(math.log(0.5) / math.log(rho) - 1e-9))


@dataclass(frozen=True)
class Estimate:
    """``rho``: ||W - J||_2 (static) or max_s ||M_s - J||_2 over a period (time-varying);
    ``rounds``: rounds to halve; ``t_mix``: n * rounds time steps; ``period``: p."""

    rho: float
    rounds: float
    t_mix: float
    period: int


def gossip_estimate(schedule: Any, gamma: float = 1.0) -> Estimate:
    """The spectral t_mix bound of synchronous gossip over ``schedule`` (an
    :class:`mpiml.topology.Schedule`: ``.n``, ``.period``, ``.at(r).W``).

    >>> from mpiml.topology import Schedule, ring
    >>> e = gossip_estimate(Schedule.of(ring(8)))
    >>> round(e.rho, 4), e.rounds, e.t_mix, e.period
    (0.8047, 4, 32, 1)
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1] (got {gamma})")
    n = int(schedule.n)
    p = 1 if schedule.static else int(schedule.period)
    eye = np.eye(n)
    mats = [(1.0 - gamma) * eye + gamma * np.asarray(schedule.at(r).W, dtype=np.float64) for r in range(p)]
    if p == 1:
        rho = contraction(mats[0])
    else:
        rho = 0.0
        for s in range(p):  # M_s = W_{s+p-1} ... W_s for every phase s of the period
            M = eye
            for r in range(p):
                M = mats[(s + r) % p] @ M
            rho = max(rho, contraction(M))
    rounds = p * rounds_to_halve(rho)
    return Estimate(rho=rho, rounds=rounds, t_mix=n * rounds, period=p)
