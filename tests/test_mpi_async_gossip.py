"""Asynchronous push-sum gossip on real ranks: no hang, even when ranks stop at
different times; the sum of the models is preserved; the models reach the mean."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.config import load_config
from mpiml.protocols import AsyncGossip
from mpiml.testing import assert_all
from mpiml.topology import build_schedule
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test


@pytest.mark.parametrize("trial", range(12))
def test_sum_preserved_and_nobody_hangs(comm: MPI.Comm, trial: int) -> None:
    n, r, d = comm.Get_size(), comm.Get_rank(), 513
    rng = np.random.default_rng([trial, r])
    topology = ["ring", "complete", "exponential"][trial % 3]
    g = AsyncGossip(comm, d, np.float64, build_schedule(topology, n), seed=trial)
    z = rng.standard_normal(d)
    total0 = comm.allreduce(z)
    steps = int(rng.integers(5, 60))  # ranks stop at different times: early finishers must not block others
    for t in range(steps):
        g.step(z, t)
        if rng.random() < 0.3:
            time.sleep(float(rng.random()) * 2e-3)  # uneven pace
    g.close(z, steps)
    total = comm.allreduce(z * g.w)
    wsum = comm.allreduce(g.w)
    err = float(np.max(np.abs(total - total0)))
    assert_all(comm, err <= 1e-12 * float(np.max(np.abs(total0))) * steps, f"sum drifted by {err:.3e}")
    # halving is exact, but w + a_w of weights far apart in exponent rounds: n up to rounding
    assert_all(comm, abs(wsum - n) <= 1e-12 * n, f"weights sum to {wsum!r}, not {n}")


def test_models_converge_to_the_mean(comm: MPI.Comm) -> None:
    n, r, d = comm.Get_size(), comm.Get_rank(), 64
    g = AsyncGossip(comm, d, np.float64, build_schedule("ring", n), seed=5)
    z = np.random.default_rng([9, r]).standard_normal(d)
    mean = comm.allreduce(z) / n
    e0 = comm.allreduce(float(np.sum((z - mean) ** 2)))
    for t in range(300):
        g.step(z, t)
    g.close(z, 300)
    e = comm.allreduce(float(np.sum((z - mean) ** 2)))
    assert_all(comm, e <= 1e-6 * e0, f"consensus error {e:.3e} of {e0:.3e} after 300 exchanges per rank")


def test_async_gossip_trains_and_traces_exchanges(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(
        None,
        [
            "run.name=async",
            "algorithm.name=async_gossip",
            "algorithm.topology=ring",
            "run.steps=600",
            "checkpoint.every=0",
        ],
    )
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    assert_all(comm, res.accuracy >= 0.93, f"async_gossip: test accuracy {res.accuracy:.4f} < 0.93")
    problems = []
    if comm.Get_rank() == 0:
        import h5py

        with h5py.File(shared_tmp / "async" / "run.h5", "r") as f:
            for rr in range(comm.Get_size()):
                ex = f[f"ranks/{rr}/exchanges"][...]
                pushes = ex[ex["peer"] >= 0]
                drains = ex[(ex["peer"] < 0) & (ex["pushes"] > 0)]
                if len(pushes) != 600 or not len(drains):
                    problems.append(f"rank {rr}: {len(pushes)} pushes, {len(drains)} drains with mass")
    problems = comm.bcast(problems, root=0)
    assert_all(comm, not problems, "; ".join(problems))


def test_evaluation_does_not_synchronise_the_ranks(comm: MPI.Comm, shared_tmp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Rank 1 stops at step 5 until rank 0 has finished step 15, past its evaluation at
    step 10: possible only if evaluating an asynchronous run never makes rank 0 wait
    for rank 1 (a blocking evaluation would wait forever, and the test fail after 60 s)."""
    from mpiml.algorithms.gossip import AsyncGossipSGD

    marker = shared_tmp / "rank0-past-step-15"
    step = AsyncGossipSGD.step

    def gated(self, t: int) -> float:  # type: ignore[no-untyped-def]
        loss = step(self, t)
        rank = comm.Get_rank()
        if rank == 0 and t == 14:
            marker.touch()
        if rank == 1 and t == 5:
            deadline = time.monotonic() + 60.0
            while not marker.exists():
                comm.Iprobe()  # a slow rank still makes MPI calls (progress), it only does not step
                if time.monotonic() > deadline:
                    raise AssertionError("rank 0 never finished step 15: its evaluation waited for rank 1")
                time.sleep(0.01)
        return loss

    monkeypatch.setattr(AsyncGossipSGD, "step", gated)
    cfg = load_config(
        None,
        [
            "run.name=async-eval",
            "algorithm.name=async_gossip",
            "run.steps=40",
            "run.eval_every=10",
            "checkpoint.every=0",
        ],
    )
    res = train(cfg, comm, out=shared_tmp, stream=NULL)
    steps = None
    if comm.Get_rank() == 0:
        from mpiml.io import load_run

        steps = load_run(shared_tmp / "async-eval").metric("test_loss")[0].tolist()
    steps = comm.bcast(steps, root=0)
    assert_all(comm, steps == [10, 20, 30, 40], f"evaluations recorded at steps {steps}")
    assert_all(comm, np.isfinite(res.test_loss), "no final test loss")


def test_a_checkpoint_holds_all_the_mass(comm: MPI.Comm, shared_tmp, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Before a checkpoint the program quiesces: every push has landed and been drained,
    so no mass is left in a window, where a checkpoint would lose it."""
    from mpiml.algorithms.gossip import AsyncGossipSGD

    left: list[float] = []
    state_arrays = AsyncGossipSGD.state_arrays

    def recording(self):  # type: ignore[no-untyped-def]
        left.append(float(np.abs(self.gossip.acc_x).sum() + np.abs(self.gossip.acc_m).sum()))
        return state_arrays(self)

    monkeypatch.setattr(AsyncGossipSGD, "state_arrays", recording)
    cfg = load_config(
        None,
        [
            "run.name=async-ckpt",
            "algorithm.name=async_gossip",
            "run.steps=60",
            "checkpoint.every=10",
            "checkpoint.keep=10",
        ],
    )
    train(cfg, comm, out=shared_tmp, stream=NULL)
    assert_all(comm, len(left) == 6 and not any(left), f"mass left in the windows at checkpoints: {left}")


def test_an_async_evaluation_completes_while_the_ranks_go_on(comm: MPI.Comm, shared_tmp) -> None:  # type: ignore[no-untyped-def]
    """The driver polls an asynchronous evaluation after every step, so it completes
    soon after every rank has started it, not only when the next one begins. Steps of
    20 ms of (sleeping) compute keep the ranks within a few steps of each other: the
    evaluation after step 10 must be over before step 16 begins."""
    from mpiml.io import load_run

    cfg = load_config(
        None,
        [
            "run.name=async-poll",
            "algorithm.name=async_gossip",
            "model.name=timed",
            "model.params=1000",
            "model.compute_ms=20",
            "run.steps=30",
            "run.eval_every=10",
            "checkpoint.every=0",
        ],
    )
    train(cfg, comm, out=shared_tmp, stream=NULL)
    verdict = None
    if comm.Get_rank() == 0:
        ev = load_run(shared_tmp / "async-poll").events[0]
        eval_end = float(ev[(ev["kind"] == "eval") & (ev["step"] == 9)]["t_end"][0])
        step15 = float(ev[(ev["kind"] == "compute") & (ev["step"] == 15)]["t_start"][0])
        verdict = (
            eval_end < step15,
            f"evaluation of step 10 ended at {eval_end:.3f}s, step 16 began at {step15:.3f}s",
        )
    ok, msg = comm.bcast(verdict, root=0)
    assert_all(comm, ok, msg)


@pytest.mark.mpi(min_size=4)
@pytest.mark.parametrize("fast", [(0, 1), (0, 2)], ids=["neighbours", "apart"])
def test_extreme_skew_stays_finite_and_keeps_the_mass(comm: MPI.Comm, fast: tuple[int, int]) -> None:
    """Two ranks make 6000 exchanges while the others make one (in training: two ranks
    stopped for minutes). Halving the fast ranks' weights 6000 times underflows to 0.0
    (2^-1075) unless a rank never pushes weight it does not have: then z / w was NaN, and
    close() spread it to every rank. Every value stays finite, the weights still sum to
    n and the numerators to the initial sum; then balanced exchanges reach the mean."""
    n, r, d = comm.Get_size(), comm.Get_rank(), 32
    g = AsyncGossip(comm, d, np.float64, build_schedule("ring", n), seed=11)
    z = np.random.default_rng([17, r]).standard_normal(d) + 4.0 * r
    total0 = comm.allreduce(z)
    mean = total0 / n
    e0 = comm.allreduce(float(np.sum((z - mean) ** 2)))
    t = 0
    for _ in range(6000 if r in fast else 1):
        g.step(z, t)
        t += 1
    comm.Barrier()  # a slow rank waits here, serving the fast ranks' pushes (passive target)
    g.drain(z, t)
    finite = bool(np.all(np.isfinite(z))) and np.isfinite(g.w) and g.w > 0.0
    assert_all(comm, finite, f"after the skew: w = {g.w!r}, {int(np.sum(~np.isfinite(z)))} non-finite values")
    wsum = comm.allreduce(g.w)
    total = comm.allreduce(z * g.w)
    err = float(np.max(np.abs(total - total0)))
    assert_all(comm, abs(wsum - n) <= 1e-12 * n, f"weights sum to {wsum!r}, not {n}")
    assert_all(comm, err <= 1e-9 * float(np.max(np.abs(total0))), f"sum drifted by {err:.3e}")
    skipped = comm.allreduce(g.skipped)
    assert_all(comm, skipped > 0, "no push was skipped: the skew did not reach the weight floor")
    for _ in range(300):  # balanced exchanges after the skew (the test's barriers pace the ranks)
        g.step(z, t)
        t += 1
        comm.Barrier()
    g.close(z, t)
    e = comm.allreduce(float(np.sum((z - mean) ** 2)))
    wsum = comm.allreduce(g.w)
    assert_all(comm, bool(np.all(np.isfinite(z))) and np.isfinite(e), "non-finite model after close")
    assert_all(comm, abs(wsum - n) <= 1e-12 * n, f"weights sum to {wsum!r}, not {n} after close")
    assert_all(comm, e <= 1e-6 * e0, f"consensus error {e:.3e} of {e0:.3e} after the skew and 300 exchanges")
