"""DifferenceAverage (PR-SGD's anchor, DaSGD's compressed reference) and codec seeding
inside a compressed protocol's start, on real ranks."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.compress import build_codec
from mpiml.protocols import AllReduce, CompressedAllReduce, DifferenceAverage
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=2)


def _xs(comm: MPI.Comm, d: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """This rank's x and every rank's (same generator per rank)."""
    xs = [np.random.default_rng([seed, j]).standard_normal(d) for j in range(comm.Get_size())]
    return xs[comm.Get_rank()].copy(), xs


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("split", [False, True])
def test_difference_average_is_the_papers_update_bit_for_bit(comm: MPI.Comm, sign: int, split: bool) -> None:
    """With the identity codec (payloads added in rank order) the result is exactly
    sign +1: r + mean_j (x_j - r)  (DaSGD), sign -1: r - mean_j (r - x_j)  (Algorithm 1)."""
    d, n = 37, comm.Get_size()
    r0 = np.random.default_rng(99).standard_normal(d)  # the same on every rank
    inner = CompressedAllReduce(comm, d, np.float64, build_codec("identity"), op="mean")
    avg = DifferenceAverage(inner, r0, sign=sign)
    for rnd in range(3):
        x, xs = _xs(comm, d, rnd)
        ref = avg.reference.copy()
        if split:
            avg.start(x, rnd)
            x[...] = np.nan  # the difference was taken at start: x may change at once
            got = avg.finish().copy()
        else:
            got = avg.run(x, rnd).copy()
        diffs = [(xj - ref) if sign > 0 else (ref - xj) for xj in xs]
        mean = diffs[0].copy()
        for g in diffs[1:]:
            mean += g
        mean /= n
        want = mean + ref if sign > 0 else ref - mean
        assert_all(comm, np.array_equal(got, want), f"round {rnd}: result != the serial update")
        assert_all(comm, np.array_equal(avg.reference, want), f"round {rnd}: the reference was not updated")


def test_difference_average_state_round_trips_and_refuses_bad_arguments(comm: MPI.Comm) -> None:
    d = 8
    inner = AllReduce(comm, d, np.float64, op="mean")
    avg = DifferenceAverage(inner, np.arange(d, dtype=np.float64), sign=-1)
    other = DifferenceAverage(AllReduce(comm, d, np.float64, op="mean"), np.zeros(d), sign=-1)
    other.load_state(avg.state_arrays())
    assert_all(comm, np.array_equal(other.reference, np.arange(d)), "reference not restored")
    with pytest.raises(ValueError, match="sign"):
        DifferenceAverage(inner, np.zeros(d), sign=2)
    with pytest.raises(ValueError, match="mean AllReduce"):
        DifferenceAverage(AllReduce(comm, d, np.float64, op="sum"), np.zeros(d))


def test_compressed_start_seeds_the_codec_from_stream_and_step(comm: MPI.Comm) -> None:
    """An algorithm cannot forget to seed: start reseeds the codec with (*stream, step)
    (or the round), whatever the codec's stream did before."""
    d, rank = 500, comm.Get_rank()
    x, _ = _xs(comm, d, 5)
    ar = CompressedAllReduce(comm, d, np.float64, build_codec("qsgd"), stream=(3, 7, rank))
    ar.run(x, 11)
    first = ar.payload(rank).copy()
    ar.codec.encode(x)  # move the codec's stream on
    ar.run(x, 11)
    again = ar.payload(rank).copy()
    ar.run(x, 12)
    later = ar.payload(rank).copy()
    ref = build_codec("qsgd")
    ref.reseed([3, 7, rank, 11])
    want = ref.encode(x)
    assert_all(comm, np.array_equal(first, again), "the same (stream, step) gave another payload")
    assert_all(comm, np.array_equal(first, want), "start did not seed the codec with (*stream, step)")
    assert_all(comm, not np.array_equal(first, later), "another step drew the same random numbers")
