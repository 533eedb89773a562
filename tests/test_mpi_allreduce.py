"""AllReduce protocol on real ranks: sums, split-phase, progress."""

from __future__ import annotations

import time

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.protocols import AllReduce
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=2)


def _inputs(comm: MPI.Comm, size: int, dtype: str) -> list[np.ndarray]:
    """Every rank's input, computable on every rank: rank r's is seeded by r."""
    return [np.random.default_rng(r).standard_normal(size).astype(dtype) for r in range(comm.Get_size())]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [0, 1, 7, 1001, 16 * 2**20])
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
    from mpiml.io.trace import Trace

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
