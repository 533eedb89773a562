"""Measure a protocol's t_mix on real ranks (MixML §6 "Mixing Time in Different Protocols").

:func:`measure` drives *only* a protocol's communication (no computation: the updates
Delta_t of eq. (1) are zero) on random states and records the consensus distance
d_t = ||X_t - M_inf X_0||_F after every communication event; :mod:`mpiml.mixing.tmix`
turns each curve into t_mix. Time is MixML's: one time step is one worker's update
anywhere (footnote 2), so a step in which all n workers update is n time steps:

``allreduce``
    one AllReduce (mean) after every iteration of n updates: records at t = n, 2n, ...;
    t_mix = n (footnote 2);
``local_step`` (``m``)
    m local iterations (m n updates), then one AllReduce (§6 "Local Step"): records at
    every iteration (the state is unchanged by the no-op updates) and the AllReduce
    lands at t = m n; t_mix = m n;
``gossip`` (``topology``, ``method``, ``gamma``)
    one synchronous :class:`~mpiml.protocols.Gossip` round per iteration (SyncDR on a
    ring): records at t = n r after round r; the spectral bound is
    :func:`~mpiml.mixing.spectral.gossip_estimate`;
``async_gossip`` (``topology``, ``every``)
    :class:`~mpiml.protocols.AsyncGossip` (push-sum, AsyncDR): one rank's exchange
    (drain + push) is one time step. There is no global clock, so the state is read
    at cuts: each rank makes ``every`` = K exchanges at its own pace (no barrier
    between them), then all ranks meet at a barrier, take the mass still in their
    windows (a drain: after the barrier no push is in flight, so this is a
    consistent cut), and the distance of the de-biased models z_i is recorded at
    t = n K c after cut c. The first halving is only known to fall in (t_{j-1}, t_j],
    so the reported t_j - t_k is an upper bound (resolution n K); starts are the cuts.
``async_ps`` (``servers``, ``staleness``, ``slow``, ``rounds``, ``period``)
    the asynchronous parameter server on n workers + S servers, measured as a whole by
    :func:`mpiml.mixing.ps_ranks.measure_ps` (time = pushes applied, from the servers'
    logs; t_mix = the longest gap between two pulls of a worker, Assumption 2's worst
    state; docs/mixing.md "AsyncPS").
``sdpipe`` (``wait_ms``, ``wait_max_ms``, ``ssp_bound``, ``sync_every``, ``slow``, ``rounds``,
``period``, ``jitter``)
    SDPIPE's groups of ready replicas on P replicas + a scheduler rank, measured as a
    whole by :func:`mpiml.mixing.sdpipe_ranks.measure_sdpipe` (time = updates: a group
    of |S| replicas is |S| time steps, an iteration of every replica P; t_mix =
    Assumption 2 on the scheduler's groups for the worst state; docs/mixing.md "SDPIPE").

The initial state of trial ``trial`` on rank r is N(0, 1)^d drawn from
``numpy.random.default_rng([seed, trial, r])``. The distance is measured in float64 by
an Allgather of each rank's ||x_r - mean||^2, summed in rank order, so every rank gets
the same value bit for bit and stops at the same record: measurement traffic is not a
communication event of the protocol. A trial runs until d <= rel_floor d_0 / 2 (so
no start above the floor is censored) or ``max_time``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mpi4py import MPI

from .ps_ranks import PS_PARAMS, measure_ps
from .sdpipe_ranks import SDPIPE_PARAMS, measure_sdpipe
from .spectral import gossip_estimate
from .tmix import summarize, t_mix_of_curve

__all__ = ["PARAMS", "PROTOCOLS", "MixingResult", "measure"]


class _Sync:
    """allreduce (m = 1) and local_step (m local iterations per AllReduce)."""

    def __init__(self, comm: MPI.Comm, dim: int, seed: int, m: int = 1) -> None:
        from ..protocols import AllReduce

        if m < 1:
            raise ValueError(f"m must be >= 1 local steps per AllReduce (got m={m})")
        self.n, self.m = comm.Get_size(), m
        self.proto = AllReduce(comm, dim, np.float64, np, op="mean")
        self.resolution, self.estimate, self.rho = self.n, float(m * self.n), None
        self.params: dict[str, Any] = {}

    def events(self, x: np.ndarray, trial: int) -> Iterator[int]:
        t = 0
        while True:
            for _ in range(self.m - 1):  # n no-op local updates per iteration, no communication
                t += self.n
                yield t
            t += self.n
            x[...] = self.proto.run(x)
            yield t


class _LocalStep(_Sync):
    def __init__(self, comm: MPI.Comm, dim: int, seed: int, m: int = 2) -> None:
        super().__init__(comm, dim, seed, m)
        self.params = {"m": m}


class _Gossip:
    """Synchronous gossip rounds over a topology schedule."""

    def __init__(
        self,
        comm: MPI.Comm,
        dim: int,
        seed: int,
        topology: str = "ring",
        method: str = "p2p",
        gamma: float = 1.0,
    ) -> None:
        from ..protocols import Gossip
        from ..topology import build_schedule

        self.n = comm.Get_size()
        schedule = build_schedule(topology, self.n)
        self.proto = Gossip(comm, dim, np.float64, schedule, method=method, gamma=gamma)
        est = gossip_estimate(schedule, gamma)
        self.resolution, self.estimate, self.rho = self.n, float(est.t_mix), est.rho
        self.params = {"topology": topology, "method": method, "gamma": gamma}

    def events(self, x: np.ndarray, trial: int) -> Iterator[int]:
        r = 0
        while True:
            self.proto.start(x, r, round=r)
            x[...] = self.proto.finish()
            r += 1
            yield r * self.n


class _AsyncGossip:
    """Push-sum exchanges, read at barrier cuts every ``every`` exchanges per rank."""

    def __init__(self, comm: MPI.Comm, dim: int, seed: int, topology: str = "ring", every: int = 1) -> None:
        from ..topology import build_schedule

        if every < 1:
            raise ValueError(f"every must be >= 1 exchanges per rank between cuts (got every={every})")
        self.comm, self.dim, self.seed, self.every = comm, dim, seed, every
        self.n = comm.Get_size()
        self.schedule = build_schedule(topology, self.n)
        self.resolution, self.estimate, self.rho = self.n * every, None, None
        self.params = {"topology": topology, "every": every}

    def events(self, x: np.ndarray, trial: int) -> Iterator[int]:
        from ..protocols import AsyncGossip

        # fresh windows and weights w = 1 per trial; the peer choices differ per trial
        seed = int(np.random.SeedSequence([self.seed, trial]).generate_state(1)[0])
        ag = AsyncGossip(self.comm, self.dim, np.float64, self.schedule, seed=seed)
        s = 0
        try:
            while True:
                for _ in range(self.every):
                    ag.step(x, s)
                    s += 1
                self.comm.Barrier()  # every push of this phase is complete at its target
                ag.drain(x, s)  # ... and taken: the cut holds no mass in flight
                yield s * self.n
        except GeneratorExit:  # the trial ended on every rank at the same record: close together
            ag.close(x, s)
            raise


PROTOCOLS: dict[str, Callable[..., Any]] = {
    "allreduce": _Sync,
    "local_step": _LocalStep,
    "gossip": _Gossip,
    "async_gossip": _AsyncGossip,
    "async_ps": measure_ps,
    "sdpipe": measure_sdpipe,
}
"""Protocol name -> driver factory ``(comm, dim, seed, **params)``; ``async_ps`` and
``sdpipe`` -> their whole measurement (:func:`~mpiml.mixing.ps_ranks.measure_ps`,
:func:`~mpiml.mixing.sdpipe_ranks.measure_sdpipe`), not a driver of events."""

PARAMS: dict[str, tuple[str, ...]] = {
    "allreduce": (),
    "local_step": ("m",),
    "gossip": ("topology", "method", "gamma"),
    "async_gossip": ("topology", "every"),
    "async_ps": PS_PARAMS,
    "sdpipe": SDPIPE_PARAMS,
}


@dataclass
class MixingResult:
    """One measurement; identical on every rank.

    Per trial: ``t_mix_trials`` (worst start), ``t_mix0_trials`` (start t = 0 only),
    ``worst_starts``, ``censored`` and the curve (``curves[i]`` = (times, distances)).
    ``estimate``: the theory value beside the measurement (n, m n, the spectral bound
    of gossip; None for async gossip), ``rho`` the contraction it came from.
    """

    protocol: str
    n: int
    dim: int
    seed: int
    rel_floor: float
    params: dict[str, Any]
    resolution: int
    estimate: float | None
    rho: float | None
    t_mix_trials: np.ndarray
    t_mix0_trials: np.ndarray
    worst_starts: np.ndarray
    censored: np.ndarray
    curves: list[tuple[np.ndarray, np.ndarray]] = field(repr=False)
    pulls: list[list[np.ndarray]] | None = field(default=None, repr=False)
    """async_ps: per trial, the pull times of each (worker, shard) pair (worker-major)."""
    groups: list[list[tuple[int, tuple[int, ...]]]] | None = field(default=None, repr=False)
    """sdpipe: per trial, the scheduler's groups in order: (round kind, members)."""

    @property
    def trials(self) -> int:
        return int(self.t_mix_trials.size)

    @property
    def t_mix(self) -> float:
        """Max over trials of the worst-start t_mix: the measured t_mix."""
        return float(self.t_mix_trials.max())

    def summary(self, from_zero: bool = False) -> dict[str, float]:
        """max, mean, min, q50, q90, q99 over trials (of the t = 0 values if ``from_zero``)."""
        return summarize(self.t_mix0_trials if from_zero else self.t_mix_trials)


def _distance(comm: MPI.Comm, x: np.ndarray, ref: np.ndarray, tmp: np.ndarray, parts: np.ndarray) -> float:
    np.subtract(x, ref, out=tmp)
    local = np.array([np.dot(tmp, tmp)])
    comm.Allgather(local, parts)
    return float(np.sqrt(np.sum(parts)))  # same inputs, same order: the same float on every rank


def measure(
    comm: MPI.Comm,
    protocol: str,
    n_trials: int,
    d: int = 8,
    seed: int = 0,
    rel_floor: float = 1e-6,
    max_time: int | None = None,
    **params: Any,
) -> MixingResult:
    """Measure ``protocol``'s t_mix over ``n_trials`` random states of ``d`` float64 values
    per rank; collective over ``comm``. ``params`` are the protocol's own (``m``;
    ``topology``, ``method``, ``gamma``; ``topology``, ``every``; async_ps's
    ``servers``, ``staleness``, ``slow``, ``rounds``, ``period``; sdpipe's
    :data:`~mpiml.mixing.sdpipe_ranks.SDPIPE_PARAMS`). A trial stops at
    d_t <= rel_floor d_0 / 2 or at ``max_time`` (default 10000 n) time steps (async_ps
    and sdpipe: after ``rounds``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
    unknown = sorted(set(params) - set(PARAMS[protocol]))
    if unknown:
        takes = ", ".join(PARAMS[protocol]) or "no parameters"
        raise ValueError(f"protocol {protocol!r} takes {takes} (got {', '.join(unknown)})")
    if n_trials < 1 or d < 1:
        raise ValueError(f"n_trials and d must be >= 1 (got n_trials={n_trials}, d={d})")
    if not 0.0 <= rel_floor < 0.5:
        raise ValueError(f"rel_floor must be in [0, 0.5) (got {rel_floor})")
    if protocol == "async_ps":
        if max_time is not None:
            raise ValueError("max_time does not apply to async_ps (its length is rounds, pushes per worker)")
        return measure_ps(comm, n_trials, d=d, seed=seed, rel_floor=rel_floor, **params)
    if protocol == "sdpipe":
        if max_time is not None:
            raise ValueError("max_time does not apply to sdpipe (its length is rounds, updates per replica)")
        return measure_sdpipe(comm, n_trials, d=d, seed=seed, rel_floor=rel_floor, **params)
    n, rank = comm.Get_size(), comm.Get_rank()
    limit = 10_000 * n if max_time is None else int(max_time)
    driver = PROTOCOLS[protocol](comm, d, seed, **params)
    x, ref, tmp = np.empty(d), np.empty(d), np.empty(d)
    parts = np.empty(n)
    tm, tm0, worst, cens = (np.empty(n_trials) for _ in range(4))
    curves = []
    for trial in range(n_trials):
        x[...] = np.random.default_rng([seed, trial, rank]).standard_normal(d)
        comm.Allreduce(x, ref, op=MPI.SUM)
        ref /= n  # M_inf X_0: the average, for every protocol here
        times, dists = [0], [_distance(comm, x, ref, tmp, parts)]
        stop = rel_floor * dists[0] / 2
        events = driver.events(x, trial)
        for t in events:
            times.append(t)
            dists.append(_distance(comm, x, ref, tmp, parts))
            if dists[-1] <= stop or t >= limit:
                break
        events.close()  # not in a finally: closing async gossip is collective
        curve = (np.asarray(times, dtype=np.int64), np.asarray(dists, dtype=np.float64))
        mix = t_mix_of_curve(*curve, rel_floor=rel_floor)
        tm[trial], tm0[trial], worst[trial], cens[trial] = (
            mix.t_mix,
            mix.t_mix0,
            mix.worst_start,
            mix.censored,
        )
        curves.append(curve)
    return MixingResult(
        protocol=protocol,
        n=n,
        dim=d,
        seed=seed,
        rel_floor=rel_floor,
        params=dict(driver.params),
        resolution=driver.resolution,
        estimate=driver.estimate,
        rho=driver.rho,
        t_mix_trials=tm,
        t_mix0_trials=tm0,
        worst_starts=worst,
        censored=cens.astype(np.int64),
        curves=curves,
    )
