"""t_mix from a consensus-distance curve (MixML (Lu, Nash & De Sa, arXiv:2005.06706), Assumption 2).

Assumption 2: t_mix is a constant such that for any state X and any start t >= 0,

    || (M_{t+t_mix-1} ... M_t) X - M_inf X || <= 1/2 || X - M_inf X ||.

A measured curve is the consensus distance d_k = ||X_{t_k} - M_inf X_0||_F at the
times t_0 = 0 < t_1 < ... at which the state changed (after each communication event;
M_inf X_t = M_inf X_0 by Assumption 1, so one reference serves every start). Between
two records the state is constant, so the worst start inside [t_k, t_{k+1}) is t_k
itself: the halving time from start k is

    h_k = t_j - t_k,   j = the first index > k with d_j <= d_k / 2,

(up to a relative 1e-9: a contraction of exactly 1/2, as on the 8-rank hypercube,
must not miss the bound by one rounding), and the curve's t_mix is max_k h_k over the starts whose distance is still above a
floor (``rel_floor * d_0``: below it the float64 rounding of the state, not the
protocol, decides). A start whose halving the curve does not reach is *censored*
(h_k = inf); :func:`t_mix_of_curve` reports inf when the start t = 0 is censored and
leaves later censored starts out, counting them (the drivers in
:mod:`mpiml.mixing.measure` run until the distance is below half the floor, so no
start above the floor is censored unless a time limit stopped the run).

Pure numpy; no MPI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CurveMix", "QUANTILES", "halving_times", "summarize", "t_mix_of_curve"]

QUANTILES = (0.5, 0.9, 0.99)


def _check(times: np.ndarray, dists: np.ndarray) -> None:
    if times.ndim != 1 or times.shape != dists.shape or times.size == 0:
        raise ValueError(
            f"times and dists must be 1-D arrays of the same, non-zero length "
            f"(got shapes {times.shape} and {dists.shape})"
        )
    if times[0] != 0 or np.any(np.diff(times) <= 0):
        raise ValueError("times must start at 0 and increase strictly")
    if np.any(dists < 0) or not np.all(np.isfinite(dists)):
        raise ValueError("dists must be finite and >= 0")


def halving_times(
    times: Sequence[float] | np.ndarray, dists: Sequence[float] | np.ndarray, rtol: float = 1e-9
) -> np.ndarray:
    """h_k for every record k: t_j - t_k with j > k the first record where
    d_j <= (1 + rtol) d_k / 2; inf where no later record halves d_k (censored).
    A start already at consensus
    (d_k = 0) halves at the next record (0 <= 0), or is censored at the last one.

    >>> halving_times([0, 4, 8, 12], [1.0, 0.8, 0.4, 0.1]).tolist()
    [8.0, 4.0, 4.0, inf]
    """
    t = np.asarray(times, dtype=np.float64)
    d = np.asarray(dists, dtype=np.float64)
    _check(t, d)
    out = np.full(t.size, np.inf)
    # suffix minima let a start skip the search when no later record can halve it
    suffix_min = np.minimum.accumulate(d[::-1])[::-1]
    for k in range(t.size - 1):
        half = d[k] / 2 * (1.0 + rtol)
        if suffix_min[k + 1] > half:
            continue
        j = k + 1 + int(np.argmax(d[k + 1 :] <= half))
        out[k] = t[j] - t[k]
    return out


@dataclass(frozen=True)
class CurveMix:
    """What one curve says about t_mix.

    ``t_mix``: max of h_k over the starts above the floor (Assumption 2's "any t");
    ``t_mix0``: h_0, the halving time from t = 0 only (the naive reading);
    ``worst_start``: the time t_k that attains ``t_mix``;
    ``starts``: starts above the floor that were used; ``censored``: starts above the
    floor left out because the curve ends before they halve.
    """

    t_mix: float
    t_mix0: float
    worst_start: float
    starts: int
    censored: int


def t_mix_of_curve(
    times: Sequence[float] | np.ndarray,
    dists: Sequence[float] | np.ndarray,
    rel_floor: float = 1e-6,
    worst_start: bool = True,
) -> CurveMix:
    """t_mix of one curve: the worst start among those with d_k >= rel_floor * d_0
    (all of them if ``worst_start``; only t = 0 otherwise). A curve that starts at
    consensus (d_0 = 0) has t_mix = 0.

    >>> t_mix_of_curve([0, 8, 16], [2.0, 0.0, 0.0]).t_mix  # one AllReduce, n = 8
    8.0
    """
    if not 0.0 <= rel_floor < 0.5:
        raise ValueError(f"rel_floor must be in [0, 0.5) (got {rel_floor})")
    t = np.asarray(times, dtype=np.float64)
    d = np.asarray(dists, dtype=np.float64)
    h = halving_times(t, d)
    if d[0] == 0.0:
        return CurveMix(0.0, 0.0, 0.0, 1, 0)
    above = d >= rel_floor * d[0]
    if not worst_start:
        above[1:] = False
    above[0] = True
    if math.isinf(h[0]):
        return CurveMix(math.inf, math.inf, 0.0, int(above.sum()), int((above & np.isinf(h)).sum()))
    used = above & np.isfinite(h)
    k = int(np.flatnonzero(used)[np.argmax(h[used])])
    return CurveMix(float(h[k]), float(h[0]), float(t[k]), int(used.sum()), int((above & np.isinf(h)).sum()))


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    """max, mean, min and the :data:`QUANTILES` (keys 'q50', 'q90', 'q99') of per-trial
    t_mix values; inf if any trial never halved (numpy's quantile keeps inf ordered).

    >>> summarize([8, 8, 16])["max"], summarize([8, 8, 16])["q50"]
    (16.0, 8.0)
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence (got shape {v.shape})")
    out = {"max": float(v.max()), "mean": float(v.mean()), "min": float(v.min())}
    for q in QUANTILES:
        out[f"q{round(q * 100)}"] = float(np.quantile(v, q, method="higher"))
    return out
