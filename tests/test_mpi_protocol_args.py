"""Protocols refuse buffers they cannot carry, on every rank, before any communication.

Each case gives every rank the same bad argument: every rank must raise the same error
(its type and one line naming the argument and what is allowed) where the protocol is
built or before ``start`` posts anything, and a Barrier afterwards must still complete,
so no rank was left inside a collective. Positive controls show the same protocol
carrying a good buffer of the same kind.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.protocols import AllReduce, AsyncGossip, CompressedAllReduce, CompressedGossip, Gossip
from mpiml.testing import assert_all
from mpiml.topology import build_schedule

pytestmark = pytest.mark.mpi(min_size=2)


def refused_everywhere(comm: MPI.Comm, fn: Callable[[], Any], exc: type[Exception], *words: str) -> None:
    """``fn()`` raises ``exc`` on every rank, the same message everywhere, naming ``words``;
    then a Barrier completes (nobody is stuck in a collective)."""
    try:
        fn()
        got = ("nothing", "")
    except Exception as e:  # noqa: BLE001 - the type is the verdict
        got = (type(e).__name__, str(e))
    kind, msg = got
    ok = kind == exc.__name__ and all(w in msg for w in words)
    assert_all(comm, ok, f"expected {exc.__name__} naming {words}, got {kind}: {msg}")
    texts = comm.allgather(msg)
    assert_all(comm, len(set(texts)) == 1, f"ranks raised different messages: {texts}")
    comm.Barrier()


def ring(comm: MPI.Comm) -> Any:
    return build_schedule("ring", comm.Get_size())


# -- sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "8"])
def test_allreduce_refuses_a_size_that_is_not_a_positive_int(comm: MPI.Comm, size: Any) -> None:
    refused_everywhere(
        comm, lambda: AllReduce(comm, size, np.float64), ValueError, "allreduce", "size", repr(size)
    )


def test_gossip_refuses_a_zero_length_buffer(comm: MPI.Comm) -> None:
    """Before: Gossip posted its requests, then died inside SciPy's axpy."""
    refused_everywhere(comm, lambda: Gossip(comm, 0, np.float64, ring(comm)), ValueError, "gossip", "size")


def test_async_gossip_refuses_a_zero_length_buffer(comm: MPI.Comm) -> None:
    refused_everywhere(
        comm, lambda: AsyncGossip(comm, 0, np.float64, ring(comm)), ValueError, "async_gossip", "size"
    )


def test_compressed_protocols_refuse_a_zero_length_buffer(comm: MPI.Comm) -> None:
    """Inherited from Protocol.__init__: compressed AllReduce and gossip check the same way."""
    from mpiml.compress import build_codec

    codec = build_codec("identity")
    refused_everywhere(
        comm,
        lambda: CompressedAllReduce(comm, 0, np.float32, codec),
        ValueError,
        "compressed_allreduce",
        "size",
    )
    refused_everywhere(
        comm,
        lambda: CompressedGossip(comm, np.zeros(0, np.float32), ring(comm), codec),
        ValueError,
        "compressed_gossip",
        "size",
    )


def test_async_gossip_ranks_given_different_sizes_all_refuse(comm: MPI.Comm) -> None:
    """A size that differs between ranks is found when the windows are made (collective):
    every rank raises, naming each rank's size, and no window is made."""
    r = comm.Get_rank()
    refused_everywhere(
        comm,
        lambda: AsyncGossip(comm, 8 + (r == 1), np.float64, ring(comm)),
        ValueError,
        "same size",
        "rank 1: 9",
    )


# -- dtypes --------------------------------------------------------------------------


def test_a_mean_allreduce_refuses_integers_a_sum_carries_them(comm: MPI.Comm) -> None:
    """Before: int64 mean communicated, then failed in the in-place division."""
    refused_everywhere(
        comm,
        lambda: AllReduce(comm, 8, np.int64, op="mean"),
        TypeError,
        "allreduce",
        "dtype",
        "float64",
        "int64",
    )
    n, r = comm.Get_size(), comm.Get_rank()
    got = AllReduce(comm, 8, np.int64, op="sum").run(np.full(8, r + 1, dtype=np.int64))
    assert_all(comm, bool(np.all(got == n * (n + 1) // 2)), f"int64 sum gave {got}")


@pytest.mark.parametrize("dtype", [np.bool_, np.complex128, np.dtype(">f8"), "not-a-dtype", object])
def test_protocols_refuse_dtypes_they_cannot_carry(comm: MPI.Comm, dtype: Any) -> None:
    refused_everywhere(comm, lambda: AllReduce(comm, 8, dtype, op="sum"), TypeError, "allreduce", "dtype")
    refused_everywhere(comm, lambda: Gossip(comm, 8, dtype, ring(comm)), TypeError, "gossip", "dtype")
    refused_everywhere(
        comm, lambda: AsyncGossip(comm, 8, dtype, ring(comm)), TypeError, "async_gossip", "dtype"
    )


def test_gossip_refuses_integers(comm: MPI.Comm) -> None:
    refused_everywhere(
        comm, lambda: Gossip(comm, 8, np.int32, ring(comm)), TypeError, "gossip", "dtype", "float32"
    )


def test_async_gossip_refuses_float16(comm: MPI.Comm) -> None:
    """MPICH's one-sided float16 SUM is wrong (5 + 1 + 1 gave -1.25): refused, while
    float16 AllReduce and Gossip (two-sided) carry it."""
    refused_everywhere(
        comm,
        lambda: AsyncGossip(comm, 8, np.float16, ring(comm)),
        TypeError,
        "async_gossip",
        "float32, float64",
    )
    n, r = comm.Get_size(), comm.Get_rank()
    got = AllReduce(comm, 4, np.float16, op="sum").run(np.full(4, r + 1, dtype=np.float16))
    assert_all(comm, bool(np.all(got == n * (n + 1) // 2)), f"float16 sum gave {got}")
    mixed = Gossip(comm, 4, np.float16, ring(comm)).run(np.full(4, 2.0, dtype=np.float16))
    assert_all(comm, bool(np.all(np.abs(mixed - 2.0) <= 1e-2)), f"float16 gossip of 2.0 gave {mixed}")


# -- buffers given to start / run ------------------------------------------------------


def test_a_strided_buffer_is_refused_before_anything_is_posted(comm: MPI.Comm) -> None:
    base = np.arange(16, dtype=np.float64)
    strided = base[::2]  # 8 values of the right dtype and shape, not contiguous
    ar = AllReduce(comm, 8, np.float64, op="sum")
    refused_everywhere(comm, lambda: ar.run(strided), ValueError, "allreduce", "contiguous")
    refused_everywhere(comm, lambda: ar.start(strided), ValueError, "allreduce", "contiguous")
    assert_all(comm, not ar.in_flight, "a refused start left the operation in flight")
    g = Gossip(comm, 8, np.float64, ring(comm))
    refused_everywhere(comm, lambda: g.start(strided), ValueError, "gossip", "contiguous")
    assert_all(comm, not g.in_flight, "a refused start left the round in flight")
    ag = AsyncGossip(comm, 8, np.float64, ring(comm))
    refused_everywhere(comm, lambda: ag.step(strided, 0), ValueError, "async_gossip", "contiguous")
    ag.close(np.ascontiguousarray(strided), 0)
    # the same protocols then carry a good buffer
    n = comm.Get_size()
    got = ar.run(np.ascontiguousarray(strided))
    assert_all(comm, bool(np.all(got == n * strided)), f"sum after a refusal gave {got}")


def test_a_buffer_of_the_wrong_size_or_dtype_is_refused(comm: MPI.Comm) -> None:
    ar = AllReduce(comm, 8, np.float64)
    refused_everywhere(comm, lambda: ar.run(np.zeros(9)), ValueError, "allreduce", "8 float64")
    refused_everywhere(comm, lambda: ar.start(np.zeros(8, np.float32)), ValueError, "allreduce", "8 float64")
    refused_everywhere(comm, lambda: ar.run(np.zeros((2, 4))), ValueError, "allreduce", "flat")
    ag = AsyncGossip(comm, 8, np.float64, ring(comm))
    # a scalar or a size-1 z would broadcast silently into the pushed half
    refused_everywhere(comm, lambda: ag.push(np.zeros(1), 0), ValueError, "async_gossip", "8 float64")
    refused_everywhere(
        comm, lambda: ag.drain(np.zeros(8, np.float32), 0), ValueError, "async_gossip", "8 float64"
    )
    z = np.zeros(8)
    ag.close(z, 0)
    assert_all(comm, ag.w == 1.0 and not np.any(z), "a refused push or drain moved mass")


def test_difference_average_refuses_what_its_inner_average_cannot_carry(comm: MPI.Comm) -> None:
    from mpiml.protocols import DifferenceAverage

    ar = AllReduce(comm, 8, np.float64)
    g = Gossip(comm, 8, np.float64, ring(comm))
    refused_everywhere(comm, lambda: DifferenceAverage(g, np.zeros(8)), TypeError, "inner", "Gossip")  # type: ignore[arg-type]
    refused_everywhere(comm, lambda: DifferenceAverage(ar, np.zeros(16)[::2]), ValueError, "contiguous")
    refused_everywhere(comm, lambda: DifferenceAverage(ar, np.zeros(8, np.float32)), ValueError, "8 float64")
