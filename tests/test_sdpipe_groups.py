"""SDPIPE's group rule (mpiml.pipeline.groups, groundwork for issue #14), pure."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.pipeline.groups import WAIT_FLOOR_MS, StageGroups, UnionFind, next_wait


def _w(P: int, members: tuple[int, ...]) -> np.ndarray:
    """W_k of one group: 1/|S| on the group's block, the identity elsewhere."""
    w = np.eye(P)
    for i in members:
        w[i, :] = 0.0
        w[i, list(members)] = 1.0 / len(members)
    return w


def test_adaptive_wait_doubles_alone_and_shrinks_in_company() -> None:
    assert next_wait(1.0, 1) == 2.0 and next_wait(8.0, 0) == 10.0 and next_wait(10.0, 1, 10.0) == 10.0
    assert next_wait(1.0, 2) == pytest.approx(0.9)
    assert next_wait(WAIT_FLOOR_MS, 3) == WAIT_FLOOR_MS
    with pytest.raises(ValueError, match="> 0 ms"):
        next_wait(0.0, 2)


def test_union_find() -> None:
    uf = UnionFind(4)
    uf.union(0, 1)
    uf.union(2, 3)
    assert not uf.connected() and uf.find(1) == uf.find(0)
    uf.union(1, 3)
    assert uf.connected()


def test_a_group_closes_when_all_are_ready_or_at_its_deadline() -> None:
    g = StageGroups(3)
    assert g.ready(1, 0.0, 2.0) == [] and g.next_deadline() == pytest.approx(0.002)
    assert g.ready(0, 0.001, 5.0) == []  # the deadline is the opener's
    assert g.due(0.0015) == []
    (closed,) = g.due(0.002)
    assert closed.members == (0, 1) and closed.why == "deadline" and not g.open
    g.ready(2, 0.01, 1.0)
    g.ready(0, 0.0105, 1.0)
    (closed,) = g.ready(1, 0.0106, 1.0)
    assert closed.members == (0, 1, 2) and closed.why == "all"


def test_an_arrival_after_the_deadline_closes_the_old_group_first() -> None:
    g = StageGroups(3)
    g.ready(0, 0.0, 1.0)
    out = g.ready(1, 0.5, 1.0)
    assert [x.members for x in out] == [(0,)] and g.members == [1]
    with pytest.raises(ValueError, match="already waiting"):
        g.ready(1, 0.5001, 1.0)


def test_every_w_is_symmetric_and_doubly_stochastic_and_bound_rounds_connect() -> None:
    """Random arrivals: each closed group's W_k is symmetric and doubly stochastic, and the
    groups of each period ending in a bound round connect all P replicas."""
    P, bound = 5, 2
    rng = np.random.default_rng(3)
    g = StageGroups(P, ssp_bound=bound)
    t, waits = 0.0, [1.0] * P
    periods: list[list[tuple[int, ...]]] = [[]]
    rounds = 0
    for _ in range(400):
        t += float(rng.exponential(0.0008))
        r = int(rng.integers(P))
        if r in g.members:
            continue
        for grp in g.due(t) + g.ready(r, t, waits[r]):
            w = _w(P, grp.members)
            assert np.array_equal(w, w.T) and np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
            for m in grp.members:
                waits[m] = next_wait(waits[m], len(grp.members))
            periods[-1].append(grp.members)
            if grp.deadline is None:
                uf = UnionFind(P)
                for members in periods[-1]:
                    for m in members[1:]:
                        uf.union(members[0], m)
                assert uf.connected(), periods[-1]
                rounds += 1
                periods.append([])
    assert rounds >= 3  # bound rounds happened: the check above ran


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ssp_bound"):
        StageGroups(3, ssp_bound=0)
    with pytest.raises(ValueError, match="replica must be in 0..2"):
        StageGroups(3).ready(3, 0.0, 1.0)
    with pytest.raises(ValueError, match="wait_ms"):
        StageGroups(3).ready(0, 0.0, 0.0)


def test_a_bound_round_waits_without_deadline_until_the_period_connects_all() -> None:
    """P = 4, ssp_bound = 1: {0,1} and {2,3} (4 updates = ssp_bound * P) leave two
    components; the next group has no deadline, stays open however long 1 waits, and
    closes when 2 joins it (the period now connects all), before 0 and 3 are ready."""
    g = StageGroups(4, ssp_bound=1)
    for pair, t in (((0, 1), 0.0), ((2, 3), 1.0)):
        g.ready(pair[0], t, 1.0)
        g.ready(pair[1], t + 0.0001, 1.0)
        (closed,) = g.due(t + 0.01)
        assert closed.members == pair
    assert g.ready(1, 2.0, 1.0) == [] and g.next_deadline() is None
    assert g.due(1e9) == []
    (closed,) = g.ready(2, 1e9, 1.0)
    assert closed.members == (1, 2) and closed.why == "connected" and closed.deadline is None
    g.ready(0, 1e9 + 1, 1.0)  # a new period: deadlines again
    assert g.next_deadline() == pytest.approx(1e9 + 1 + 0.001)
