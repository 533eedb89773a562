"""SDPIPE trained on real ranks (issue 14), against its own log and serial oracles:

- every recorded group's W_k is symmetric and doubly stochastic, every update is in
  exactly one group, the workers' groups are the scheduler's, and the groups since each
  bound round connect all replicas (a sync round holds all of them);
- replay: the recorded groups, applied by a serial float64 simulator of
  X_{k+1} = (X_k - eta G_k) W_k with the same data order (tests/sdpipe_reference.py),
  give every replica's final parameters bit for bit (P = 3 and P = 2, K = 1);
- with every replica always in the group (a wait longer than any step), SDPIPE is
  synchronous data parallelism of the pipelines: ``dsp`` with P pipelines (an AllReduce
  of the stage gradients) to rounding, the replay bit for bit, and a stopped and
  resumed run ends where the uninterrupted one ends, bit for bit.

Each job runs on the first n ranks of one 4-rank launch (P pipelines of K = 1 stage and
the scheduler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from ps_ranks import check_on_rank_0, stop_then_resume, train_on  # tests/ps_ranks.py
from reference import small_job  # tests/reference.py
from sdpipe_reference import read_groups, sdpipe_replay  # tests/sdpipe_reference.py

from mpiml.io.runfile import rank_file_name
from mpiml.pipeline.groups import BOUND, SYNC, UnionFind, doubly_stochastic, group_matrix
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)

ALWAYS = ["algorithm.wait_ms=60000", "algorithm.wait_max_ms=60000"]  # no deadline is ever reached


def _job(name: str, *extra: str, steps: int = 24) -> Any:
    return small_job(
        name,
        "algorithm.name=sdpipe",
        "algorithm.stages=1",
        "model.name=mlp",
        "model.hidden=[12, 8]",
        "model.activation=tanh",
        "algorithm.ssp_bound=4",
        "algorithm.sync_every=10",
        *extra,
        steps=steps,
        eval_every=12,
    )


def _replicas(comm: MPI.Comm, res: Any, P: int) -> list[np.ndarray]:
    got = comm.allgather(res.params if res is not None else None)
    return [np.asarray(g) for g in got[:P]]


def _check_log(run_dir: Path, P: int, steps: int) -> list[str]:
    """W_k of every group symmetric, doubly stochastic; each worker's groups the
    scheduler's; each period connected."""
    bad: list[str] = []
    groups, members = read_groups(run_dir, P + 1)
    for (_k, seq), ms in members.items():
        if not doubly_stochastic(group_matrix(P, ms)):  # ValueError: repeated or foreign members
            bad.append(f"group {seq}: W not symmetric doubly stochastic")
    used = 0
    for q in range(P):
        with h5py.File(run_dir / rank_file_name(q), "r") as f:
            avg = f["sdpipe_average"][()]
        if len(avg) != steps:
            bad.append(f"replica {q} averaged {len(avg)} times in {steps} batches")
        if list(avg["batch"]) != list(range(steps)):
            bad.append(f"replica {q}'s batches {list(avg['batch'])}")
        for row in avg:
            ms = members.get((0, int(row["seq"])), [])
            if q not in ms or len(ms) != int(row["size"]):
                bad.append(
                    f"replica {q}: group {int(row['seq'])} is {ms} at the scheduler, size {int(row['size'])}"
                )
        used += len(avg)
    if sum(len(m) for m in members.values()) != used:
        bad.append(f"{sum(len(m) for m in members.values())} memberships at the scheduler, {used} updates")
    uf = UnionFind(P)
    rounds = 0
    for g in np.sort(groups, order="seq"):
        ms = members[(0, int(g["seq"]))]
        for m in ms[1:]:
            uf.union(ms[0], m)
        if int(g["kind"]) == SYNC and len(ms) != P:
            bad.append(f"sync round {int(g['seq'])} of {ms}")
        if int(g["kind"]) in (BOUND, SYNC):
            rounds += 1
            if not uf.connected():
                bad.append(f"the period ending in round {int(g['seq'])} does not connect all replicas")
            uf = UnionFind(P)
    syncs = len({*range(9, steps, 10), steps - 1})  # sync_every = 10 and the last batch
    if rounds < syncs:
        bad.append(f"only {rounds} rounds in {steps} batches")
    return bad


@pytest.mark.parametrize("P", [3, 2])
@pytest.mark.parametrize("opt", ["sgd", "momentum"])
def test_groups_are_averages_and_the_replay_is_bit_for_bit(
    comm: MPI.Comm, shared_tmp: Path, P: int, opt: str
) -> None:
    """Short waits and a random straggler: groups of every size; the log checks, and the
    replay of the recorded groups ends where every replica ended."""
    cfg = _job(
        f"sd{P}{opt}",
        f"optimizer.name={opt}",
        "algorithm.wait_ms=0.05",
        "algorithm.wait_max_ms=0.4",
        "straggler.probability=0.3",
        "straggler.percent=400",
    )
    res = train_on(comm, P + 1, cfg, shared_tmp)
    got = _replicas(comm, res, P)
    run_dir = comm.bcast(res.run_dir if res is not None else None, root=0)

    def check() -> list[str]:
        bad = _check_log(run_dir, P, int(cfg.run.steps))
        groups, members = read_groups(run_dir, P + 1)
        order = [members[(0, int(s))] for s in np.sort(groups["seq"])]
        want = sdpipe_replay(cfg, P, order)
        for q in range(P):
            if not np.array_equal(got[q], want[q]):
                bad.append(f"replica {q}: max |diff| {np.max(np.abs(got[q] - want[q])):.3e} vs the replay")
        sizes = {len(m) for m in order}
        if sizes == {P}:
            bad.append("every group was complete: the test did not exercise partial groups")
        return bad

    check_on_rank_0(comm, check)


def test_all_ready_is_synchronous_data_parallelism(comm: MPI.Comm, shared_tmp: Path) -> None:
    P = 3
    sd = _job("sd_all", *ALWAYS)
    res = train_on(comm, P + 1, sd, shared_tmp)
    got = _replicas(comm, res, P)
    dp = small_job(
        "dsp_all",
        "algorithm.name=dsp",
        "algorithm.stages=1",
        "model.name=mlp",
        "model.hidden=[12, 8]",
        "model.activation=tanh",
        steps=24,
        eval_every=12,
    )
    ref = train_on(comm, P, dp, shared_tmp)
    want = _replicas(comm, ref, P)
    ok = all(np.array_equal(g, got[0]) for g in got)
    assert_all(comm, ok, "the replicas differ although every group held all of them")
    diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
    assert_all(
        comm, diff < 1e-12, f"SDPIPE with all replicas always ready vs dsp P = 3: max |diff| {diff:.3e}"
    )
    run_dir = comm.bcast(res.run_dir if res is not None else None, root=0)

    def check() -> list[str]:
        groups, members = read_groups(run_dir, P + 1)
        bad = [f"group {k} is {m}" for k, m in members.items() if len(m) != P]
        order = [members[(0, int(s))] for s in np.sort(groups["seq"])]
        want = sdpipe_replay(sd, P, order)
        bad += [
            f"replica {q} differs from the replay" for q in range(P) if not np.array_equal(got[q], want[q])
        ]
        return bad

    check_on_rank_0(comm, check)


def test_stop_and_resume_end_where_the_run_ends(comm: MPI.Comm, shared_tmp: Path) -> None:
    """All ready (deterministic groups), momentum (its state is checkpointed), a stop
    request mid-segment (the scheduler fixes the stop step), then --resume."""
    P = 3
    extra = [*ALWAYS, "optimizer.name=momentum", "algorithm.sync_every=7"]
    full = train_on(comm, P + 1, _job("sd_full", *extra, steps=30), shared_tmp)
    at, res = stop_then_resume(comm, P + 1, _job("sd_stop", *extra, steps=30), shared_tmp)
    got, want = _replicas(comm, res, P), _replicas(comm, full, P)
    ok = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert_all(comm, ok, f"stopped at step {at} and resumed: the replicas differ from the uninterrupted run")
    dirs = comm.bcast((full.run_dir, res.run_dir) if full is not None and res is not None else None, root=0)

    def check() -> list[str]:  # the scheduler's counters continue: the same groups, numbered alike
        (g_full, _), (g_res, m_res) = (read_groups(d, P + 1) for d in dirs)
        bad = []
        if sorted(g_res["seq"].tolist()) != list(range(len(g_full))):
            bad.append(
                f"resumed run's group numbers {sorted(g_res['seq'].tolist())}, uninterrupted 0..{len(g_full) - 1}"
            )
        if sorted(len(m) for m in m_res.values()) != [P] * len(g_full):
            bad.append("the resumed run's groups are not the uninterrupted run's")
        # each replica's adaptive wait continues from its checkpoint (all groups complete:
        # x0.9 per update), so the waits the scheduler logged are the uninterrupted run's
        waits = []
        for d in dirs:
            with h5py.File(Path(d) / rank_file_name(P), "r") as f:
                m = f["sdpipe_members"][()]
            waits.append(np.sort(m, order=["seq", "replica"])["wait_ms"])
        if not np.array_equal(*waits):
            bad.append("the resumed run's wait times are not the uninterrupted run's")
        return bad

    check_on_rank_0(comm, check)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.wait_ms=0"], "algorithm.wait_ms"),
        (["algorithm.wait_ms=-1"], "algorithm.wait_ms"),
        (["algorithm.ssp_bound=0"], "algorithm.ssp_bound"),
        (["algorithm.sync_every=0"], "algorithm.sync_every"),
        (["algorithm.wait_ms=20"], "algorithm.wait_ms = 20.0 is more than algorithm.wait_max_ms = 10.0"),
        (["algorithm.stages=2"], "launch P * 2 + 1 for some P >= 1 ranks (got 4)"),
        (["algorithm.pipelines=2"], "launch P * K + 1 = 2 * 1 + 1 = 3 ranks (got 4)"),
    ],
)
def test_bad_sdpipe_job_raises_the_same_config_error_on_every_rank(
    comm: MPI.Comm, shared_tmp: Path, overrides: list[str], message: str
) -> None:
    from ps_ranks import NULL

    from mpiml.errors import ConfigError
    from mpiml.trainer import train

    cfg = None
    got = ""
    try:
        cfg = _job("bad", *overrides, "model.hidden=[8, 8]")
        train(cfg, comm, out=shared_tmp / "bad", stream=NULL)
    except ConfigError as exc:
        got = str(exc)
    seen = comm.allgather(got)
    assert_all(comm, message in got and "\n" not in got, f"got {got!r}")
    assert_all(comm, len(set(seen)) == 1, f"different messages on different ranks: {seen}")
    assert_all(comm, not (shared_tmp / "bad").exists(), "a run folder was written")
