"""Checks that a gossip matrix can be used: each raises :class:`TopologyError` with a
message naming what fails and where.

quantized-pr-sgd §5 asks for W_ij in [0, 1], rows and columns summing to 1 (doubly
stochastic: the average is kept, sum_i x_i' = sum_i x_i) and, for its analysis,
W = W^T (``symmetric=True``); Assumption 2 asks for rho < 1, which needs the support
graph connected (:func:`check_connected`) and not periodic (:func:`check_converges`).
"""

from __future__ import annotations

import numpy as np

from .base import Schedule, Topology, TopologyError, support_components

__all__ = [
    "TOL",
    "check",
    "check_connected",
    "check_converges",
    "check_finite",
    "check_nonnegative",
    "check_schedule",
    "check_size",
    "check_square",
    "check_stochastic",
    "check_symmetric",
    "check_topology",
    "doubly_stochastic",
]

TOL = 1e-12  # rows and columns must sum to 1 within this


def check_square(W: np.ndarray) -> None:
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        shape = "x".join(map(str, W.shape)) or "a scalar"
        raise TopologyError(f"W must be a non-empty square matrix (got {shape})")


def check_size(W: np.ndarray, n: int) -> None:
    if W.shape[0] != n:
        raise TopologyError(f"W is {W.shape[0]}x{W.shape[1]} but the job has {n} ranks")


def check_finite(W: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(W))
    if len(bad):
        i, j = bad[0]
        raise TopologyError(f"W[{i}, {j}] = {W[i, j]}: every weight must be finite")


def check_nonnegative(W: np.ndarray) -> None:
    bad = np.argwhere(W < 0)
    if len(bad):
        i, j = bad[0]
        raise TopologyError(
            f"W[{i}, {j}] = {W[i, j]:.6g} is negative: gossip weights must be in [0, 1] "
            f"({len(bad)} negative entr{'y' if len(bad) == 1 else 'ies'})"
        )


def check_stochastic(W: np.ndarray, tol: float = TOL) -> None:
    """Rows sum to 1 (each rank takes a weighted mean) and columns sum to 1 (the average
    over ranks is preserved); names the worst row or column."""
    for axis, what in ((1, "row"), (0, "column")):
        sums = W.sum(axis=axis)
        k = int(np.argmax(np.abs(sums - 1.0)))
        if abs(sums[k] - 1.0) > tol:
            hint = "" if what == "row" else ": W is row- but not doubly stochastic, the average drifts"
            raise TopologyError(
                f"{what} {k} of W sums to {sums[k]:.15g}, not 1 (worst {what}; every {what} "
                f"must sum to 1 within {tol:g}){hint}"
            )


def doubly_stochastic(W: np.ndarray, tol: float = TOL) -> bool:
    """True when W is non-negative with rows and columns summing to 1 within ``tol``."""
    try:
        check_nonnegative(W)
        check_stochastic(W, tol)
    except TopologyError:
        return False
    return True


def check_symmetric(W: np.ndarray, tol: float = TOL) -> None:
    diff = np.abs(W - W.T)
    if diff.max() > tol:
        i, j = np.unravel_index(int(np.argmax(diff)), W.shape)
        raise TopologyError(
            f"W is not symmetric: W[{i}, {j}] = {W[i, j]:.6g} but W[{j}, {i}] = {W[j, i]:.6g} "
            "(quantized-pr-sgd §5 asks for W = W^T)"
        )


def check_connected(W: np.ndarray) -> None:
    """The undirected support graph (W[i, j] or W[j, i] != 0) has one component."""
    comps = support_components(W)
    if len(comps) > 1:
        cut = comps[1]
        shown = ", ".join(map(str, cut[:8])) + (", ..." if len(cut) > 8 else "")
        raise TopologyError(
            f"the graph is disconnected ({len(comps)} components): ranks [{shown}] are cut off "
            f"from rank 0, so their models never mix with rank 0's"
        )


def check_converges(M: np.ndarray, what: str = "W") -> None:
    """The spectral radius of M - J is < 1: repeated mixing reaches the average. Fails for a
    connected but periodic W (a bipartite graph with zero self weights)."""
    n = M.shape[0]
    radius = float(np.abs(np.linalg.eigvals(M - np.full((n, n), 1.0 / n))).max()) if n > 1 else 0.0
    if radius >= 1.0 - 1e-10:
        raise TopologyError(
            f"{what} - J has spectral radius {radius:.6g} >= 1: the graph is connected but mixing "
            "oscillates and never reaches the average (rho = 1, Assumption 2 fails); give every "
            "rank a positive self weight"
        )


def check(W: object, n: int | None = None, *, symmetric: bool = False, connected: bool = True) -> np.ndarray:
    """Run every check on W (as float64) and return it: square, size ``n`` (if given), finite,
    non-negative, doubly stochastic, symmetric (if asked), connected and rho < 1 (if
    ``connected``)."""
    try:
        a = np.asarray(W, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TopologyError(f"W must be an n x n array of numbers ({exc})") from None
    check_square(a)
    if n is not None:
        check_size(a, n)
    check_finite(a)
    check_nonnegative(a)
    check_stochastic(a)
    if symmetric:
        check_symmetric(a)
    if connected:
        check_connected(a)
        check_converges(a)
    return a


def check_topology(top: Topology, symmetric: bool = False, n: int | None = None) -> None:
    """:func:`check` on ``top.W``, the message prefixed with the topology's name."""
    try:
        check(top.W, n, symmetric=symmetric)
    except TopologyError as exc:
        raise TopologyError(f"{top.name}: {exc}") from None


def check_schedule(schedule: Schedule, symmetric: bool = False, n: int | None = None) -> None:
    """Every step's W passes :func:`check` except connectivity, which only the union over a
    period needs (one step of one-peer exponential is a perfect matching); then the period
    product M must converge (spectral radius of M - J < 1)."""
    if schedule.static:
        check_topology(schedule.steps[0], symmetric, n)
        return
    for t, top in enumerate(schedule.steps):
        try:
            check(top.W, n, symmetric=symmetric, connected=False)
        except TopologyError as exc:
            raise TopologyError(f"{schedule.name}, step {t} of {schedule.period}: {exc}") from None
    try:
        check_connected(schedule.union().W)
        check_converges(schedule.product(), what=f"the product of the {schedule.period} steps")
    except TopologyError as exc:
        raise TopologyError(f"{schedule.name}, over a period of {schedule.period} steps: {exc}") from None
