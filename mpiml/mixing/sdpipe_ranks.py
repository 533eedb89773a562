"""SDPIPE's group protocol measured on real ranks: P replicas of one stage (K = 1) and a
scheduler rank, driving only the groups on random states (docs/mixing.md, "SDPIPE";
the model is :mod:`mpiml.mixing.sdpipe_model`).

Ranks: replicas 0..P-1, the scheduler P (the last rank; P = size - 1 >= 2). The
scheduler runs :class:`~mpiml.protocols.sdpipe.GroupScheduler` (the training job's own
service loop, default ``updates_of``: one update per batch) until every replica has
made ``rounds`` updates. Replica p of trial k holds x_p ~ N(0, 1)^d from
``default_rng([seed, k, p])`` and makes ``rounds`` updates: for batch i it "computes"
(sleeps ``period`` seconds, ``slow`` times longer on replica 0, times a factor drawn
from U(1 - jitter, 1 + jitter) by ``default_rng([seed, k, p, 1])``), then
:meth:`~mpiml.protocols.sdpipe.GroupClient.ready` (batch i, step i),
:meth:`~mpiml.protocols.sdpipe.GroupClient.group`, and
:class:`~mpiml.protocols.sdpipe.GroupAverage` of x_p over the members (point to point
on a communicator of the replicas). The update itself is zero (no computation).

A trial is the first ``rounds`` batches of a longer run: the scheduler is told the run
has ``rounds + 1`` batches, so no sync round ends the trial (a sync round would make
every start halve by the end, whatever the groups were); ``sync_every`` places sync
rounds inside it when given. Bound rounds follow every ``ssp_bound`` batches.

After the trial every rank gathers the scheduler's group log (``sdpipe_members``: the
members of each group in ``seq`` order) and each replica's state after each of its
averages (measurement traffic, after the protocol's), replays the groups from X_0
(:func:`~mpiml.mixing.sdpipe_model.replay`) and checks the replay against every state
a replica held, bit for bit (RuntimeError otherwise: the curve is the replicas'). So
every rank computes the same result:

- ``t_mix`` of a trial: Assumption 2 on its schedule for the worst state
  (:func:`~mpiml.mixing.sdpipe_model.t_mix_of_groups`) over the groups closed while
  every replica runs (:func:`~mpiml.mixing.sdpipe_model.live_groups`: once one replica
  has made its last update the others average without it, the end of the run); the
  starts that do not halve before that are left out; inf, and ``censored`` 1, when the
  start t = 0 never halves;
- the curve: ||X_t - J X_0||_F of the trial's random state after every group (all of
  them), and ``t_mix0`` its halving time from t = 0 (within the same groups).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from .sdpipe_model import consensus_curve, group_times, live_groups, replay, t_mix_of_groups
from .tmix import t_mix_of_curve

__all__ = ["SDPIPE_PARAMS", "measure_sdpipe", "sdpipe_defaults"]

SDPIPE_PARAMS = ("wait_ms", "wait_max_ms", "ssp_bound", "sync_every", "slow", "rounds", "period", "jitter")


def sdpipe_defaults(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with their defaults filled in and checked (ValueError naming the
    parameter): the training job's wait_ms 1.0, wait_max_ms 10.0, ssp_bound 10 and no
    sync round inside a trial (sync_every None); slow 1, rounds 40, period 0.01 s,
    jitter 0."""
    p = {
        "wait_ms": 1.0,
        "wait_max_ms": 10.0,
        "ssp_bound": 10,
        "sync_every": None,
        "slow": 1,
        "rounds": 40,
        "period": 0.01,
        "jitter": 0.0,
        **params,
    }
    for k in ("wait_ms", "wait_max_ms"):
        if not float(p[k]) > 0:
            raise ValueError(f"{k} must be > 0 ms (got {k}={p[k]})")
        p[k] = float(p[k])
    if p["wait_max_ms"] < p["wait_ms"]:
        raise ValueError(f"wait_max_ms must be >= wait_ms (got {p['wait_max_ms']} < {p['wait_ms']})")
    for k in ("ssp_bound", "slow", "rounds") + (("sync_every",) if p["sync_every"] is not None else ()):
        if int(p[k]) != p[k] or p[k] < 1:
            raise ValueError(f"{k} must be an integer >= 1 (got {k}={p[k]})")
        p[k] = int(p[k])
    if not 0.0 <= float(p["period"]) <= 1.0:
        raise ValueError(f"period must be in [0, 1] seconds (got period={p['period']})")
    if not 0.0 <= float(p["jitter"]) < 1.0:
        raise ValueError(f"jitter must be in [0, 1) (got jitter={p['jitter']})")
    p["period"], p["jitter"] = float(p["period"]), float(p["jitter"])
    return p


def _schedule(comm: MPI.Comm, P: int, p: dict[str, Any]) -> list[tuple[int, tuple[int, ...]]]:
    """The scheduler's side of one trial: serve until every replica made ``rounds``
    updates; returns the groups (kind, members) in ``seq`` order."""
    from ..protocols.sdpipe import GroupScheduler
    from ..trace import Trace

    rounds = p["rounds"]
    trace = Trace(enabled=False)  # the group tables are kept anyway (always=True)
    sync_every = p["sync_every"] if p["sync_every"] is not None else rounds + 1
    sched = GroupScheduler(comm, [list(range(P))], p["ssp_bound"], sync_every, rounds + 1, trace=trace)
    try:
        sched.serve(lambda: sched.done_through(rounds - 1))
    finally:
        sched.close()
    tables = trace.take_tables()
    groups, members = tables["sdpipe_groups"], tables["sdpipe_members"]
    out = []
    for seq, kind in zip(groups["seq"].tolist(), groups["kind"].tolist(), strict=True):
        ms = members["replica"][members["seq"] == seq]
        out.append((int(kind), tuple(sorted(int(m) for m in ms))))
    if [int(s) for s in groups["seq"]] != list(range(len(out))):
        raise RuntimeError(f"mixing: the scheduler's groups are not numbered 0.. in order: {groups['seq']}")
    return out


def _replicate(
    ctl: MPI.Comm, replicas: MPI.Comm, P: int, x: np.ndarray, trial: int, seed: int, p: dict[str, Any]
) -> tuple[np.ndarray, list[int]]:
    """Replica ``replicas.rank``'s side of one trial; returns its state after each of its
    ``rounds`` averages (rounds x d) and the ``seq`` of each of its groups."""
    from ..protocols.sdpipe import GroupAverage, GroupClient

    me = replicas.Get_rank()
    client = GroupClient(ctl, P, P, 0, me, p["wait_ms"], p["wait_max_ms"])
    avg = GroupAverage(replicas, x.size, np.float64)
    rng = np.random.default_rng([seed, trial, me, 1])
    base = p["period"] * (p["slow"] if me == 0 else 1)
    states = np.empty((p["rounds"], x.size))
    seqs = []
    for i in range(p["rounds"]):
        pause = base * (1.0 + p["jitter"] * rng.uniform(-1.0, 1.0))  # the "compute" of batch i
        if pause > 0:
            time.sleep(pause)
        client.ready(batch=i, step=i)
        reply = client.group()
        avg.run(x, reply.members, step=i)
        states[i] = x
        seqs.append(reply.seq)
    return states, seqs


def measure_sdpipe(
    comm: MPI.Comm, n_trials: int, d: int = 8, seed: int = 0, rel_floor: float = 1e-6, **params: Any
) -> Any:
    """Measure SDPIPE's group protocol's t_mix on ``comm`` (P = size - 1 replicas, then
    the scheduler); collective. Returns a :class:`~mpiml.mixing.measure.MixingResult`
    with n = P, identical on every rank; ``groups[k]`` holds trial k's schedule (one
    (kind, members) pair per group, in the scheduler's order). ValueError for a bad
    parameter or fewer than 3 ranks; RuntimeError when the replay of the scheduler's
    groups differs from a state a replica held.
    """
    from .measure import MixingResult

    p = sdpipe_defaults(params)
    size, rank = comm.Get_size(), comm.Get_rank()
    P = size - 1
    if P < 2:
        raise ValueError(f"sdpipe needs at least 3 ranks: 2 replicas and the scheduler (got {size})")
    ctl = comm.Dup()  # ready signals and replies
    replicas = comm.Split(0 if rank < P else MPI.UNDEFINED, rank)  # the averages
    tm, tm0, worst, cens = (np.empty(n_trials) for _ in range(4))
    curves, schedules = [], []
    try:
        for trial in range(n_trials):
            x0 = np.stack([np.random.default_rng([seed, trial, r]).standard_normal(d) for r in range(P)])
            comm.Barrier()  # a level start
            mine: dict[str, Any]
            if rank == P:
                mine = {"groups": _schedule(ctl, P, p)}
            else:
                states, seqs = _replicate(ctl, replicas, P, x0[rank].copy(), trial, seed, p)
                mine = {"states": states, "seqs": seqs}
            everyone = comm.allgather(mine)  # measurement traffic, after the trial's protocol
            sched = everyone[P]["groups"]
            groups = [ms for _, ms in sched]
            xs = replay(x0, groups)
            count = [0] * P
            for j, ms in enumerate(groups):
                for m in ms:
                    c = count[m]
                    got = everyone[m]
                    if got["seqs"][c] != j or not np.array_equal(got["states"][c], xs[j][m]):
                        raise RuntimeError(
                            f"mixing: replica {m}'s state after its group {c} differs from the replay of "
                            f"the scheduler's group {j} {ms}"
                        )
                    count[m] = c + 1
            if count != [p["rounds"]] * P:
                raise RuntimeError(f"mixing: the groups hold {count} updates per replica, not {p['rounds']}")
            live = live_groups(P, groups)  # the end of the run is not the protocol's
            mix = t_mix_of_groups(P, groups[:live])
            curve = (group_times(groups), consensus_curve(x0, xs))
            tm[trial], worst[trial], cens[trial] = mix.t_mix, mix.worst_start, float(np.isinf(mix.t_mix))
            tm0[trial] = t_mix_of_curve(
                curve[0][: live + 1], curve[1][: live + 1], rel_floor=rel_floor
            ).t_mix0
            curves.append(curve)
            schedules.append(sched)
    finally:
        ctl.Free()
        if replicas != MPI.COMM_NULL:
            replicas.Free()
    return MixingResult(
        protocol="sdpipe",
        n=P,
        dim=d,
        seed=seed,
        rel_floor=rel_floor,
        params=p,
        resolution=1,
        estimate=float(P),
        rho=None,
        t_mix_trials=tm,
        t_mix0_trials=tm0,
        worst_starts=worst,
        censored=cens.astype(np.int64),
        curves=curves,
        groups=schedules,
    )
