"""SDPIPE's groups on P pipelines x K stages of DSP, simulated (mpiml.pipeline.sdpipe_sim):
rounds aligned by batch id always complete; the artifact's count rule can deadlock."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.pipeline.groups import BOUND, REGULAR, SYNC, Group, UnionFind, doubly_stochastic
from mpiml.pipeline.sdpipe_sim import CountGroups, Deadlock, mixing, simulate_sdpipe

STEPS = 20


def _dsp(K: int) -> tuple[list[int], list[int]]:
    """DSP's default configuration: p_k = 1, .., 1, 0 and m_k = 2 (K - 1 - k)."""
    return [1] * (K - 1) + [0], [2 * (K - 1 - k) for k in range(K)]


def _check_stage(groups: list[Group], P: int, steps: int, rule: str) -> None:
    """Every W symmetric and doubly stochastic, every period (the groups closed since the
    last round, with the round) connects all P, every replica made ``steps`` updates."""
    for w in mixing(groups, P):
        assert doubly_stochastic(w)
    uf = UnionFind(P)
    updates = np.zeros(P, dtype=int)
    for g in groups:
        finished = bool((updates == steps).any())  # the count rule lets a round skip a finished replica
        updates[list(g.members)] += 1
        for r in g.members[1:]:
            uf.union(g.members[0], r)
        if g.kind != REGULAR and not (rule == "count" and finished):
            assert uf.connected(), f"the period ending in {g} does not connect all {P} replicas"
            uf = UnionFind(P)
    assert updates.tolist() == [steps] * P
    if rule == "batch":
        assert groups[-1].kind == SYNC and groups[-1].batch == steps - 1 and len(groups[-1].members) == P


# (P, K, ssp_bound, sync_every, seed): every shape with two sets of paces, one the count rule deadlocks at
SHAPES = [
    (P, K, bound, sync, seed)
    for P in (2, 3, 4)
    for K in (1, 2, 3, 4)
    for bound, sync, seed in ((1, 4, P + K), (2, 8, 29), (3, 6, 7))
]


@pytest.mark.parametrize("P,K,bound,sync,seed", SHAPES)
def test_rounds_aligned_by_batch_always_complete(P: int, K: int, bound: int, sync: int, seed: int) -> None:
    """Random op times, one slow pipeline, the artifact's heterogeneity knob, short and long
    waits, bounded (DSP's queues) and unbounded channels: every run completes, the groups
    mix as Assumption 2 asks and the rounds keep each period connected."""
    p, m = _dsp(K)
    for bounded, hetero, wait, wait_max in ((True, 10.0, 0.05, 0.1), (False, 0.0, 1.0, 10.0)):
        run = simulate_sdpipe(
            P, p, m, STEPS, rule="batch", ssp_bound=bound, sync_every=sync, seed=seed, slow=seed % P,
            slow_factor=1.5, wait_ms=wait, wait_max_ms=wait_max, hetero=hetero, bounded=bounded,
        )  # fmt: skip
        assert len(run.groups) == K and run.end > 0
        for groups in run.groups:
            _check_stage(groups, P, STEPS, "batch")
            rounds = [g for g in groups if g.kind != REGULAR]
            # rounds of ssp_bound-th and sync_every-th batches and of the last, in order (a bound
            # round whose period already connects is met at once: no group); every sync round
            ends = [b for b in range(STEPS) if (b + 1) % bound == 0 or (b + 1) % sync == 0 or b == STEPS - 1]
            got = [g.batch for g in rounds]
            assert got == sorted(set(got)) and set(got) <= set(ends)
            assert {b for b in ends if (b + 1) % sync == 0 or b == STEPS - 1} <= set(got)
            for g in rounds:
                assert g.kind == (SYNC if (g.batch + 1) % sync == 0 or g.batch == STEPS - 1 else BOUND)


@pytest.mark.parametrize("P,K", [(2, 3), (3, 2), (4, 4)])
def test_paper_configurations_complete(P: int, K: int) -> None:
    from mpiml.pipeline import PAPER_CONFIGS

    for p, m in PAPER_CONFIGS:
        run = simulate_sdpipe(P, p, m, STEPS, ssp_bound=2, sync_every=5, seed=K, slow=0, hetero=10.0,
                              wait_ms=0.05, wait_max_ms=0.1)  # fmt: skip
        for groups in run.groups:
            _check_stage(groups, P, STEPS, "batch")


# A shape and pace at which the count rule deadlocks (found by a search over seeds)
CYCLE = dict(ssp_bound=2, seed=29, slow=0, slow_factor=1.5, wait_ms=0.05, wait_max_ms=0.1, hetero=10.0)


@pytest.mark.parametrize("bounded", [True, False])
def test_the_count_rule_deadlocks_through_the_pipelines(bounded: bool) -> None:
    """P = 3, K = 2: stage 0's count round (replicas 0 and 2) waits for replica 1, whose
    stage 0 waits for the gradient of its stage 1, which waits in stage 1's count round
    (replicas 1 and 2) for replica 0, whose stage 1 waits for the activations of its
    stage 0, which is in stage 0's round. The same paces complete with rounds by batch."""
    p, m = _dsp(2)
    with pytest.raises(Deadlock) as err:
        simulate_sdpipe(3, p, m, 30, rule="count", bounded=bounded, **CYCLE)  # type: ignore[arg-type]
    w = err.value.waits
    assert w[0, 0].startswith("in the group of stage 0") and "(round: [0, 2])" in w[0, 0]
    assert w[1, 0].startswith("for grad(") and "from stage 1" in w[1, 0]
    assert w[1, 1].startswith("in the group of stage 1") and "(round: [1, 2])" in w[1, 1]
    assert w[0, 1].startswith("for act(") and "from stage 0" in w[0, 1]
    assert "pipeline 1 stage 0 waits for grad(" in str(err.value)
    run = simulate_sdpipe(3, p, m, 30, rule="batch", bounded=bounded, **CYCLE)  # type: ignore[arg-type]
    for groups in run.groups:
        _check_stage(groups, 3, 30, "batch")


def test_the_count_rule_alone_completes_on_one_stage() -> None:
    """K = 1 has no cycle through pipelines: the count rule completes, and its rounds, opened
    after ssp_bound * P updates whatever the batch, keep each period connected."""
    for seed in range(6):
        run = simulate_sdpipe(3, [0], [0], 30, rule="count", **{**CYCLE, "seed": seed})  # type: ignore[arg-type]
        _check_stage(run.groups[0], 3, 30, "count")
        assert any(g.kind == BOUND for g in run.groups[0])


def test_count_groups_open_a_round_after_ssp_bound_times_p_updates() -> None:
    g = CountGroups(3, ssp_bound=1)
    g.ready(0, 0.0, 1.0, batch=0)
    g.ready(1, 0.0001, 1.0, batch=0)
    (closed,) = g.due(0.01)  # {0, 1}: 2 updates
    assert closed.members == (0, 1) and closed.kind == REGULAR
    g.ready(2, 0.02, 1.0, batch=0)
    (closed,) = g.due(0.03)  # {2}: 3 updates = ssp_bound * P
    assert closed.members == (2,)
    assert g.ready(0, 0.04, 1.0, batch=1) == [] and g.next_deadline() is None  # a round, batch 1
    assert g.due(1e9) == []
    (closed,) = g.ready(2, 1e9, 1.0, batch=5)  # any batch joins it; {0, 1} + {0, 2} connect
    assert (
        closed.members == (0, 2) and closed.kind == BOUND and closed.why == "connected" and closed.batch == 1
    )
    g.ready(1, 2e9, 1.0, batch=1)
    assert g.next_deadline() == pytest.approx(2e9 + 0.001)  # a new period: deadlines again
    g.due(3e9)
    g.finish(0, 3e9)  # a finished replica counts as joined
    g.ready(1, 3e9, 1.0)
    g.due(4e9)
    g.ready(2, 4e9, 1.0)
    (closed,) = g.due(5e9)
    assert g.ready(2, 5e9, 1.0) == [] and g.next_deadline() is None
    (closed,) = g.ready(1, 5e9, 1.0)  # 0 finished, 1 and 2 in the round: connected
    assert closed.members == (1, 2) and closed.kind == BOUND


def test_mixing_and_bad_arguments() -> None:
    (w,) = mixing([Group((0, 2), 0.0, 1.0, None, "all")], 3)
    assert np.array_equal(w, [[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    with pytest.raises(ValueError, match="rule must be 'batch', 'count' or 'join'"):
        simulate_sdpipe(2, [0], [0], 4, rule="fifo")
    with pytest.raises(ValueError, match="p_"):
        simulate_sdpipe(2, [1], [0], 4)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_with_endless_waits_no_group_waits_for_its_deadline(K: int) -> None:
    """Waits of 100 s, far beyond any op: a regular group closes once every replica is ready
    (some may wait in a round, out of its reach), so no group ever closes at its deadline and
    the run takes simulated milliseconds, not hundreds of seconds."""
    p, m = _dsp(K)
    run = simulate_sdpipe(3, p, m, STEPS, ssp_bound=2, sync_every=5, wait_ms=1e5, wait_max_ms=1e5, seed=1)
    for groups in run.groups:
        _check_stage(groups, 3, STEPS, "batch")
        assert [g for g in groups if g.why == "deadline"] == []
    assert run.end < 1.0


def test_one_stage_rounds_take_any_arrival_and_complete() -> None:
    """K = 1 with a 3x slow pipeline: the scheduler's rule lets the slow replica's next
    arrival close a bound round (join_any); periods stay connected and no round waits for
    the slow replica to reach the round's batch (each round's members include a replica
    at another batch at least once)."""
    for seed in range(4):
        run = simulate_sdpipe(
            3,
            [0],
            [0],
            40,
            rule="batch",
            ssp_bound=2,
            seed=seed,
            slow=2,
            slow_factor=3.0,
            wait_ms=0.05,
            wait_max_ms=0.1,
        )
        _check_stage(run.groups[0], 3, 40, "batch")


def test_rounds_taking_any_arrival_deadlock_with_two_stages() -> None:
    """Why join_any is for K = 1 only: with K = 2 (a random search found this pace) a lagging
    replica waiting in stage 0's round holds back its own stage 1, which stage 1's round
    waits for, while a replica that round holds back is what stage 0's round waits for.
    The scheduler's rule (rounds by batch, join_any only at K = 1) completes it."""
    pace = dict(ssp_bound=3, seed=664466, slow=2, slow_factor=5.0, wait_ms=0.01, wait_max_ms=1.0, hetero=10.0)
    p, m = _dsp(2)
    with pytest.raises(Deadlock):
        simulate_sdpipe(3, p, m, 40, rule="join", bounded=False, **pace)  # type: ignore[arg-type]
    run = simulate_sdpipe(3, p, m, 40, rule="batch", bounded=False, **pace)  # type: ignore[arg-type]
    for groups in run.groups:
        _check_stage(groups, 3, 40, "batch")
