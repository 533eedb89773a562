"""DSP's schedule as a pure generator (Xu et al., Figure 2, §3.1-3.3, eq. 5, Appendix A):
the grid of global steps, the per-stage op lists, the paper's six configurations through the
simulator with Appendix A's queue depths, Layer-wise Staleness m_k, warm-up and drain,
all-zero staleness = sequential backprop. Pure, no MPI."""

from __future__ import annotations

import pytest

from mpiml.pipeline import (
    PAPER_CONFIGS,
    Deadlock,
    Op,
    Slot,
    Timetable,
    dsp,
    dsp_depths,
    dsp_timetable,
    gpipe,
    simulate,
)

PAPER = PAPER_CONFIGS  # DSP(p; m) of the paper's experiments (Tables 1 and 2)
_KIND = {"F": "forward", "B": "backward", "R": "recompute"}
_MSG = {"sa": "send_act", "ra": "recv_act", "sg": "send_grad", "rg": "recv_grad"}


def grid(text: str) -> list[Slot]:
    """'F0 - F1/B0 B1' -> one Slot per step: F<i> forward, B<i> backward, '-' idle."""
    out = []
    for tok in text.split():
        f = b = None
        for part in tok.split("/"):
            if part.startswith("F"):
                f = int(part[1:])
            elif part.startswith("B"):
                b = int(part[1:])
        out.append(Slot(f, b))
    return out


# DSP(1,1,0; 4,2,0), 6 batches, written by hand from Figure 2 / §3.3: stage k forwards batch n
# at step n + (p_0+..+p_{k-1}) and backwards it m_k steps later: staleness {4, 2, 0}.
FIG2_6 = [
    "F0 F1 F2 F3 F4/B0 F5/B1 B2 B3 B4 B5",
    "-  F0 F1 F2/B0 F3/B1 F4/B2 F5/B3 B4 B5 -",
    "-  -  F0/B0 F1/B1 F2/B2 F3/B3 F4/B4 F5/B5 - -",
]
# the same configuration, 3 batches, as op lists (R = recompute, eq. 5)
FIG2_OPS_3 = [
    "F0 sa0>1 F1 sa1>1 F2 sa2>1 R0 rg0<1 B0 R1 rg1<1 B1 R2 rg2<1 B2",
    "ra0<0 F0 sa0>2 ra1<0 F1 sa1>2 ra2<0 F2 sa2>2 R0 rg0<2 B0 sg0>0 R1 rg1<2 B1 sg1>0 R2 rg2<2 B2 sg2>0",
    "ra0<1 F0 B0 sg0>1 ra1<1 F1 B1 sg1>1 ra2<1 F2 B2 sg2>1",
]


def _ops(text: str) -> list[Op]:
    """'F0 sa0>1 R0 rg0<1 B0' -> ops: F/B/R compute, sa/ra/sg/rg a message to (>) or from (<) a stage."""
    out = []
    for tok in text.split():
        if tok[0] in _KIND:
            out.append(Op(_KIND[tok[0]], int(tok[1:])))  # type: ignore[arg-type]
        else:
            mb, peer = tok[2:].replace("<", ">").split(">")
            out.append(Op(_MSG[tok[:2]], int(mb), int(peer)))  # type: ignore[arg-type]
    return out


def test_literal_grid_of_the_smallest_paper_configuration() -> None:
    assert dsp_timetable((1, 1, 0), (4, 2, 0), 6) == [grid(row) for row in FIG2_6]


def test_literal_op_lists_of_the_smallest_paper_configuration() -> None:
    assert dsp((1, 1, 0), (4, 2, 0), 3) == [_ops(row) for row in FIG2_OPS_3]


@pytest.mark.parametrize(("p", "m"), PAPER)
def test_paper_configurations_run_with_appendix_a_depths(p: tuple[int, ...], m: tuple[int, ...]) -> None:
    steps = 3 * m[0] + 5
    stages = dsp(p, m, steps)
    trace = simulate(stages, depths=dsp_depths(p, m))
    for k, events in enumerate(trace.stages):
        done = [(e.op.kind, e.op.mb) for e in events if e.op.is_compute]
        assert [mb for kind, mb in done if kind == "forward"] == list(range(steps))
        assert [mb for kind, mb in done if kind == "backward"] == list(range(steps))
        assert [mb for kind, mb in done if kind == "recompute"] == (list(range(steps)) if m[k] else [])


@pytest.mark.parametrize(("p", "m"), PAPER)
def test_layer_wise_staleness_is_m_k(p: tuple[int, ...], m: tuple[int, ...]) -> None:
    steps = 2 * m[0] + 3
    for k, row in enumerate(dsp_timetable(p, m, steps)):
        f_at = {s.forward: t for t, s in enumerate(row) if s.forward is not None}
        b_at = {s.backward: t for t, s in enumerate(row) if s.backward is not None}
        # Δt_k = t_{2K-1-k} - t_k (§3.1), in steps, for every batch
        assert {n: b_at[n] - f_at[n] for n in range(steps)} == dict.fromkeys(range(steps), m[k])
        # Figure 2: the index difference between the forward and backward batch of one step
        both = [s for s in row if s.forward is not None and s.backward is not None]
        assert {s.forward - s.backward for s in both} == {m[k]}  # type: ignore[operator]
    for k, stage in enumerate(dsp(p, m, steps)):
        # in the op list: updates (backwards) between a batch's forward and its backward
        seen: dict[int, int] = {}
        updates = 0
        for op in stage:
            if op.kind == "forward":
                seen[op.mb] = updates
            elif op.kind == "backward":
                assert updates - seen[op.mb] == min(op.mb, m[k]), (k, op)
                updates += 1


def _most_held(stage: list[Op]) -> int:
    held = most = 0
    for op in stage:
        held += (op.kind == "forward") - (op.kind == "backward")
        most = max(most, held)
    return most


@pytest.mark.parametrize(("p", "m"), PAPER)
def test_input_queue_holds_1_plus_m_k_and_queues_are_at_least_full_in_lockstep(
    p: tuple[int, ...], m: tuple[int, ...]
) -> None:
    steps = 2 * m[0] + 3
    assert [_most_held(s) for s in dsp(p, m, steps)] == [1 + mk for mk in m]  # M_k, length 1+m_k
    # lockstep (every stage runs global step t, forwards bottom-up then backwards top-down):
    # the messages in flight right after each send reach exactly P_k = 1+p_k and Q_k = 1+q_k
    g, K = dsp_timetable(p, m, steps), len(p)
    most: dict[tuple[int, int, str], int] = {}
    for t in range(len(g[0])):
        for k in range(K - 1):  # act k -> k+1 after k sends its step-t forward
            sent = sum(s.forward is not None for s in g[k][: t + 1])
            got = sum(s.forward is not None for s in g[k + 1][:t])
            most[k, k + 1, "act"] = max(most.get((k, k + 1, "act"), 0), sent - got)
        for k in range(K - 1, 0, -1):  # grad k -> k-1 after k sends its step-t backward
            sent = sum(s.backward is not None for s in g[k][: t + 1])
            got = sum(s.backward is not None for s in g[k - 1][:t])
            most[k, k - 1, "grad"] = max(most.get((k, k - 1, "grad"), 0), sent - got)
    assert most == dsp_depths(p, m)


def test_warm_up_and_drain() -> None:
    p, m, steps = (2, 2, 2, 0), (9, 6, 3, 0), 12
    for k, row in enumerate(dsp_timetable(p, m, steps)):
        busy = [s for s in row if s != Slot(None, None)]
        d = sum(p[:k])
        assert all(s == Slot(None, None) for s in row[:d])  # idle until batch 0 arrives
        # warm-up: m_k forward-only steps (the input queue fills), then the first backward
        assert [s.backward for s in busy[: m[k] + 1]] == [None] * m[k] + [0]
        # drain: after the last batch is fed, m_k backward-only steps, then idle
        assert [s.forward for s in busy[-m[k] - 1 :]] == [steps - 1] + [None] * m[k]
        assert len(busy) == steps + m[k]


@pytest.mark.parametrize("K", [1, 2, 4])
def test_all_zero_staleness_is_sequential_backprop(K: int) -> None:
    steps = 4
    expected: list[list[Op]] = [[] for _ in range(K)]
    for n in range(steps):
        for k, stage in enumerate(gpipe(K, 1)):
            expected[k] += [Op(op.kind, n, op.peer) for op in stage]
    assert dsp((0,) * K, (0,) * K, steps) == expected
    simulate(expected, depths=dsp_depths((0,) * K, (0,) * K))


def test_queues_one_too_small_only_slow_two_too_small_deadlock() -> None:
    # a finding (docs/pipeline.md): with the op lists fixed, Appendix A's sizes are what
    # lockstep needs, not what progress needs; one slot less everywhere still completes
    # (stages wait for each other), two less deadlocks DSP(2,2,0; 6,3,0)
    p, m = (2, 2, 0), (6, 3, 0)
    stages = dsp(p, m, 12)
    depths = dsp_depths(p, m)
    simulate(stages, depths={key: d - 1 for key, d in depths.items()})
    with pytest.raises(Deadlock) as err:
        simulate(stages, depths={key: max(1, d - 2) for key, d in depths.items()})
    assert err.value.blocked == {0: Op("send_act", 5, 1), 1: Op("send_act", 3, 2), 2: Op("send_grad", 1, 1)}
    assert "stage 2: send_grad(1)->1 (channel to stage 1 full, 1 unreceived)" in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (((1, 1, 0), (2, 2, 0), 3), "q_1 = m_0 - p_0 - m_1"),
        (((1, 1, 0), (4, 2, 0), 0), "steps must be an integer >= 1"),
        (((1, 1, 0), (4, 2, 0), True), "steps must be an integer >= 1"),
    ],
)
def test_bad_arguments(args: tuple[tuple[int, ...], tuple[int, ...], int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        dsp(*args)


def test_timetable_counts_are_the_grids() -> None:
    """Timetable.counts (what a training stage has sent and taken by a global step, by
    arithmetic, for its checkpoints) equals counting dsp_timetable's grid (whose entries
    the literal tables above check), for the paper's configurations and zero staleness."""
    for p, m in [*PAPER, ((0, 0), (0, 0))]:
        steps = 7
        grid = dsp_timetable(list(p), list(m), steps)
        table = Timetable(list(p), list(m), steps)
        for k, row in enumerate(grid):
            assert len(row) == table.length
            for s in range(table.length):
                done = row[: s + 1]
                want = (sum(x.forward is not None for x in done), sum(x.backward is not None for x in done))
                assert table.counts(k, s) == want
