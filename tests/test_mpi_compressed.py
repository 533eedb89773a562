"""Compressed collectives on real ranks: the AllReduce of variable-length payloads
(sizes, then Allgatherv) and compressed gossip (Algorithm 2 / DCD copies)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.compress import ErrorFeedback, build_codec
from mpiml.protocols import AllReduce, CompressedAllReduce, CompressedGossip
from mpiml.testing import assert_all
from mpiml.topology import build_schedule
from mpiml.trace import Trace

pytestmark = pytest.mark.mpi(min_size=2)

# How long the main thread sleeps while an operation is in flight: a working progress
# thread needs milliseconds; the sleep ends as soon as the operation is complete.
THREAD_PATIENCE = 30.0
NONE_SLEEP = 0.5  # the control: 'none' cannot complete anything before finish


def _x(comm: MPI.Comm, d: int, dtype: str, integer: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, comm.Get_rank()])
    if integer:  # every partial sum exact: any association gives the same bits
        return rng.integers(-1000, 1000, d).astype(dtype)
    return (rng.standard_normal(d) * 10.0 ** rng.integers(-3, 3, d)).astype(dtype)


def _rank_order_mean(xs: list[np.ndarray], op: str) -> np.ndarray:
    acc = xs[0].copy()
    for y in xs[1:]:
        acc += y
    if op == "mean" and len(xs) > 1:
        acc /= len(xs)
    return acc


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("op", ["mean", "sum"])
def test_identity_codec_equals_plain_allreduce_bit_for_bit(comm: MPI.Comm, dtype: str, op: str) -> None:
    d = 10_007
    n = comm.Get_size()
    for integer in (True, False):
        x = _x(comm, d, dtype, integer)
        plain = AllReduce(comm, d, dtype, op=op).run(x).copy()
        comp = CompressedAllReduce(comm, d, dtype, build_codec("identity"), op=op).run(x)
        ref = _rank_order_mean(comm.allgather(x), op)
        assert_all(comm, np.array_equal(comp, ref), "compressed identity != rank-order reference")
        if integer or n == 2:  # where the MPI's association cannot matter
            assert_all(comm, np.array_equal(comp, plain), f"identity != MPI_Allreduce (integer={integer})")
        else:
            err = float(np.max(np.abs(comp - plain)))
            assert_all(comm, err <= 1e-5 * float(np.max(np.abs(plain))), f"identity vs MPI: {err:.3e}")


@pytest.mark.parametrize("codec", ["qsgd", "qsgd_fixed", "topk", "randk", "sign", "fp16", "bf16"])
def test_every_rank_gets_the_rank_order_mean_of_decoded_payloads(comm: MPI.Comm, codec: str) -> None:
    d = 5_003
    rank, n = comm.Get_rank(), comm.Get_size()
    x = _x(comm, d, "float32", seed=3)
    c = build_codec(codec)
    c.reseed([7, rank])
    ar = CompressedAllReduce(comm, d, "float32", c)
    got = ar.run(x).copy()
    # what each rank sent, re-encoded here with its seed: the same payloads, decoded in rank order
    xs = comm.allgather(x)
    dec = []
    for j in range(n):
        cj = build_codec(codec)
        cj.reseed([7, j])
        dec.append(cj.decode(cj.encode(xs[j])))
    ref = _rank_order_mean(dec, "mean")
    assert_all(comm, np.array_equal(got, ref), f"{codec}: result differs from the rank-order reference")
    assert_all(comm, np.array_equal(got, comm.bcast(got, root=0)), f"{codec}: ranks disagree")
    lens = comm.allgather(int(ar.payload(rank).size))
    assert_all(comm, list(ar._lens) == lens, "lengths exchanged wrongly")


@pytest.mark.parametrize("progress", ["test", "thread", "none"])
def test_split_phase_matches_blocking_and_allows_changing_x(comm: MPI.Comm, progress: str) -> None:
    d = 200_003
    x = _x(comm, d, "float32", seed=5)
    c1, c2 = build_codec("qsgd"), build_codec("qsgd")
    blocking = CompressedAllReduce(comm, d, "float32", c1)
    split = CompressedAllReduce(comm, d, "float32", c2, progress=progress)
    for rnd in range(3):  # the byte buffer is reused across rounds
        c1.reseed([rnd, comm.Get_rank()])
        c2.reseed([rnd, comm.Get_rank()])
        want = blocking.run(x).copy()
        y = x.copy()
        split.start(y, rnd)
        y[:] = np.nan  # the payload is a snapshot: x may change at once
        while progress == "test" and not split.test():
            pass
        got = split.finish()
        assert_all(comm, np.array_equal(got, want), f"round {rnd}: split-phase != blocking")
        x = x * 0.5 + 1.0
    with pytest.raises(RuntimeError, match="without start"):
        split.finish()


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


@pytest.mark.parametrize("progress", ["thread", "none"])
def test_progress_thread_drives_both_phases_while_the_rank_sleeps(comm: MPI.Comm, progress: str) -> None:
    """With ``progress="thread"`` the thread alone takes the operation through both of
    its steps while the main thread only sleeps (no MPI call): it receives the lengths,
    posts the Allgatherv of the payloads (phase 1) and completes it, so ``test()`` says
    done and the traced ``compressed_allreduce`` span ends before ``finish`` is called. With
    'none', the control, the lengths are not even consumed (phase 0) until ``finish``.
    Payload lengths differ by rank (qsgd), and the result must equal the blocking one.
    Fails if the progress thread is never started, never tests, or stops after the
    lengths."""
    d = 200_003
    tr = Trace()
    c1, c2 = build_codec("qsgd"), build_codec("qsgd")
    blocking = CompressedAllReduce(comm, d, "float32", c1)
    split = CompressedAllReduce(comm, d, "float32", c2, trace=tr, progress=progress)
    for rnd in range(2):  # one thread per operation: the second must be driven too
        x = _x(comm, d, "float32", seed=20 + rnd)
        c1.reseed([rnd, comm.Get_rank()])
        c2.reseed([rnd, comm.Get_rank()])
        want = blocking.run(x).copy()
        comm.Barrier()  # every rank posts its length at about the same time
        split.start(x, rnd)
        seen = _sleep_until(split.test, THREAD_PATIENCE if progress == "thread" else NONE_SLEEP)
        phase = split._phase
        finish_called = tr.now()
        got = split.finish()
        rows = tr.take()
        span = rows[rows["kind"] == b"compressed_allreduce"]
        ended_early = len(span) == 1 and bool(span["t_end"][0] < finish_called)
        state = f"test() {seen}, phase {phase}, span {span}"
        if progress == "thread":
            ok = seen and phase == 1 and ended_early
            what = f"round {rnd}: not complete before finish ({state})"
        else:
            ok = not seen and phase == 0 and len(span) == 1 and not ended_early
            what = f"round {rnd}: 'none' progressed before finish ({state})"
        assert_all(comm, ok, what)
        assert_all(comm, np.array_equal(got, want), f"round {rnd}: split-phase != blocking")


def test_start_twice_is_refused_before_the_codec_moves(comm: MPI.Comm) -> None:
    d = 1000
    ef = ErrorFeedback(build_codec("topk", ratio=0.1))
    ar = CompressedAllReduce(comm, d, "float64", ef)
    x = _x(comm, d, "float64")
    ar.start(x)
    residual = ef.residual.copy()
    with pytest.raises(RuntimeError, match="still in flight"):
        ar.start(2.0 * x)
    assert_all(
        comm, np.array_equal(ef.residual, residual), "a refused start moved the error-feedback residual"
    )
    ar.finish()


def _gossip_setup(comm: MPI.Comm, codec: str, topology: str, d: int):  # type: ignore[no-untyped-def]
    sched = build_schedule(topology, comm.Get_size())
    x0 = np.random.default_rng(11).standard_normal(d)  # the same on every rank (Alg. 2's input)
    c = build_codec(codec)
    return sched, x0, c, CompressedGossip(comm, x0, sched, c)


@pytest.mark.parametrize("topology", ["ring", "complete", "star"])
def test_dcd_copies_stay_equal_to_the_neighbours_own_models(comm: MPI.Comm, topology: str) -> None:
    rank, d = comm.Get_rank(), 3_001
    sched, x0, c, g = _gossip_setup(comm, "qsgd", topology, d)
    rng = np.random.default_rng([1, rank])
    x = x0.copy()
    for r in range(5):
        x = x + 0.1 * rng.standard_normal(d)  # local progress
        c.reseed([r, rank])
        g.start(x, r)
        x = g.finish().copy()
        owns = comm.allgather(g.own)
        bad = [j for i, j in enumerate(g.peers) if not np.array_equal(g.copies[i], owns[j])]
        assert_all(comm, not bad, f"round {r}: rank {rank}'s copies of {bad} differ from their own models")
        assert_all(comm, np.array_equal(x, g.own), "the rank does not continue from x~^(m)")


def test_dcd_with_identity_is_gossip_of_the_anchors_plus_local_progress(comm: MPI.Comm) -> None:
    rank, n, d = comm.Get_rank(), comm.Get_size(), 2_000
    sched, x0, c, g = _gossip_setup(comm, "identity", "ring", d)
    W = np.zeros((n, n))
    top = sched.at(0)
    for i in range(n):
        W[i, i] = top.self_weight(i)
        for j, w in top.weights_from(i).items():
            W[i, j] = w
    anchors = np.tile(x0, (n, 1))
    rng = np.random.default_rng([2, rank])
    for r in range(4):
        x = g.own + rng.standard_normal(d)
        progress = np.array(comm.allgather(x - g.own))
        g.start(x, r)
        new = g.finish()
        anchors = W @ anchors + progress  # x~_{n+1} = W x~_n + (x_K - x_0), exactly when Q = id
        err = float(np.max(np.abs(new - anchors[rank])))
        assert_all(comm, err <= 1e-12 * float(np.max(np.abs(anchors))), f"round {r}: {err:.3e}")


def test_dcd_refuses_a_time_varying_topology(comm: MPI.Comm) -> None:
    if comm.Get_size() < 4:
        pytest.skip("one-peer exponential varies only from 4 ranks")
    sched = build_schedule("one_peer_exponential", comm.Get_size())
    with pytest.raises(ValueError, match="static topology"):
        CompressedGossip(comm, np.zeros(10), sched, build_codec("qsgd"))
