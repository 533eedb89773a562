"""The parameter server's wire (:mod:`mpiml.protocols.ps_wire`, :mod:`mpiml.protocols.ps_server`):
the shard map, and malformed requests that must end the job with a clear message,
never a hang.

The robustness tests launch 2 ranks (rank 0 a worker, rank 1 a :class:`ShardServer`)
under a timeout that kills both, with a scenario in which the worker sends a crafted
request; the server must raise (``python -m mpi4py`` turns that into an abort of
the job) and the job must exit non-zero with the server's message on stderr.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.protocols.ps_wire import HEADER_BYTES, Message, shard_ranges
from mpiml.testing import python_command, run_ranks

TIMEOUT = 60.0  # seconds for one launched scenario: far more than it needs, far less than a hang


# ---- shard_ranges ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "servers"),
    [(d, s) for d in (1, 2, 3, 7, 10, 64, 1000, 1001, 12345) for s in (1, 2, 3, 4, 7) if s <= d],
)
def test_shard_ranges_cover_contiguously_balanced_first_ones_longer(d: int, servers: int) -> None:
    r = shard_ranges(d, servers)
    assert len(r) == servers
    assert r[0][0] == 0 and r[-1][1] == d
    assert all(a[1] == b[0] for a, b in zip(r, r[1:], strict=False))  # contiguous, no gap, no overlap
    sizes = [hi - lo for lo, hi in r]
    base, extra = divmod(d, servers)
    assert sizes == [base + 1] * extra + [base] * (servers - extra), sizes
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    # the same cut as numpy's array_split (the docstring's promise)
    assert [len(a) for a in np.array_split(np.arange(d), servers)] == sizes


def test_shard_ranges_literal_cuts() -> None:
    assert shard_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_ranges(9, 3) == [(0, 3), (3, 6), (6, 9)]
    assert shard_ranges(11, 4) == [(0, 3), (3, 6), (6, 9), (9, 11)]
    assert shard_ranges(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert shard_ranges(1, 1) == [(0, 1)]


@pytest.mark.parametrize(("d", "servers"), [(10, 0), (10, -1), (3, 4), (0, 1), (1, 2)])
def test_shard_ranges_refuses_empty_shards_and_no_server(d: int, servers: int) -> None:
    with pytest.raises(ValueError, match=rf"need 1 <= servers <= d \(got servers={servers}, d={d}\)"):
        shard_ranges(d, servers)


def test_message_views_share_one_buffer() -> None:
    m = Message(5, np.dtype(np.float32))
    assert m.raw.dtype == np.uint8 and m.raw.size == HEADER_BYTES + 20
    m.h[2] = 7
    m.f[8] = 0.5
    m.body[:] = np.arange(5)
    assert m.nbytes(True) == HEADER_BYTES + 20 and m.nbytes(False) == HEADER_BYTES
    assert m.raw[16:24].view(np.int64)[0] == 7 and m.raw[64:72].view(np.float64)[0] == 0.5
    assert np.array_equal(m.raw[HEADER_BYTES:].view(np.float32), np.arange(5))
    m.clear()
    assert not m.h.any() and np.array_equal(m.body, np.arange(5))  # clear() leaves the body


# ---- malformed requests: a clear error, a non-zero status, no hang ------------------

SCENARIO = r"""
import sys
import numpy as np
from mpi4py import MPI
from mpiml.protocols.ps import ShardClient
from mpiml.protocols.ps_server import ShardServer
from mpiml.protocols.ps_wire import DONE, HEADER_BYTES, PULL, PUSH, REQ, Message, shard_ranges

what = sys.argv[1]
comm = MPI.COMM_WORLD.Dup()
d = 8
if comm.Get_rank() == 1:  # the server of the one shard; worker: rank 0
    def apply(x, u, worker):
        x += u
    srv = ShardServer(comm, [0], np.zeros(d), apply, staleness=None)
    srv.serve(lambda step, stop: None)
    print("server: served to the end", flush=True)
else:
    client = ShardClient(comm, [1], shard_ranges(d, 1), np.float64)
    x, u = np.zeros(d), np.ones(d)
    client.request(PUSH | PULL, 1, u)  # one good exchange first
    client.wait(x)
    m = Message(d, np.dtype(np.float64))
    if what == "short_push":  # a push whose body is missing: the header alone
        m.h[0], m.h[2] = PUSH | PULL, 2
        comm.Send([m.raw[: m.nbytes(False)], MPI.BYTE], dest=1, tag=REQ)
    elif what == "short_header":  # not even a whole header
        m.h[0] = PULL
        comm.Send([m.raw[:40], MPI.BYTE], dest=1, tag=REQ)
    elif what == "long_pull":  # a pull that carries a body
        m.h[0], m.h[2] = PULL, 1
        comm.Send([m.raw, MPI.BYTE], dest=1, tag=REQ)
    elif what == "too_long":  # more bytes than the shard: the server's receive is truncated
        big = np.zeros(HEADER_BYTES + 8 * (d + 1), np.uint8)
        big[:8] = np.array([PUSH], np.int64).view(np.uint8)
        comm.Send([big, MPI.BYTE], dest=1, tag=REQ)
    elif what == "clock_skips":  # clock 3 after 1
        m.h[0], m.h[2] = PUSH | PULL, 3
        comm.Send([m.raw, MPI.BYTE], dest=1, tag=REQ)
    elif what == "clock_repeats":  # clock 1 again
        m.h[0], m.h[2] = PUSH | PULL, 1
        comm.Send([m.raw, MPI.BYTE], dest=1, tag=REQ)
    elif what == "claims_more":  # DONE says 2 pushes; the server applied 1
        client.pushed += 1
        client.request(DONE, 1)
        client.wait(x)
    elif what == "good":
        client.request(DONE, 1)
        client.wait(x)
        assert np.array_equal(x, u), x
        print("worker: final model ok", flush=True)
        sys.exit(0)
    # the worker waits for a reply that must never come: only the server's abort ends it
    comm.Recv([np.empty(1 << 10, np.uint8), MPI.BYTE], source=1)
"""


def _scenario(what: str):  # type: ignore[no-untyped-def]
    return run_ranks(2, python_command("-c", SCENARIO, what), TIMEOUT)


def test_the_scenario_harness_runs_a_good_exchange_to_the_end() -> None:
    """Control: without a malformed request the same script ends cleanly (so the
    failures below come from the crafted message, not from the harness)."""
    res = _scenario("good")
    assert not res.timed_out and res.returncode == 0, res.stderr[-3000:]
    assert "server: served to the end" in res.stdout and "worker: final model ok" in res.stdout


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("short_push", f"a request of {HEADER_BYTES} bytes from worker 0 (expected {HEADER_BYTES + 64}"),
        ("short_header", f"a request of 40 bytes from worker 0 (expected {HEADER_BYTES}"),
        ("long_pull", f"a request of {HEADER_BYTES + 64} bytes from worker 0 (expected {HEADER_BYTES}"),
        ("clock_skips", "worker 0 pushed clock 3 after 1 (out of order)"),
        ("clock_repeats", "worker 0 pushed clock 1 after 1 (out of order)"),
        (
            "claims_more",
            "LostUpdateError: parameter server: updates lost on this shard: worker 0 pushed 2, applied 1",
        ),
    ],
)
def test_a_malformed_request_ends_the_job_with_the_servers_message(what: str, message: str) -> None:
    res = _scenario(what)
    assert not res.timed_out, f"{what}: hung (killed after {TIMEOUT:.0f}s): {res.stderr[-3000:]}"
    assert res.returncode != 0, f"{what}: exit status 0: {res.stdout[-2000:]}"
    assert message in res.stderr, f"{what}: {res.stderr[-3000:]}"
    assert "RuntimeError" in res.stderr or "LostUpdateError" in res.stderr
    assert "served to the end" not in res.stdout


def test_a_request_longer_than_the_shard_is_named_like_a_short_one() -> None:
    res = _scenario("too_long")
    assert not res.timed_out and res.returncode != 0, res.stderr[-3000:]  # holds today: no hang
    assert "RuntimeError: parameter server: a request of" in res.stderr and "worker 0" in res.stderr, (
        res.stderr[-3000:]
    )
