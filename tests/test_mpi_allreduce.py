"""AllReduce protocol on real ranks: sums, split-phase, progress."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.protocols import AllReduce
from mpiml.testing import assert_all
from mpiml.trace import Trace

pytestmark = pytest.mark.mpi(min_size=2)

# How long the main thread sleeps while an operation is in flight. A working progress
# thread (it tests every 0.5 ms) completes one in milliseconds; the patience is only
# an upper bound for a loaded machine, and the sleep ends as soon as it is complete.
THREAD_PATIENCE = 30.0
# 'none' cannot complete anything before finish, however long the rank sleeps: the
# control needs no more than a sleep far longer than the thread needs.
NONE_SLEEP = 0.5


def _inputs(comm: MPI.Comm, size: int, dtype: str) -> list[np.ndarray]:
    """Every rank's input, computable on every rank: rank r's is seeded by r."""
    return [np.random.default_rng(r).standard_normal(size).astype(dtype) for r in range(comm.Get_size())]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [1, 7, 1001, 16 * 2**20])  # size 0 is refused: test_mpi_protocol_args.py
def test_allreduce_equals_numpy_sum(comm: MPI.Comm, size: int, dtype: str) -> None:
    if size > 2**20:
        xs = [
            np.full(size, r + 1, dtype=dtype) for r in range(comm.Get_size())
        ]  # 16M: exact sums, no RNG cost
    else:
        xs = _inputs(comm, size, dtype)
    ar = AllReduce(comm, size, dtype, op="sum")
    got = ar.run(xs[comm.Get_rank()].copy())
    want = np.sum(np.stack(xs).astype(np.float64), axis=0)
    # MPI sums in ``dtype`` in an order of its choosing: n-1 additions, each within
    # half an ulp of the running sum, bound ~ n * eps * sum|x|.
    eps = np.finfo(dtype).eps
    tol = comm.Get_size() * eps * np.sum(np.abs(np.stack(xs).astype(np.float64)), axis=0) + 1e-30
    ok = got.dtype == np.dtype(dtype) and got.shape == (size,) and bool(np.all(np.abs(got - want) <= tol))
    assert_all(comm, ok, f"size={size} dtype={dtype}: max error {np.max(np.abs(got - want), initial=0.0)}")


def test_mean_is_sum_over_n(comm: MPI.Comm) -> None:
    x = np.full(5, comm.Get_rank(), dtype=np.float64)
    got = AllReduce(comm, 5, np.float64, op="mean").run(x)
    n = comm.Get_size()
    assert_all(comm, np.array_equal(got, np.full(5, (n - 1) / 2)), f"{got}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_split_phase_equals_blocking(comm: MPI.Comm, dtype: str) -> None:
    x = _inputs(comm, 4099, dtype)[comm.Get_rank()]
    blocking = AllReduce(comm, x.size, dtype).run(x).copy()
    split = AllReduce(comm, x.size, dtype)
    split.start(x, step=3)
    split_result = split.finish()
    # the same MPI reduction over the same operands: bit for bit
    assert_all(comm, np.array_equal(split_result, blocking), "split-phase result differs from blocking")


def test_snapshot_lets_the_caller_modify_its_buffer(comm: MPI.Comm) -> None:
    x = np.full(1000, comm.Get_rank() + 1.0)
    ar = AllReduce(comm, x.size, np.float64, op="sum")
    ar.start(x, snapshot=True)
    x[:] = -1e9  # must not reach the result
    got = ar.finish()
    n = comm.Get_size()
    assert_all(comm, np.all(got == n * (n + 1) / 2), "snapshot not taken")


def test_test_progresses_to_completion_without_finish(comm: MPI.Comm) -> None:
    """While in flight, ``test()`` alone (between chunks of compute) completes the operation."""
    x = np.ones(2**20)
    ar = AllReduce(comm, x.size, np.float64, op="sum")
    ar.start(x)
    deadline = time.monotonic() + 60
    done = False
    a = np.random.default_rng(0).standard_normal((64, 64))
    while not done and time.monotonic() < deadline:
        a = np.tanh(a @ a)  # a chunk of compute
        done = ar.test()
    got = ar.finish()
    assert_all(comm, done and bool(np.all(got == comm.Get_size())), "test() did not complete the allreduce")


def test_start_twice_is_an_error_and_wrong_shape_is_named(comm: MPI.Comm) -> None:
    ar = AllReduce(comm, 8, np.float64)
    with pytest.raises(ValueError, match="8 float64"):
        ar.start(np.zeros(9))
    ar.start(np.zeros(8))
    with pytest.raises(RuntimeError, match="still in flight"):
        ar.start(np.zeros(8))
    ar.finish()


def test_traces_allreduce_and_wait(comm: MPI.Comm) -> None:
    from mpiml.trace import Trace

    tr = Trace()
    ar = AllReduce(comm, 100, np.float32, trace=tr)
    ar.run(np.zeros(100, np.float32), step=0)
    ar.start(np.zeros(100, np.float32), step=1)
    held = tr.take()  # rows from the start of an operation in flight are held back
    ar.finish(step=2)
    rows = tr.take()
    kinds = [k.decode() for k in rows["kind"]]
    ok = (
        [k.decode() for k in held["kind"]] == ["allreduce"]
        and kinds == ["iallreduce", "wait"]
        and list(rows["step"]) == [1, 2]
        and list(held["nbytes"]) + list(rows["nbytes"][:1]) == [400, 400]
        and tr.bytes_sent == 800
    )
    assert_all(comm, ok and bool(np.all(rows["t_end"] >= rows["t_start"])), f"{rows}")


def _sleep_until(done: Callable[[], bool], patience: float) -> bool:
    """Sleep in short naps, making no MPI call in this thread, until ``done()`` or
    ``patience`` seconds; whether it was done. ``done`` is a protocol's ``test``, which
    in the 'thread' and 'none' modes only reads what is known (no MPI call either)."""
    deadline = time.monotonic() + patience
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("size", [1, 2**20])
@pytest.mark.parametrize("progress", ["thread", "none"])
def test_progress_thread_completes_the_operation_while_the_rank_sleeps(
    comm: MPI.Comm, progress: str, size: int
) -> None:
    """With ``progress="thread"`` the operation completes while the main thread only
    sleeps (no MPI call): ``test()`` reports what the thread saw, and the traced
    ``iallreduce`` span ends before ``finish`` is called, for every operation (one
    thread each). With 'none', the control, the same checks see it complete only
    inside ``finish``. Fails if the progress thread is never started or never tests."""
    rank, n = comm.Get_rank(), comm.Get_size()
    tr = Trace()
    ar = AllReduce(comm, size, np.float64, op="sum", trace=tr, progress=progress)
    for rnd in range(2):
        x = np.full(size, rank + 1.0 + rnd)
        comm.Barrier()  # every rank posts its part at about the same time
        ar.start(x, step=rnd)
        seen = _sleep_until(ar.test, THREAD_PATIENCE if progress == "thread" else NONE_SLEEP)
        finish_called = tr.now()
        got = ar.finish()
        rows = tr.take()
        span = rows[rows["kind"] == b"iallreduce"]
        ended_early = len(span) == 1 and bool(span["t_end"][0] < finish_called)
        if progress == "thread":
            ok = seen and ended_early
            what = f"round {rnd}: not complete before finish (test() {seen}, span {span})"
        else:
            ok = not seen and len(span) == 1 and not ended_early
            what = f"round {rnd}: 'none' completed before finish (test() {seen}, span {span})"
        assert_all(comm, ok, what)
        want = n * (n + 1) / 2 + n * rnd
        assert_all(comm, bool(np.all(got == want)), f"round {rnd}: wrong sum")
