"""mpiml.pipeline: GPipe / 1F1B op lists against literal tables, the simulator's pairing,
deadlocks and bubbles, DSP's queue sizes (Appendix A). Pure, no MPI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpiml.pipeline import (
    PAPER_CONFIGS,
    Deadlock,
    Op,
    ScheduleError,
    bubble_fraction,
    dsp_queues,
    gpipe,
    one_f_one_b,
    simulate,
)

_KIND = {
    "F": "forward",
    "B": "backward",
    "sa": "send_act",
    "ra": "recv_act",
    "sg": "send_grad",
    "rg": "recv_grad",
}


def ops(text: str) -> list[Op]:
    """'F0 sa0>1 rg2<1 B2' -> ops: F/B compute, sa/ra/sg/rg a message to (>) or from (<) a stage."""
    out = []
    for tok in text.split():
        if tok[0] in "FB":
            out.append(Op(_KIND[tok[0]], int(tok[1:])))  # type: ignore[arg-type]
        else:
            mb, peer = tok[2:].replace("<", ">").split(">")
            out.append(Op(_KIND[tok[:2]], int(mb), int(peer)))  # type: ignore[arg-type]
    return out


# written out by hand from the docstrings' conventions
GPIPE_2_3 = [
    "F0 sa0>1 F1 sa1>1 F2 sa2>1 rg2<1 B2 rg1<1 B1 rg0<1 B0",
    "ra0<0 F0 ra1<0 F1 ra2<0 F2 B2 sg2>0 B1 sg1>0 B0 sg0>0",
]
GPIPE_3_4 = [
    "F0 sa0>1 F1 sa1>1 F2 sa2>1 F3 sa3>1 rg3<1 B3 rg2<1 B2 rg1<1 B1 rg0<1 B0",
    "ra0<0 F0 sa0>2 ra1<0 F1 sa1>2 ra2<0 F2 sa2>2 ra3<0 F3 sa3>2 "
    "rg3<2 B3 sg3>0 rg2<2 B2 sg2>0 rg1<2 B1 sg1>0 rg0<2 B0 sg0>0",
    "ra0<1 F0 ra1<1 F1 ra2<1 F2 ra3<1 F3 B3 sg3>1 B2 sg2>1 B1 sg1>1 B0 sg0>1",
]
ONE_F_ONE_B_2_3 = [
    "F0 sa0>1 F1 sa1>1 rg0<1 B0 F2 sa2>1 rg1<1 B1 rg2<1 B2",
    "ra0<0 F0 B0 sg0>0 ra1<0 F1 B1 sg1>0 ra2<0 F2 B2 sg2>0",
]
ONE_F_ONE_B_3_4 = [
    "F0 sa0>1 F1 sa1>1 F2 sa2>1 rg0<1 B0 F3 sa3>1 rg1<1 B1 rg2<1 B2 rg3<1 B3",
    "ra0<0 F0 sa0>2 ra1<0 F1 sa1>2 rg0<2 B0 sg0>0 ra2<0 F2 sa2>2 rg1<2 B1 sg1>0 "
    "ra3<0 F3 sa3>2 rg2<2 B2 sg2>0 rg3<2 B3 sg3>0",
    "ra0<1 F0 B0 sg0>1 ra1<1 F1 B1 sg1>1 ra2<1 F2 B2 sg2>1 ra3<1 F3 B3 sg3>1",
]


@pytest.mark.parametrize(
    ("schedule", "K", "m", "table"),
    [
        (gpipe, 2, 3, GPIPE_2_3),
        (gpipe, 3, 4, GPIPE_3_4),
        (one_f_one_b, 2, 3, ONE_F_ONE_B_2_3),
        (one_f_one_b, 3, 4, ONE_F_ONE_B_3_4),
        (gpipe, 1, 2, ["F0 F1 B1 B0"]),
        (one_f_one_b, 1, 2, ["F0 B0 F1 B1"]),
        (one_f_one_b, 3, 1, ["F0 sa0>1 rg0<1 B0", "ra0<0 F0 sa0>2 rg0<2 B0 sg0>0", "ra0<1 F0 B0 sg0>1"]),
    ],
)
def test_literal_tables(schedule, K: int, m: int, table: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert schedule(K, m) == [ops(row) for row in table]


@pytest.mark.parametrize("schedule", [gpipe, one_f_one_b])
@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 7])
def test_every_schedule_runs_with_the_gpipe_bubble(schedule, K: int, m: int) -> None:  # type: ignore[no-untyped-def]
    trace = simulate(schedule(K, m), depth=1)
    assert trace.makespan == 2 * (m + K - 1)
    assert [trace.idle(k) for k in range(K)] == [2 * (K - 1)] * K  # the bubble, in unit ops
    assert bubble_fraction(trace) == pytest.approx((K - 1) / (m + K - 1), abs=1e-15)


def test_gpipe_times_are_the_diagonal_of_the_paper_figure() -> None:
    K, m = 3, 4
    trace = simulate(gpipe(K, m))
    for k, events in enumerate(trace.stages):
        starts = {(e.op.kind, e.op.mb): e.start for e in events if e.op.is_compute}
        assert all(starts["forward", i] == i + k for i in range(m))
        assert all(starts["backward", i] == (m + K - 1) + (m - 1 - i) + (K - 1 - k) for i in range(m))


def _most_stashed(stage: list[Op]) -> int:
    """Most activations held at once on a stage: forwards done minus backwards done."""
    held = most = 0
    for op in stage:
        held += (op.kind == "forward") - (op.kind == "backward")
        most = max(most, held)
    return most


def test_one_f_one_b_stashes_at_most_k_minus_stage_activations() -> None:
    K, m = 4, 8
    assert [_most_stashed(s) for s in one_f_one_b(K, m)] == [4, 3, 2, 1]
    assert [_most_stashed(s) for s in gpipe(K, m)] == [m] * K


@pytest.mark.parametrize("schedule", [gpipe, one_f_one_b])
@pytest.mark.parametrize(
    ("K", "m", "name"), [(0, 2, "K"), (2, 0, "m"), (-1, 1, "K"), (2, 1.5, "m"), (True, 2, "K")]
)
def test_bad_arguments_name_the_argument(schedule, K, m, name: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=rf"^{name} must be an integer >= 1"):
        schedule(K, m)


def test_op_checks_kind_and_peer() -> None:
    with pytest.raises(ValueError, match="Op.kind"):
        Op("fwd", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="peer"):
        Op("send_act", 0)
    with pytest.raises(ValueError, match="peer"):
        Op("forward", 0, 1)
    assert str(Op("recv_grad", 2, 1)) == "recv_grad(2)<-1" and str(Op("forward", 3)) == "forward(3)"


def test_a_recv_moved_before_a_send_deadlocks_and_names_both_ops() -> None:
    stages = gpipe(2, 3)
    s0 = stages[0]  # ... F2 sa2>1 rg2<1 ...: swap the send and the receive
    i = s0.index(Op("send_act", 2, 1))
    s0[i], s0[i + 1] = s0[i + 1], s0[i]
    with pytest.raises(Deadlock) as err:
        simulate(stages)
    assert err.value.blocked == {0: Op("recv_grad", 2, 1), 1: Op("recv_act", 2, 0)}
    assert "stage 0: recv_grad(2)<-1 (nothing sent yet)" in str(err.value)
    assert "stage 1: recv_act(2)<-0 (nothing sent yet)" in str(err.value)


def test_a_depth_too_small_deadlocks_two_stages_sending_first() -> None:
    # both stages send two messages before receiving: the classic send-send deadlock
    stages = [ops("sa0>1 sa1>1 rg0<1 rg1<1"), ops("sg0>0 sg1>0 ra0<0 ra1<0")]
    assert len(simulate(stages, depth=2).stages[0]) == 4
    with pytest.raises(Deadlock) as err:
        simulate(stages, depth=1)
    assert err.value.blocked == {0: Op("send_act", 1, 1), 1: Op("send_grad", 1, 0)}
    assert "channel to stage 1 full, 1 unreceived" in str(err.value)


def test_a_send_into_a_full_channel_waits_for_the_receive() -> None:
    # stage 1 receives late (after 5 units of work): with depth 1 stage 0's second send waits for it
    stages = [ops("F0 sa0>1 sa1>1 F1"), ops("F0 F1 F2 F3 F4 ra0<0 ra1<0")]
    tight, loose = simulate(stages, depth=1), simulate(stages, depth=2)
    assert [e.start for e in tight.stages[0]] == [0, 1, 5, 5]
    assert [e.start for e in loose.stages[0]] == [0, 1, 1, 1]


def test_a_receive_out_of_fifo_order_names_the_channel_head() -> None:
    stages = [ops("sa0>1 sa1>1"), ops("ra1<0 ra0<0")]
    with pytest.raises(Deadlock, match=r"stage 1: recv_act\(1\)<-0 \(channel head is micro-batch 0\)"):
        simulate(stages, depth=2)


def test_a_message_never_received_and_a_bad_peer_are_refused() -> None:
    with pytest.raises(
        ScheduleError, match=r"stage 0 sent act for micro-batch\(es\) \[1\] to stage 1, never"
    ):
        simulate([ops("sa0>1 sa1>1"), ops("ra0<0")], depth=2)
    with pytest.raises(ScheduleError, match="names peer 2"):
        simulate([ops("sa0>2"), ops("ra0<0")])
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        simulate(gpipe(2, 2), depth=0)


PAPER = PAPER_CONFIGS  # DSP(p; m) of the paper's experiments (Table 2 and §4)


@pytest.mark.parametrize(("p", "m"), PAPER)
def test_dsp_paper_configurations_pass(p: tuple[int, ...], m: tuple[int, ...]) -> None:
    sizes = dsp_queues(p, m)
    q = [0] + [m[k - 1] - p[k - 1] - m[k] for k in range(1, len(p))]
    assert [(s.input, s.output, s.gradient, s.staleness) for s in sizes] == [
        (1 + mk, 1 + pk, 1 + qk, mk) for mk, pk, qk in zip(m, p, q, strict=True)
    ]


def test_dsp_queue_sizes_literal() -> None:
    sizes = dsp_queues((1, 1, 0), (4, 2, 0))  # q = (0, 4-1-2, 2-1-0) = (0, 1, 1)
    assert [(s.input, s.output, s.gradient) for s in sizes] == [(5, 2, 1), (3, 2, 2), (1, 1, 2)]
    sizes = dsp_queues((3, 3, 3, 0), (15, 10, 5, 0))  # q = (0, 2, 2, 2)
    assert [(s.input, s.output, s.gradient) for s in sizes] == [(16, 4, 1), (11, 4, 3), (6, 4, 3), (1, 1, 3)]


def test_dsp_choices_where_appendix_a_is_stricter_than_the_paper() -> None:
    # all staleness 0 (plain backprop) and q_k = 0 are allowed; so is staleness on the last stage
    assert [s.gradient for s in dsp_queues((0, 0, 0), (0, 0, 0))] == [1, 1, 1]
    assert [s.input for s in dsp_queues((1, 0), (3, 1))] == [4, 2]
    assert len(dsp_queues((0,), (2,))) == 1


@pytest.mark.parametrize(
    ("p", "m", "message"),
    [
        ((1, 1, 0), (2, 2, 0), "q_1 = m_0 - p_0 - m_1 = 2 - 1 - 2 = -1 < 0"),
        ((1, 1, 0), (4, 1, 2), "q_2 = m_1 - p_1 - m_2 = 1 - 1 - 2 = -2 < 0"),
        ((1, 1, 1), (6, 4, 2), "p_{K-1} must be 0"),
        ((1, -1, 0), (4, 2, 0), "p_1 must be >= 0"),
        ((1, 1, 0), (4, 2.0, 0), "m_1 must be an integer"),
        ((1, 0), (4, 2, 0), "p and m must both have K >= 1 entries"),
        ((), (), "p and m must both have K >= 1 entries"),
    ],
)
def test_dsp_broken_configurations_name_the_relation(p, m, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError) as err:
        dsp_queues(p, m)
    assert message in str(err.value)


def test_the_package_imports_neither_mpi_nor_numpy() -> None:
    code = "import sys, mpiml.pipeline; print(sorted({'mpi4py', 'numpy'} & set(sys.modules)))"
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)
