"""``async_ps`` stopped and resumed, in the servers' apply logs: a resumed run's log
holds every push once, with the versions its worker really read, so that the serial
replay (tests/ps_replay.py) still reproduces it, and a staleness 0 run logs no stale
update. Jobs run on the first n ranks of one 4-rank launch (tests/ps_ranks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI
from ps_ranks import check_on_rank_0, gather_model, stop_then_resume  # tests/ps_ranks.py
from ps_replay import ReplayError, read_apply_logs, replay  # tests/ps_replay.py

from mpiml.config import load_config

pytestmark = pytest.mark.mpi(min_size=4)
RANK_COUNTS = (4,)  # conftest: one launch; each test picks its ranks


# What this test found (all fixed): the default staleness -1 failed its own rule when a
# checkpoint's job was read back; ps_apply/ps_pull used step = the clock, which a resume
# truncated as a 0-based step (rows lost, or kept from a crashed segment in delta mode);
# the workers did not checkpoint the versions they had read (delta: version_read 0
# after a resume); an ACK (no model) overwrote the version of the model held.
@pytest.mark.parametrize("push", ["gradient", "delta"])
def test_an_asynchronous_run_stopped_and_resumed_is_still_the_replay_of_its_log(
    comm: MPI.Comm, shared_tmp: Path, push: str
) -> None:
    """No staleness bound, 2 workers, 2 servers: a stop file present from the start
    stops every rank at one step with a checkpoint (quiesced: every push applied);
    --resume runs to the end. Nothing is lost or applied twice across the stop: the
    servers' logs, the stopped segment's rows and the resumed one's, replay to the
    final shards bit for bit (the resumed workers read the versions they pulled; in
    delta mode they go on from their checkpointed local model and optimizer state)."""
    n, servers = 4, 2
    cfg = load_config(
        None,
        [
            f"run.name=stop-{push}",
            "algorithm.name=async_ps",
            f"algorithm.servers={servers}",
            f"algorithm.push={push}",
            "algorithm.tau=3",
            "run.steps=30",
            "run.eval_every=10",
            "checkpoint.every=0",
            "data.batch_size=8",
        ],
    )
    _, res = stop_then_resume(comm, n, cfg, shared_tmp)
    model, workers = gather_model(comm, res, n, servers)

    def check() -> list[str]:
        logs = read_apply_logs(shared_tmp / cfg.run.name, n, servers)
        bad = []
        tau = 3 if push == "delta" else 1
        if any(len(log) != 2 * (30 // tau) for log in logs):
            bad.append(f"logs of {[len(log) for log in logs]} rows, expected {2 * (30 // tau)} each")
        try:
            got = np.concatenate(replay(cfg, logs, n - servers))
            if not np.array_equal(got, model):
                bad.append(f"replay != servers: max diff {np.max(np.abs(got - model)):.3e}")
        except ReplayError as exc:
            bad.append(f"ReplayError: {exc}")
        if not all(np.array_equal(x, model) for x in workers):
            bad.append("a worker's final model != the servers'")
        return bad

    check_on_rank_0(comm, check)


@pytest.mark.parametrize(
    "push",
    [
        "gradient",
        "delta",
    ],
)
def test_a_staleness_0_run_stopped_and_resumed_logs_every_update_once_and_fresh(
    comm: MPI.Comm, shared_tmp: Path, push: str
) -> None:
    """Staleness 0, 2 workers, 1 server, stopped by a stop file and resumed: the
    servers' ps_apply log holds every push exactly once (W per clock) and none stale,
    as the uninterrupted run's does."""
    n, w = 3, 2
    tau = 3 if push == "delta" else 1
    cfg = load_config(
        None,
        [
            f"run.name=bsp-stop-{push}",
            "algorithm.name=async_ps",
            "algorithm.staleness=0",
            f"algorithm.push={push}",
            f"algorithm.tau={tau}",
            "run.steps=24",
            "run.eval_every=12",
            "checkpoint.every=0",
            "data.batch_size=8",
        ],
    )
    stop_then_resume(comm, n, cfg, shared_tmp)

    def check() -> list[str]:
        (log,) = read_apply_logs(shared_tmp / cfg.run.name, n, 1)
        bad = []
        keys = sorted(zip(log["worker"].tolist(), log["clock"].tolist(), strict=True))
        want = sorted((i, c) for i in range(w) for c in range(1, 24 // tau + 1))
        if keys != want:
            bad.append(f"pushes logged (worker, clock): missing {sorted(set(want) - set(keys))[:6]}")
        stale = log[log["version"] != log["version_read"]]
        if len(stale):
            bad.append(
                f"stale rows in a staleness 0 run: {stale[['step', 'worker', 'version_read', 'version']].tolist()}"
            )
        return bad

    check_on_rank_0(comm, check)


@pytest.mark.parametrize("push", ["gradient", "delta"])
def test_an_asynchronous_run_stopped_and_resumed_applies_every_push_once(
    comm: MPI.Comm, shared_tmp: Path, push: str
) -> None:
    """No staleness bound, 2 workers, 1 server, stopped by a stop file and resumed: the
    counts at the end (ps_counts) say each worker pushed steps / tau updates in the
    whole run, both segments, and the server applied exactly those; the workers end
    with the servers' model."""
    n, servers, tau = 3, 1, 3 if push == "delta" else 1
    cfg = load_config(
        None,
        [
            f"run.name=counts-{push}",
            "algorithm.name=async_ps",
            f"algorithm.push={push}",
            f"algorithm.tau={tau}",
            "run.steps=24",
            "run.eval_every=12",
            "checkpoint.every=0",
            "data.batch_size=8",
        ],
    )
    _, res = stop_then_resume(comm, n, cfg, shared_tmp)
    model, workers = gather_model(comm, res, n, servers)

    def check() -> list[str]:
        import h5py

        from mpiml.io.runfile import rank_file_name

        with h5py.File(shared_tmp / cfg.run.name / rank_file_name(n - 1), "r") as f:
            counts = f["ps_counts"][()]
        bad = []
        want = [(i, 24 // tau, 24 // tau) for i in range(n - servers)]
        got = sorted(
            zip(counts["worker"].tolist(), counts["pushed"].tolist(), counts["applied"].tolist(), strict=True)
        )
        if got != want:
            bad.append(f"ps_counts (worker, pushed, applied) {got}, expected {want}")
        if not all(np.array_equal(x, model) for x in workers):
            bad.append("a worker's final model != the servers'")
        return bad

    check_on_rank_0(comm, check)
