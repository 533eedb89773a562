"""Running async_ps jobs inside an MPI test (tests/test_mpi_ps_*.py): on the first n
ranks of the launch, with one rank's serial checks failing every rank, and with the
workers' computation paced (held) without touching their communication."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

import mpiml.run.setup as run_setup
from mpiml.testing import assert_all
from mpiml.trainer import Result, train

__all__ = [
    "HOLD_TIMEOUT",
    "NULL",
    "check_on_rank_0",
    "gather_model",
    "on_ranks",
    "paced",
    "stop_then_resume",
    "train_on",
]

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test
HOLD_TIMEOUT = 60.0  # seconds a held worker waits for the other before the test fails


def on_ranks(comm: MPI.Comm, n: int, run: Callable[[MPI.Comm], Result]) -> Result | None:
    """``run`` on a communicator of comm's first n ranks (None on the others)."""
    rank = comm.Get_rank()
    sub = comm.Split(0 if rank < n else MPI.UNDEFINED, rank)
    if sub == MPI.COMM_NULL:
        return None
    try:
        return run(sub)
    finally:
        sub.Free()


def train_on(comm: MPI.Comm, n: int, cfg: Any, out: Path) -> Result | None:
    """Train ``cfg`` on comm's first n ranks (None on the others)."""
    return on_ranks(comm, n, lambda c: train(cfg, c, out=out, stream=NULL))


def check_on_rank_0(comm: MPI.Comm, check: Callable[[], list[str]]) -> None:
    """Run ``check`` (reads files, replays: serial work) on rank 0 only and fail on
    every rank with what it found (its complaints, or the exception it raised)."""
    verdict = None
    if comm.Get_rank() == 0:
        try:
            verdict = "; ".join(check())
        except Exception as exc:  # noqa: BLE001 - reported on every rank, not raised on one
            verdict = f"{type(exc).__name__}: {exc}"
    verdict = comm.bcast(verdict, root=0)
    assert_all(comm, not verdict, verdict or "")


def gather_model(comm: MPI.Comm, res: Result | None, n: int, servers: int) -> tuple[np.ndarray, list]:
    """(the servers' model: their shards in order, every worker's final parameters),
    the same on every rank of comm."""
    mine = res.params if res is not None else None
    got = comm.allgather(mine)
    workers = got[: n - servers]
    return np.concatenate(got[n - servers : n]), workers


@contextmanager
def paced(comm: MPI.Comm, folder: Path, hold: dict[int, int]) -> Iterator[None]:
    """Pace the workers' computation without touching their communication: worker 0
    marks the start of each of its gradient computations (a file ``w0-<k>``); worker i
    in ``hold`` = {i: k} waits, before its first one, until worker 0 has started its
    k-th (RuntimeError after HOLD_TIMEOUT: worker 0 was blocked by worker i)."""
    rank = comm.Get_rank()
    original = run_setup.job_model

    def build(*args: Any, **kw: Any) -> Any:
        model = original(*args, **kw)
        inner, calls = model.loss_and_grad, [0]

        def loss_and_grad(*a: Any, **k: Any) -> float:
            calls[0] += 1
            if rank == 0:
                (folder / f"w0-{calls[0]}").touch()
            elif calls[0] == 1 and rank in hold:
                want, t0 = folder / f"w0-{hold[rank]}", time.monotonic()
                while not want.exists():
                    if time.monotonic() - t0 > HOLD_TIMEOUT:
                        raise RuntimeError(f"worker {rank} held: worker 0 never started step {hold[rank]}")
                    time.sleep(0.002)
            return inner(*a, **k)

        model.loss_and_grad = loss_and_grad
        return model

    run_setup.job_model = build
    try:
        yield
    finally:
        run_setup.job_model = original


def stop_then_resume(comm: MPI.Comm, n: int, cfg: Any, folder: Path) -> tuple[int, Result | None]:
    """Train ``cfg`` on the first n ranks with a stop file (MPIML_STOP_FILE) present
    from the start, then --resume it (file gone) to the end: (the step every rank
    stopped at, checked to be one, the resumed run's result)."""
    stop = folder / "STOP"
    if comm.Get_rank() == 0:
        stop.touch()
    comm.Barrier()
    os.environ["MPIML_STOP_FILE"] = str(stop)
    try:
        first = train_on(comm, n, cfg, folder)
    finally:
        del os.environ["MPIML_STOP_FILE"]
    comm.Barrier()
    if comm.Get_rank() == 0:
        stop.unlink()
    comm.Barrier()
    at = comm.allgather(first.stopped_at if first is not None else None)[:n]
    ok = len(set(at)) == 1 and at[0] is not None and 0 < at[0] < cfg.run.steps
    assert_all(comm, ok, f"stopped at {at}")
    res = on_ranks(comm, n, lambda c: train(cfg, c, out=folder, resume=True, stream=NULL))
    return at[0], res
