"""SDPIPE's group rule (mpiml.pipeline.groups), pure: the regular group with its deadline,
bound and sync rounds aligned by batch id, the checkpoint state, and W_k over random
arrivals (symmetric, doubly stochastic, every period connected)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpiml.pipeline.groups import (
    BOUND,
    REGULAR,
    SYNC,
    WAIT_FLOOR_MS,
    Group,
    StageGroups,
    UnionFind,
    doubly_stochastic,
    group_matrix,
    next_wait,
    round_kind,
)


def _connects(P: int, groups: list[tuple[int, ...]]) -> bool:
    uf = UnionFind(P)
    for ms in groups:
        for m in ms[1:]:
            uf.union(ms[0], m)
    return uf.connected()


def test_adaptive_wait_doubles_alone_and_shrinks_in_company() -> None:
    assert next_wait(1.0, 1) == 2.0 and next_wait(8.0, 0) == 10.0 and next_wait(10.0, 1, 10.0) == 10.0
    assert next_wait(3.0, 1, 5.0) == 5.0
    assert next_wait(1.0, 2) == pytest.approx(0.9) and next_wait(1.0, 7) == pytest.approx(0.9)
    assert next_wait(WAIT_FLOOR_MS, 3) == WAIT_FLOOR_MS and next_wait(0.0105, 2) == WAIT_FLOOR_MS
    with pytest.raises(ValueError, match="> 0 ms"):
        next_wait(0.0, 2)
    with pytest.raises(ValueError, match="wait_max_ms=0"):
        next_wait(1.0, 2, 0)


def test_union_find() -> None:
    uf = UnionFind(4)
    uf.union(0, 1)
    uf.union(2, 3)
    uf.union(1, 0)  # already together: nothing changes
    assert not uf.connected() and uf.find(1) == uf.find(0) and uf.sets == 2
    other = uf.copy()
    other.union(1, 3)
    assert other.connected() and not uf.connected()  # a copy is independent
    uf.union(1, 3)
    assert uf.connected() and UnionFind(1).connected()
    with pytest.raises(ValueError, match="n >= 1"):
        UnionFind(0)


def test_a_group_closes_when_all_are_ready_or_at_its_deadline() -> None:
    g = StageGroups(3)
    assert g.ready(1, 0.0, 2.0) == [] and g.next_deadline() == pytest.approx(0.002)
    assert g.ready(0, 0.001, 5.0) == [] and g.next_deadline() == pytest.approx(0.002)  # the opener's
    assert g.due(0.0015) == [] and g.waiting() == [1, 0]
    (closed,) = g.due(0.002)
    assert closed.members == (0, 1) and closed.why == "deadline" and closed.kind == REGULAR
    assert closed.deadline == pytest.approx(0.002) and not g.open and g.next_deadline() is None
    g.ready(2, 0.01, 1.0)
    g.ready(0, 0.0105, 1.0)
    (closed,) = g.ready(1, 0.0106, 1.0)
    assert closed.members == (0, 1, 2) and closed.why == "all" and closed.closed == 0.0106


def test_an_arrival_after_the_deadline_closes_the_old_group_first() -> None:
    g = StageGroups(3)
    g.ready(0, 0.0, 1.0)
    out = g.ready(1, 0.5, 1.0)
    assert [(x.members, x.why) for x in out] == [((0,), "deadline")] and g.members == [1]
    assert g.next_deadline() == pytest.approx(0.501)  # the new group's, from its own opener
    with pytest.raises(ValueError, match="already waiting"):
        g.ready(1, 0.5001, 1.0)


def test_round_kind() -> None:
    """Sync at every sync_every-th batch and at the last; bound at every ssp_bound-th else."""
    kinds = [round_kind(b, 3, 4, 20) for b in range(20)]
    sync, bound = {3, 7, 11, 15, 19}, {2, 5, 8, 14, 17}  # 11: both, sync wins
    assert kinds == [SYNC if b in sync else BOUND if b in bound else REGULAR for b in range(20)]
    assert round_kind(4, 10, 100, 5) == SYNC  # the run's last batch
    assert [round_kind(b, 1, 3, 6) for b in range(6)] == [BOUND, BOUND, SYNC, BOUND, BOUND, SYNC]


def _bound_round_opened(g: StageGroups) -> None:
    """P = 3, ssp_bound = 3 (the bound round is batch 2's): batch 0 {0, 1}, batch 1 {0};
    0 opens the round of batch 2, which has no deadline."""
    g.ready(0, 0.0, 1.0, 0, REGULAR)
    g.ready(1, 0.0001, 1.0, 0, REGULAR)
    assert [x.members for x in g.due(0.01)] == [(0, 1)]
    g.ready(0, 0.02, 1.0, 1, REGULAR)
    assert [x.members for x in g.due(0.03)] == [(0,)]
    assert g.ready(0, 0.04, 1.0, 2, BOUND) == [] and g.round == [0]
    assert g.next_deadline() is None and g.due(1e9) == []  # it waits, however long


@pytest.mark.parametrize("via", ["due", "ready"])
def test_a_bound_round_closes_when_a_regular_group_connects_the_period(via: str) -> None:
    """P = 4, ssp_bound = 3: batch 0 {0, 1} and {2, 3}, batch 1 {0}; 0 waits in batch 2's
    round while 1 and 2 (batch 1) form a regular group (3 is busy); when it closes at its
    deadline ({0,1} + {2,3} + {1,2} connect all), the round closes too, returned by
    ``due`` or by the next ``ready`` (which first closes the expired group)."""
    g = StageGroups(4, ssp_bound=3)
    for pair in ((0, 1), (2, 3)):
        g.ready(pair[0], 0.0, 1.0, 0, REGULAR)
        g.ready(pair[1], 0.0001, 1.0, 0, REGULAR)
        assert [x.members for x in g.due(0.01)] == [pair]
    g.ready(0, 0.02, 1.0, 1, REGULAR)
    g.due(0.03)
    assert g.ready(0, 0.04, 1.0, 2, BOUND) == [] and g.round == [0] and g.next_deadline() is None
    g.ready(1, 0.05, 1.0, 1, REGULAR)
    g.ready(2, 0.0501, 1.0, 1, REGULAR)
    assert g.round == [0] and g.members == [1, 2] and g.due(0.0505) == []
    out = g.due(0.052) if via == "due" else g.ready(3, 0.06, 1.0, 1, REGULAR)
    assert [(x.members, x.why, x.kind, x.batch) for x in out] == [
        ((1, 2), "deadline", REGULAR, -1),
        ((0,), "connected", BOUND, 2),
    ]
    assert out[1].deadline is None and out[1].opened == 0.04 and not g.round


@pytest.mark.parametrize("last", ["regular", "round"])
def test_a_regular_group_closes_when_the_others_wait_in_the_round(last: str) -> None:
    """P = 3, 0 waits in batch 1's sync round. Once every replica is ready (in the regular
    group or in the round) nobody can join the regular group: it closes then, not at its
    deadline, whether the last one to be ready joins it or the round."""
    g = StageGroups(3, ssp_bound=100)
    assert g.ready(0, 0.0, 1.0, 1, SYNC) == []
    g.ready(1, 0.01, 1.0, 0, REGULAR)
    if last == "regular":
        (closed,) = g.ready(2, 0.0101, 1.0, 0, REGULAR)
        assert closed.members == (1, 2) and g.round == [0]
    else:
        (closed,) = g.ready(2, 0.0101, 1.0, 1, SYNC)
        assert closed.members == (1,) and g.round == [0, 2]
    assert closed.why == "all" and closed.kind == REGULAR and closed.closed == 0.0101
    assert g.next_deadline() is None


def test_a_bound_round_closes_when_its_members_connect_the_period_and_later_arrivals_are_regular() -> None:
    g = StageGroups(3, ssp_bound=3)
    _bound_round_opened(g)
    g.ready(2, 1.0, 1.0, 0, REGULAR)
    assert [x.members for x in g.due(1.1)] == [(2,)]  # {0,1}, {0}, {2}: not connected yet
    g.ready(2, 1.2, 1.0, 1, REGULAR)
    g.due(1.3)
    (closed,) = g.ready(2, 1.4, 1.0, 2, BOUND)  # 2 joins: {0,1} + {0,2} connect all
    assert (closed.members, closed.why, closed.kind, closed.batch) == ((0, 2), "connected", BOUND, 2)
    assert g.ready(1, 1.5, 1.0, 2, BOUND) == []  # batch 2's round is done: 1 joins a regular group
    assert g.members == [1] and not g.round and g.next_deadline() == pytest.approx(1.501)
    # the next period: a round whose period already connects all is met at its first
    # arrival, which joins a regular group; the period starts again there
    g.ready(0, 1.5002, 1.0, 3, REGULAR)
    (closed,) = g.ready(2, 1.5003, 1.0, 3, REGULAR)
    assert closed.members == (0, 1, 2) and closed.why == "all"
    assert g.ready(1, 1.6, 1.0, 5, BOUND) == [] and g.members == [1] and not g.round and g.met == 1
    g.ready(0, 1.6001, 1.0, 5, BOUND)  # batch 5's round is met: regular
    (closed,) = g.ready(2, 1.6002, 1.0, 4, REGULAR)
    assert closed.members == (0, 1, 2) and g.state()[:4] == [5, 3, 1, 1]  # round_done, updates, met, sets


def test_a_sync_round_waits_for_all_and_takes_only_its_batch() -> None:
    """P = 3, sync every 2 batches: 0 opens batch 1's sync round; 1 and 2, behind, average
    among themselves in regular groups meanwhile (a connected period does not close a sync
    round); the round closes when the last replica of batch 1 arrives, and resets the period."""
    g = StageGroups(3, ssp_bound=100)
    kind = [round_kind(b, 100, 2, 10) for b in range(3)]
    assert kind == [REGULAR, SYNC, REGULAR]
    g.ready(0, 0.0, 1.0, 0, REGULAR)
    g.due(0.01)
    assert g.ready(0, 0.02, 1.0, 1, SYNC) == [] and g.round == [0] and g.next_deadline() is None
    g.ready(1, 0.03, 1.0, 0, REGULAR)
    (closed,) = g.ready(2, 0.0305, 1.0, 0, REGULAR) + g.due(0.04)
    assert closed.members == (1, 2) and g.round == [0]  # the lagging pair: a regular group
    assert g.ready(1, 0.05, 1.0, 1, SYNC) == [] and g.round == [0, 1]
    assert g.due(1e9) == []
    (closed,) = g.ready(2, 1e9, 1.0, 1, SYNC)
    assert (closed.members, closed.why, closed.kind, closed.batch) == ((0, 1, 2), "sync", SYNC, 1)
    assert closed.deadline is None and not g.open
    assert g.state()[:4] == [1, 0, 0, 3]  # round_done = 1, no updates, none met, no links since


def test_a_replica_that_skips_a_round_is_an_error() -> None:
    g = StageGroups(3, ssp_bound=1)
    g.ready(0, 0.0, 1.0, 0, BOUND)
    with pytest.raises(ValueError, match="skipped a round"):
        g.ready(1, 0.001, 1.0, 1, BOUND)
    with pytest.raises(ValueError, match="kind must be"):
        g.ready(1, 0.001, 1.0, 0, 7)


def test_state_round_trip_and_no_state_while_replicas_wait() -> None:
    """A checkpoint between groups keeps the period (union-find, updates, the last round):
    a loaded copy forms the same groups from the same arrivals as the original."""
    g = StageGroups(4, ssp_bound=2)
    g.ready(0, 0.0, 1.0, 0, REGULAR)
    with pytest.raises(RuntimeError, match=r"waiting replicas \[0\]"):
        g.state()
    g.ready(1, 0.0001, 1.0, 0, REGULAR)
    g.due(0.01)
    for r in (0, 1, 2, 3):  # batch 1's round: all four
        g.ready(r, 0.02 + r * 1e-4, 1.0, 1, BOUND)
    g.ready(2, 0.03, 1.0, 2, REGULAR)
    g.ready(3, 0.0301, 1.0, 2, REGULAR)
    g.due(0.04)  # {2, 3} in the new period
    state = g.state()
    assert state == [1, 2, 0, 3, 0, 1, 2, 2, 1, 1, 2, 1]  # round_done, updates, met, sets, parent, size
    h = StageGroups(4, ssp_bound=2)
    h.load(state)
    assert h.state() == state
    for st in (g, h):
        assert st.ready(0, 0.05, 1.0, 3, BOUND) == []
    assert g.ready(3, 0.06, 1.0, 3, BOUND) == h.ready(3, 0.06, 1.0, 3, BOUND) == []
    (a,) = g.ready(1, 0.07, 1.0, 3, BOUND)  # {2,3} + {0,1,3} connect all
    (b,) = h.ready(1, 0.07, 1.0, 3, BOUND)
    assert a == b and a.members == (0, 1, 3) and a.why == "connected"
    g.ready(0, 0.1, 1.0, 4, REGULAR)
    with pytest.raises(RuntimeError, match="nothing to checkpoint"):
        g.state()
    with pytest.raises(ValueError, match="has 12 values"):
        h.load(state[:-1])


@pytest.mark.parametrize("P,bound,sync,seed", [(5, 2, 100, 3), (5, 3, 7, 4), (4, 1, 5, 5), (2, 2, 3, 6)])
def test_random_arrivals_mix_doubly_stochastic_and_every_period_connects(
    P: int, bound: int, sync: int, seed: int
) -> None:
    """Replicas at random paces (replica 0 three times slower) each make ``batches`` updates,
    one at a time (ready, then wait for the group): every W_k is symmetric and doubly
    stochastic, the groups of each period with its round connect all P, rounds come once
    per round batch, in order, and every replica updates ``batches`` times."""
    batches = 60
    rng = np.random.default_rng(seed)
    g = StageGroups(P, ssp_bound=bound)
    batch, waits = [0] * P, [1.0] * P
    arrive = [float(rng.exponential(1e-3)) for _ in range(P)]  # NaN while waiting
    period: list[tuple[int, ...]] = []
    rounds: list[Group] = []
    while min(batch) < batches:
        ready = [(a, r) for r, a in enumerate(arrive) if not math.isnan(a) and batch[r] < batches]
        t, r = min(ready, default=(math.inf, -1))
        dl = g.next_deadline()
        if dl is not None and dl <= t:
            t, out = dl, g.due(dl)
        else:
            assert r >= 0, f"stuck: {g.waiting()} wait in a round nobody else can join"
            out = g.ready(r, t, waits[r], batch[r], round_kind(batch[r], bound, sync, batches))
            arrive[r] = math.nan
        for grp in out:
            w = group_matrix(P, grp.members)
            assert doubly_stochastic(w)
            assert len(set(grp.members)) == len(grp.members)
            period.append(grp.members)
            if grp.kind != REGULAR:
                assert _connects(P, period), period
                rounds.append(grp)
                period = []
            for m in grp.members:
                batch[m] += 1
                waits[m] = next_wait(waits[m], len(grp.members))
                arrive[m] = t + float(rng.exponential(1e-3)) * (3.0 if m == 0 else 1.0)
    assert not g.open
    kinds = [round_kind(b, bound, sync, batches) for b in range(batches)]
    # one round per round batch, in order, but for the bound rounds met at once (no group)
    got = [x.batch for x in rounds]
    assert got == sorted(set(got)) and len(got) + g.met == sum(k != REGULAR for k in kinds)
    assert {b for b in range(batches) if kinds[b] == SYNC} <= set(got)
    assert all(kinds[x.batch] == x.kind for x in rounds)
    assert all(len(x.members) == P for x in rounds if x.kind == SYNC)
    assert any(x.kind == BOUND for x in rounds) or bound == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ssp_bound"):
        StageGroups(3, ssp_bound=0)
    with pytest.raises(ValueError, match="P must be"):
        StageGroups(0)
    with pytest.raises(ValueError, match="replica must be in 0..2"):
        StageGroups(3).ready(3, 0.0, 1.0)
    with pytest.raises(ValueError, match="wait_ms"):
        StageGroups(3).ready(0, 0.0, 0.0)


def test_with_join_any_a_lagging_arrival_joins_the_bound_round() -> None:
    """K = 1 (join_any): the round of batch 3 (ssp_bound 4) takes replica 2's arrival for
    batch 1 and closes connected, instead of waiting for replica 2 to reach batch 3; without
    join_any that arrival forms a regular group of its own and the round stays open."""
    from mpiml.pipeline.groups import BOUND, REGULAR

    for join in (True, False):
        g = StageGroups(3, ssp_bound=4, join_any=join)
        g.ready(0, 0.0, 1.0, batch=0, kind=REGULAR)
        g.ready(1, 0.0001, 1.0, batch=0, kind=REGULAR)
        (first,) = g.due(0.01)
        assert first.members == (0, 1)
        assert g.ready(0, 1.0, 1.0, batch=3, kind=BOUND) == []  # 2 is not connected: the round waits
        assert g.ready(1, 1.0001, 1.0, batch=3, kind=BOUND) == []
        out = g.ready(2, 1.0002, 1.0, batch=1, kind=REGULAR)  # replica 2, far behind
        if join:
            (closed,) = out
            assert closed.members == (0, 1, 2) and closed.kind == BOUND and closed.batch == 3
            assert not g.open and g.round_done == 3
        else:  # alone in a regular group (every other replica is in the round): W = I, the round waits on
            assert [x.members for x in out] == [(2,)] and out[0].kind == REGULAR and g.round == [0, 1]


def test_the_scheduler_lets_rounds_take_any_arrival_only_with_one_stage() -> None:
    """GroupScheduler's wiring of join_any: K = 1 (no stage waits on another) yes; K >= 2 no
    (tests/test_sdpipe_sim.py: rounds taking any arrival deadlock through the pipelines).
    The constructor communicates nothing, so COMM_SELF serves."""
    from mpi4py import MPI

    from mpiml.protocols.sdpipe import GroupScheduler

    one = GroupScheduler(MPI.COMM_SELF, [[0, 1, 2]], 10, 100, 100)
    two = GroupScheduler(MPI.COMM_SELF, [[0, 2], [1, 3]], 10, 100, 100)
    assert [s.join_any for s in one.stages] == [True]
    assert [s.join_any for s in two.stages] == [False, False]
