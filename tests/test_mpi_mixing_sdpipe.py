"""SDPIPE's group protocol's t_mix measured on real ranks (mpiml.mixing.sdpipe_ranks: the
training job's GroupScheduler, GroupClient and GroupAverage; the last rank schedules,
P = size - 1 replicas): groups of all replicas make it AllReduce (t_mix = P exactly);
with a straggler and jitter the result is the same on every rank, holds every update,
and is Assumption 2 on the recorded groups (recomputed here from the window products).
Slowness is sleeps; the assertions are on counts of updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpiml.mixing import measure
from mpiml.mixing.sdpipe_model import group_matrix, group_times, live_groups
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=3)
RANK_COUNTS = (4,)  # 3 replicas + the scheduler


def _same_everywhere(comm, res) -> None:  # type: ignore[no-untyped-def]
    mine = (res.t_mix_trials.tolist(), [c[1].tolist() for c in res.curves], res.groups)
    assert_all(comm, all(v == mine for v in comm.allgather(mine)), "ranks disagree on the result")


def test_groups_of_every_replica_are_allreduce(comm) -> None:  # type: ignore[no-untyped-def]
    """A wait long enough that no deadline passes (5 s, x 0.9 per full group: > 2 s after
    8 batches) and no bound round (ssp_bound > rounds): every group holds all P replicas,
    one per batch, so t_mix = P as for AllReduce, from t = 0 and from the worst start."""
    P = comm.Get_size() - 1
    res = measure(
        comm, "sdpipe", 3, d=4, seed=5, wait_ms=5000, wait_max_ms=5000, ssp_bound=100, rounds=8, period=0.0
    )
    full = all(ms == tuple(range(P)) for trial in res.groups for _, ms in trial)
    assert_all(comm, full and all(len(t) == 8 for t in res.groups), f"groups {res.groups[0]}")
    ok = (res.t_mix_trials == P).all() and (res.t_mix0_trials == P).all() and res.n == P
    assert_all(comm, bool(ok), f"t_mix {res.t_mix_trials}, from t = 0 {res.t_mix0_trials} != P = {P}")
    t, d = res.curves[0]
    assert_all(comm, t.tolist() == [P * k for k in range(9)] and d[1] <= 1e-12 * d[0], f"{t} {d}")
    _same_everywhere(comm, res)


def test_a_straggler_s_groups_hold_every_update_and_give_the_measured_t_mix(comm) -> None:  # type: ignore[no-untyped-def]
    P = comm.Get_size() - 1
    rounds, bound = 12, 4
    res = measure(
        comm, "sdpipe", 2, d=3, seed=7, slow=2, jitter=0.5, period=0.005, rounds=rounds, ssp_bound=bound
    )
    ok = True
    why = ""
    for trial, sched in enumerate(res.groups):
        groups = [ms for _, ms in sched]
        counts = np.bincount([m for ms in groups for m in ms], minlength=P)
        ok &= counts.tolist() == [rounds] * P  # one update per replica and batch
        # at most one bound round per ssp_bound batches (one met at its first arrival, its period
        # already connected, forms no group)
        ok &= sum(k == 1 for k, _ in sched) <= rounds // bound
        # Assumption 2 on the recorded groups, recomputed: the longest window to halve every state
        live = groups[: live_groups(P, groups)]
        t = group_times(live)
        J = np.full((P, P), 1.0 / P)
        h = []
        for k in range(len(live)):
            A = np.eye(P)
            for j in range(k, len(live)):
                A = group_matrix(P, live[j]) @ A
                if np.linalg.norm(A - J, 2) <= 0.5 * (1 + 1e-9):
                    h.append(float(t[j + 1] - t[k]))
                    break
        ok &= bool(h) and max(h) == res.t_mix_trials[trial] and P <= max(h) < math.inf
        times, _ = res.curves[trial]
        ok &= int(times[-1]) == P * rounds
        if not ok and not why:
            why = f"trial {trial}: t_mix {res.t_mix_trials[trial]}, recomputed {h}, groups {sched}"
    assert_all(comm, bool(ok), why)
    _same_everywhere(comm, res)
