"""A deterministic event simulator of the asynchronous parameter server's pull schedule
(the model behind :mod:`mpiml.mixing.ps_model`'s closed forms; docs/mixing.md, "AsyncPS").

Worker i computes for ``durations[i][k]`` (its k-th step; a number: every step), then
sends one request: its push (clock k + 1) and a pull at that clock, and waits for the
reply before computing again. The server (one shard; S shards see the same schedule
in this model) serves the requests that arrive at the same instant as one batch, as
``MPI_Waitsome`` hands it several: it applies the batch's pushes in worker order (one
time step each), then answers every pending pull that the staleness bound allows (a
pull at clock c once every worker's clock is >= c - s; ``staleness`` None: at once),
each at the number of pushes applied so far. A worker that has made its ``steps[i]``
pushes stops; its clock stays (as the real server keeps a finished worker's count).
Replies take no time. Ties are exact: give integer (or exactly representable)
durations when ties matter.

:func:`simulate` returns the pull schedule; :func:`mpiml.mixing.ps_model.t_mix_of_pulls`
turns it into t_mix. Pure Python; no MPI, no randomness (pass jittered durations for
that).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Simulation", "simulate", "speeds"]


@dataclass(frozen=True)
class Simulation:
    """``pulls[i]``: the times (pushes applied) at which worker i's pulls were answered,
    one per push, in order; ``clocks[i]``: the clock of each; ``pushes``: the pushes
    applied in all; ``slowest``: the slowest clock when each pull (in ``pulls`` order)
    was answered."""

    pulls: tuple[np.ndarray, ...]
    clocks: tuple[np.ndarray, ...]
    slowest: tuple[np.ndarray, ...]
    pushes: int


def speeds(n: int, slow: int = 1, rounds: int = 4) -> tuple[list[float], list[int]]:
    """Durations and step counts for n workers, worker 0 ``slow`` times slower: the
    fast ones compute for 1, worker 0 for ``slow``; worker 0 makes ``rounds`` pushes
    and the others ``rounds * slow`` (all end at about the same time)."""
    if n < 1 or slow < 1 or rounds < 1:
        raise ValueError(f"speeds: need n, slow, rounds >= 1 (got {n}, {slow}, {rounds})")
    return [float(slow)] + [1.0] * (n - 1), [rounds] + [rounds * slow] * (n - 1)


def _duration(d: float | Sequence[float], k: int) -> float:
    if isinstance(d, (int, float)):
        return float(d)
    return float(d[min(k, len(d) - 1)])  # the last one repeats


def simulate(
    durations: Sequence[float | Sequence[float]], steps: int | Sequence[int], staleness: int | None = None
) -> Simulation:
    """Run the model: ``durations[i]`` worker i's compute time per step (a number, or
    one per step, the last repeating), ``steps`` pushes per worker (one number for
    all, or one per worker), SSP bound ``staleness`` (None: fully asynchronous; 0: BSP).

    Raises ``ValueError`` on a bad argument and ``RuntimeError`` if the run deadlocks
    (a pull waits on a worker that has stopped: give every worker enough steps).

    >>> [p.tolist() for p in simulate([1, 1, 1], 2).pulls]   # equal speeds: every 3 pushes
    [[3, 6], [3, 6], [3, 6]]
    """
    n = len(durations)
    steps_of = [int(steps)] * n if isinstance(steps, int) else [int(k) for k in steps]
    if n < 1 or len(steps_of) != n or min(steps_of) < 1:
        raise ValueError(f"simulate: need >= 1 worker and steps >= 1 per worker (got {n}, {steps_of})")
    if staleness is not None and staleness < 0:
        raise ValueError(f"simulate: staleness must be >= 0 or None (got {staleness})")
    for i, d in enumerate(durations):
        ds = [d] if isinstance(d, (int, float)) else list(d)
        if not ds or min(ds) < 0:
            raise ValueError(f"simulate: durations[{i}] must be >= 0 (and not empty)")
    clock = [0] * n
    pulls: list[list[int]] = [[] for _ in range(n)]
    clocks: list[list[int]] = [[] for _ in range(n)]
    slowest: list[list[int]] = [[] for _ in range(n)]
    events = [(_duration(durations[i], 0), i) for i in range(n)]  # (arrival time, worker)
    heapq.heapify(events)
    pending: list[tuple[int, int]] = []  # (worker, clock) pulls not yet answered
    applied = 0
    while events:
        now = events[0][0]
        batch = []
        while events and events[0][0] == now:
            batch.append(heapq.heappop(events)[1])
        for i in sorted(batch):  # the batch's pushes, in worker order
            clock[i] += 1
            applied += 1
            pending.append((i, clock[i]))
        low = min(clock)
        keep = []
        for i, c in pending:
            if staleness is not None and low < c - staleness:
                keep.append((i, c))
                continue
            pulls[i].append(applied)
            clocks[i].append(c)
            slowest[i].append(low)
            if c < steps_of[i]:
                heapq.heappush(events, (now + _duration(durations[i], c), i))
        pending = keep
    if pending:
        waiting = ", ".join(f"worker {i} at clock {c}" for i, c in pending)
        raise RuntimeError(f"simulate: deadlock, pulls never answerable: {waiting} (clocks {clock})")
    return Simulation(
        tuple(np.asarray(p, dtype=np.int64) for p in pulls),
        tuple(np.asarray(c, dtype=np.int64) for c in clocks),
        tuple(np.asarray(s, dtype=np.int64) for s in slowest),
        applied,
    )
