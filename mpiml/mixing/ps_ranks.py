"""AsyncPS's t_mix measured on real ranks: the parameter server's own servers
(:class:`~mpiml.protocols.ps_server.ShardServer`) and workers that push zero updates
(docs/mixing.md, "AsyncPS"; the model is :mod:`mpiml.mixing.ps_model`).

Ranks (:func:`mpiml.layout.parameter_server`): workers 0..W-1, servers W..W+S-1,
server s holding shard s of :func:`~mpiml.protocols.ps_wire.shard_ranges` (d, S).
Trial k: the servers' parameters x_0 are N(0, 1)^d from ``default_rng([seed, k, W])``
(each server takes its shard), worker i's cached copy x_i from ``default_rng([seed,
k, i])``. Worker i makes its pushes through the parameter server's own client
(:class:`~mpiml.protocols.ps.ShardClient`: one PUSH | PULL request per step, a zero
update; the server applies it with ``x += update``, which leaves x exactly as it was)
and its copy of each shard becomes the reply's snapshot. Its steps take
``period`` seconds (``slow`` times longer on worker 0, the straggler): fully
asynchronous, push k is sent at k steps after the trial's start (paced by the clock);
under an SSP bound (the server's ``staleness``), a step's sleep follows the reply.

Time is the servers' own count: a pull answered at shard version V is at time
t = the pushes that shard had applied (its ``ps_apply`` log: V in asynchronous mode,
W V under BSP, where a version is a round of W pushes). The schedule is the servers'
``ps_pull`` log; each worker measures ||x_i^s - x_0^s||^2 between its cached copy
and its first reply (the state's distance at t = 0; x_0 never changes). After the
trial every rank gathers the logs (measurement traffic, after the protocol's), so all
ranks compute the same result:

- ``t_mix``: Assumption 2 on the schedule (:func:`~mpiml.mixing.ps_model.t_mix_of_pulls`,
  any start, the worst state): the longest gap between two pulls of one (worker,
  shard) pair, in pushes applied to that shard;
- the curve from t = 0: ||X_t - M_inf X_t||_F of the trial's random state
  (:func:`~mpiml.mixing.ps_model.consensus_curve`), and ``t_mix0`` its halving time.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from .ps_model import consensus_curve, estimate, t_mix_of_pulls

__all__ = ["PS_PARAMS", "measure_ps", "ps_defaults"]

PS_PARAMS = ("servers", "staleness", "slow", "rounds", "period")


def ps_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with their defaults filled in and checked (ValueError naming the
    parameter): servers 1, staleness None (fully asynchronous), slow 1, rounds 4,
    period 0.05 s."""
    p = {"servers": 1, "staleness": None, "slow": 1, "rounds": 4, "period": 0.05, **params}
    for k in ("servers", "slow", "rounds"):
        if int(p[k]) != p[k] or p[k] < 1:
            raise ValueError(f"{k} must be an integer >= 1 (got {k}={p[k]})")
        p[k] = int(p[k])
    if p["staleness"] is not None:
        if int(p["staleness"]) != p["staleness"] or p["staleness"] < 0:
            raise ValueError(
                f"staleness must be an integer >= 0, or omitted (got staleness={p['staleness']})"
            )
        p["staleness"] = int(p["staleness"])
    if not 0.0 <= float(p["period"]) <= 1.0:
        raise ValueError(f"period must be in [0, 1] seconds (got period={p['period']})")
    p["period"] = float(p["period"])
    return p


def _pushes(i: int, p: dict[str, Any]) -> int:
    """Worker i's pushes: the straggler (worker 0) makes ``rounds``; the others, when
    fully asynchronous, ``rounds * slow`` (all end at about the same time); under SSP
    ``rounds`` too (a worker further ahead would wait forever on a finished one)."""
    if i == 0 or p["staleness"] is not None:
        return int(p["rounds"])
    return int(p["rounds"]) * int(p["slow"])


def _serve(comm: MPI.Comm, workers: int, x: np.ndarray, staleness: int | None) -> dict[str, np.ndarray]:
    from ..protocols.ps_server import ShardServer
    from ..trace import Trace

    def add(shard: np.ndarray, update: np.ndarray, worker: int) -> None:
        shard += update  # a zero update: x is unchanged, bit for bit

    def never(step: int, stop: bool) -> None:
        raise RuntimeError("mixing: no worker quiesces in a mixing measurement")

    trace = Trace(enabled=False)
    ShardServer(comm, range(workers), x, add, staleness=staleness, trace=trace).serve(never)
    return trace.take_tables()


def _work(
    comm: MPI.Comm, i: int, workers: int, ranges: list[tuple[int, int]], x: np.ndarray, p: dict[str, Any]
) -> tuple[list[float], list[list[int]]]:
    """Worker i's pushes through a :class:`~mpiml.protocols.ps.ShardClient`; returns
    ||x_i^s - x_0^s||^2 per shard (its copy against its first reply) and the shard
    versions of its replies."""
    from ..protocols.ps import DONE, PULL, PUSH, ShardClient

    S = len(ranges)
    client = ShardClient(comm, [workers + s for s in range(S)], ranges, x.dtype)
    zero = np.zeros_like(x)  # the update Delta_t = 0
    x_start = x.copy()
    seen: list[list[int]] = [[] for _ in range(S)]
    sq = [0.0] * S
    k_total = _pushes(i, p)
    pause = p["period"] * (p["slow"] if i == 0 else 1)
    paced = p["staleness"] is None
    start = time.perf_counter()
    for k in range(1, k_total + 1):
        # the "compute" of a step (the straggler's slow times longer): asynchronous, push k
        # at start + k pause (paced by the clock, so the per-step overhead does not change
        # the ratio of speeds); under a bound, pause after the reply (a held worker
        # computes once it has the model), as mpiml.mixing.ps_sim models it
        wait = start + k * pause - time.perf_counter() if paced else pause
        if wait > 0:
            time.sleep(wait)
        client.request(PUSH | PULL, k - 1, zero)
        client.wait(x)  # x[lo:hi] := the reply's snapshot of each shard, whole
        for s in range(S):
            seen[s].append(int(client.versions[s]))
        if k == 1:
            sq = [float(np.dot(x_start[lo:hi] - x[lo:hi], x_start[lo:hi] - x[lo:hi])) for lo, hi in ranges]
    client.request(DONE, k_total)
    client.wait(None)
    return sq, seen


def _times(pull_versions: np.ndarray, apply_versions: np.ndarray) -> np.ndarray:
    """Pushes applied to the shard when a snapshot of version V was taken: the
    ``ps_apply`` rows logged at a version < V (one row per push, BSP's W per round)."""
    return np.searchsorted(np.sort(apply_versions), pull_versions, side="left").astype(np.int64)


def measure_ps(
    comm: MPI.Comm, n_trials: int, d: int = 8, seed: int = 0, rel_floor: float = 1e-6, **params: Any
) -> Any:
    """Measure AsyncPS's t_mix on ``comm`` (W workers then S = ``servers`` servers);
    collective. Returns a :class:`~mpiml.mixing.measure.MixingResult` with n = W,
    identical on every rank; ``pulls[k]`` holds trial k's schedule (one int64 array of
    pull times per (worker, shard) pair, worker-major). Raises ValueError on a bad
    parameter or when the ranks cannot hold S servers and a worker (or d < S).
    """
    from ..layout import parameter_server
    from ..protocols.ps_wire import shard_ranges
    from .measure import MixingResult
    from .tmix import t_mix_of_curve

    p = ps_defaults(params)
    size, rank, S = comm.Get_size(), comm.Get_rank(), p["servers"]
    parameter_server(size, servers=S)  # ValueError: too few ranks
    if d < S:
        raise ValueError(f"dim must be >= servers (a shard is never empty; got dim={d}, servers={S})")
    W = size - S
    ranges = shard_ranges(d, S)
    ps_comm = comm.Dup()
    tm, tm0, worst, cens = (np.empty(n_trials) for _ in range(4))
    curves, pulls = [], []
    try:
        for trial in range(n_trials):
            x0 = np.random.default_rng([seed, trial, W]).standard_normal(d)
            mine: dict[str, Any] = {}
            comm.Barrier()  # a level start: every worker begins the trial at t = 0 together
            if rank >= W:
                s = rank - W
                lo, hi = ranges[s]
                tables = _serve(ps_comm, W, x0[lo:hi].copy(), p["staleness"])
                pl, ap = tables.get("ps_pull"), tables.get("ps_apply")
                if pl is None or ap is None:
                    raise RuntimeError(f"mixing: server {s} logged no pull or no push")
                t = _times(pl["version"], ap["version"])
                mine = {
                    "shard": s,
                    "worker": pl["worker"],
                    "step": pl["clock"],
                    "time": t,
                    "version": pl["version"],
                }
            else:
                xi = np.random.default_rng([seed, trial, rank]).standard_normal(d)
                sq, seen = _work(ps_comm, rank, W, ranges, xi, p)
                mine = {"worker": rank, "sq": sq, "seen": seen}
            everyone = comm.allgather(mine)  # measurement traffic, after the trial's protocol
            sq_all = np.array([everyone[i]["sq"] for i in range(W)], dtype=np.float64)  # (W, S)
            sched: list[np.ndarray] = []
            first = np.empty(W * S, dtype=np.int64)
            for i in range(W):
                for s in range(S):
                    log = everyone[W + s]
                    mask = log["worker"] == i
                    if not np.array_equal(log["version"][mask], np.asarray(everyone[i]["seen"][s])):
                        raise RuntimeError(
                            f"mixing: server {s}'s pull log disagrees with worker {i}'s replies"
                        )
                    ti = log["time"][mask][np.argsort(log["step"][mask], kind="stable")]
                    sched.append(ti)
                    first[i * S + s] = ti[0] if ti.size else np.iinfo(np.int64).max
            mix = t_mix_of_pulls(sched)
            curve = consensus_curve(first, sq_all.reshape(-1))
            tm[trial], worst[trial], cens[trial] = mix.t_mix, mix.worst_start, float(np.isinf(mix.t_mix))
            tm0[trial] = t_mix_of_curve(*curve, rel_floor=rel_floor).t_mix0
            curves.append(curve)
            pulls.append(sched)
    finally:
        ps_comm.Free()
    shown = {k: v for k, v in p.items() if k in params or k in ("servers", "staleness", "slow")}
    return MixingResult(
        protocol="async_ps",
        n=W,
        dim=d,
        seed=seed,
        rel_floor=rel_floor,
        params=shown,
        resolution=1,
        estimate=float(estimate(W, p["slow"], p["staleness"])),
        rho=None,
        t_mix_trials=tm,
        t_mix0_trials=tm0,
        worst_starts=worst,
        censored=cens.astype(np.int64),
        curves=curves,
        pulls=pulls,
    )
