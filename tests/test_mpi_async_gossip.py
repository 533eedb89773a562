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
