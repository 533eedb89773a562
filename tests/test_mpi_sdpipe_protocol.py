"""SDPIPE's protocol on real ranks, without training (mpiml.protocols.sdpipe): three workers
(ranks 0..2: one stage, P = 3) and the scheduler (rank 3) drive GroupScheduler,
GroupClient and GroupAverage directly on random float64 vectors, at random paces.

Checked: every worker's group holds it; the members of a group get the same reply and
bit-identical averages, equal to ``average_of`` of their inputs (ascending summation
order); the scheduler's tables (``sdpipe_groups``, ``sdpipe_members``) say what the workers
got; a round comes at every round batch (rounds aligned by batch id); wait times adapt as
``next_wait`` says (a replica alone doubles); with endless waits every group is all three;
a stop request from one worker reaches every worker with the scheduler's replies.

Run by hand: ``mpiexec -n 4 python -m mpi4py -m pytest --with-mpi tests/test_mpi_sdpipe_protocol.py``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.pipeline.groups import REGULAR, SYNC, WHY, next_wait, round_kind
from mpiml.protocols.sdpipe import GroupAverage, GroupClient, GroupScheduler, average_of
from mpiml.trace import Trace

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)

P, SCHED, SIZE = 3, 3, 17


@contextmanager
def _or_abort() -> Iterator[None]:
    """An exception inside the protocol leaves the other ranks blocked on this one: abort."""
    try:
        yield
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def _run(
    world: MPI.Comm,
    batches: int,
    *,
    wait_ms: float,
    wait_max_ms: float,
    ssp_bound: int,
    sync_every: int,
    seed: int,
    alone_first: bool = False,
    stop_at: tuple[int, int] | None = None,
) -> tuple[list[list[dict[str, Any]]], dict[str, np.ndarray], int, int]:
    """One run on the first 4 ranks of ``world``; returns, on every rank, each worker's events,
    the scheduler's tables, its stop step and its bound rounds met at once (no group, the
    period already connected). ``alone_first``: workers 1 and 2 start only
    once worker 0 has its first group (which is then 0 alone, closed at its deadline);
    ``stop_at`` = (worker, batch): that worker's ready signal for that batch carries a stop
    request."""
    comm = world.Dup()
    rank = comm.Get_rank()
    workers = comm.Split(0 if rank < P else MPI.UNDEFINED, rank)  # GroupAverage's communicator
    events: list[dict[str, Any]] = []
    tables: dict[str, np.ndarray] = {}
    stop = met = -1
    with _or_abort():
        if rank == SCHED:
            trace = Trace()
            sched = GroupScheduler(comm, [list(range(P))], ssp_bound, sync_every, batches, trace=trace)
            sched.serve(until=lambda: sched.done_through(batches - 1))
            sched.close()
            tables, stop, met = trace.take_tables(), sched.stop_step, sched.stages[0].met
            assert sched.answered.tolist() == [[batches] * P]
        elif rank < P:
            rng = np.random.default_rng(seed + 1000 * rank)
            client = GroupClient(comm, SCHED, P, 0, rank, wait_ms, wait_max_ms)
            avg = GroupAverage(workers, SIZE, np.float64)
            if alone_first and rank > 0:
                comm.recv(source=0, tag=99)
            for b in range(batches):
                # mixed magnitudes: a float sum in another order would differ in its last bits
                x = rng.standard_normal(SIZE) * 10.0 ** rng.integers(-4, 5, SIZE)
                time.sleep(float(rng.uniform(0.0, 2e-3)))
                flags = 1 if stop_at == (rank, b) else 0
                wait = client.wait_ms
                client.ready(b, b, flags)
                reply = client.group()
                y = avg.run(x.copy(), reply.members, step=b)
                events.append(
                    dict(batch=b, seq=reply.seq, members=tuple(reply.members), why=reply.why,
                         stop=reply.stop_step, wait=wait, x=x, y=y.copy())
                )  # fmt: skip
                if alone_first and rank == 0 and b == 0:
                    for r in range(1, P):
                        comm.send(None, dest=r, tag=99)
            stop = client.stop_step
    got = comm.allgather(events)[:P]
    tables, met = comm.bcast((tables, met), root=SCHED)
    stops = comm.allgather(stop)
    if workers != MPI.COMM_NULL:
        workers.Free()
    comm.Free()
    assert stops[:P] == [stops[SCHED]] * P, f"stop steps: workers {stops[:P]}, scheduler {stops[SCHED]}"
    return got, tables, stops[SCHED], met


def _check_groups(got: list[list[dict[str, Any]]], tables: dict[str, np.ndarray], batches: int) -> dict:
    """Members agree with each other, with average_of and with the scheduler's tables;
    returns seq -> the members' events."""
    by_seq: dict[int, dict[int, dict[str, Any]]] = {}
    for r, evs in enumerate(got):
        assert [e["batch"] for e in evs] == list(range(batches))
        seqs = [e["seq"] for e in evs]
        assert seqs == sorted(set(seqs)), f"worker {r}: group numbers {seqs} (one group per update, in order)"
        for e in evs:
            assert r in e["members"], f"worker {r} got group {e['members']}"
            by_seq.setdefault(e["seq"], {})[r] = e
    groups = {int(row["seq"]): row for row in tables["sdpipe_groups"]}
    assert sorted(groups) == sorted(by_seq) == list(range(len(groups)))  # every group answered, once
    members = tables["sdpipe_members"]
    for seq, evs in by_seq.items():
        (ms,) = {e["members"] for e in evs.values()}
        assert sorted(evs) == list(ms), f"group {seq}: {sorted(evs)} got it, its members are {ms}"
        assert len({(e["why"], e["stop"]) for e in evs.values()}) == 1
        inputs = [evs[m]["x"] if m in evs else np.zeros(SIZE) for m in range(P)]
        want = average_of(inputs, list(ms))
        for e in evs.values():
            assert e["y"].tobytes() == want.tobytes(), (
                f"group {seq}: worker's average differs from average_of"
            )
        row = groups[seq]
        assert (int(row["size"]), WHY[int(row["why"])], int(row["stage"])) == (len(ms), evs[ms[0]]["why"], 0)
        if int(row["kind"]) == SYNC:  # a sync round: of its batch, which all its members sent
            assert {e["batch"] for e in evs.values()} == {int(row["step"])}
        elif int(row["kind"]) != REGULAR:  # a bound round of one stage (K = 1) takes any arrival
            got_b = {e["batch"] for e in evs.values()}  # (StageGroups join_any): its batch and older
            assert int(row["step"]) in got_b and max(got_b) == int(row["step"]), (
                seq,
                got_b,
                int(row["step"]),
            )
        mine = members[members["seq"] == seq]
        assert sorted(int(v) for v in mine["replica"]) == list(ms)
        for m, w in zip(mine["replica"], mine["wait_ms"], strict=True):
            assert float(w) == evs[int(m)]["wait"]  # the wait time in force, as the worker sent it
    return by_seq


@pytest.mark.parametrize("wait_ms", [0.05, 1.0])
def test_groups_averages_tables_and_adaptive_waits(comm: MPI.Comm, wait_ms: float) -> None:
    batches, ssp_bound, sync_every, wait_max = 24, 3, 8, 4.0
    got, tables, stop, met = _run(
        comm, batches, wait_ms=wait_ms, wait_max_ms=wait_max, ssp_bound=ssp_bound,
        sync_every=sync_every, seed=int(wait_ms * 100), alone_first=True,
    )  # fmt: skip
    _check_groups(got, tables, batches)
    assert stop == -1 and all(e["stop"] == -1 for evs in got for e in evs)
    # a round at every round batch (but the bound rounds met at once), in order, of the right
    # kind; sync rounds hold all
    rows = tables["sdpipe_groups"]
    rounds = rows[rows["kind"] != REGULAR]
    kinds = [round_kind(b, ssp_bound, sync_every, batches) for b in range(batches)]
    steps = rounds["step"].tolist()
    assert steps == sorted(set(steps)) and len(steps) + met == sum(k != REGULAR for k in kinds)
    assert {b for b in range(batches) if kinds[b] == SYNC} <= set(steps)
    assert rounds["kind"].tolist() == [kinds[b] for b in steps]
    assert all(int(r["size"]) == P for r in rounds if WHY[int(r["why"])] == "sync")
    # adaptive waits: each next wait follows from the last group's size; 0 began alone: doubled
    for evs in got:
        for e, nxt in zip(evs, evs[1:], strict=False):
            assert nxt["wait"] == next_wait(e["wait"], len(e["members"]), wait_max)
    first = got[0][0]
    assert first["members"] == (0,) and first["why"] == "deadline" and got[0][1]["wait"] == 2 * wait_ms


def test_with_endless_waits_every_group_is_all_three(comm: MPI.Comm) -> None:
    """No bound round, a sync round at the last batch, waits of 1000 s: no deadline ever
    passes, every group closes with all three."""
    batches = 12
    got, tables, _, _ = _run(
        comm, batches, wait_ms=1e6, wait_max_ms=1e6, ssp_bound=batches + 1, sync_every=100, seed=7
    )
    by_seq = _check_groups(got, tables, batches)
    assert len(by_seq) == batches
    assert all(len(evs) == P for evs in by_seq.values())
    assert [WHY[int(w)] for w in tables["sdpipe_groups"]["why"]] == ["all"] * (batches - 1) + ["sync"]


def test_a_stop_request_reaches_every_worker_with_the_replies(comm: MPI.Comm) -> None:
    """Worker 1 asks to stop with its ready signal of batch 3: its reply, and every reply
    after it, carries the scheduler's stop step (the furthest step reported + 1 + margin)."""
    batches = 10
    got, tables, stop, _ = _run(
        comm, batches, wait_ms=0.5, wait_max_ms=2.0, ssp_bound=2, sync_every=5, seed=3, stop_at=(1, 3)
    )
    _check_groups(got, tables, batches)
    assert stop >= 3 + 1 + 2
    assert got[1][3]["stop"] == stop
    for evs in got:
        seen = [e["stop"] for e in evs]
        k = seen.index(stop)  # every worker hears it
        assert seen == [-1] * k + [stop] * (batches - k)
    flagged_seq = got[1][3]["seq"]
    for evs in got:
        assert all(e["stop"] == stop for e in evs if e["seq"] > flagged_seq)


def test_the_scheduler_state_keeps_each_stage_period_and_counters() -> None:
    """A checkpoint's scheduler state (state_arrays -> load_state of a fresh scheduler)
    keeps each stage's union-find since the last round, its round and counters. Local:
    no message is sent (the scheduler is never served here)."""
    workers = [[10, 11, 12], [13, 14, 15]]
    a = GroupScheduler(MPI.COMM_SELF, workers, 4, 8, 40)
    for p in (0, 1):  # stage 0: group {0, 1} closes at its deadline: the period links 0-1, not 2
        a.stages[0].ready(p, 0.0, 1.0, batch=0)
    assert [g.members for g in a.stages[0].due(1.0)] == [(0, 1)]
    for p in (2, 1, 0):  # stage 1: the bound round of batch 3 with all three: a new period
        a.stages[1].ready(p, 2.0, 1.0, batch=3, kind=round_kind(3, 4, 8, 40))
    a.seq[:] = (1, 1)
    b = GroupScheduler(MPI.COMM_SELF, workers, 4, 8, 40)
    b.load_state(a.state_arrays())
    assert [st.state() for st in b.stages] == [st.state() for st in a.stages]
    assert b.stages[0].links.sets == 2 and b.stages[1].round_done == 3
    assert b.seq.tolist() == [1, 1]
