"""The parameter server's protocol under load, on real ranks, without training:
:class:`ShardClient` on the workers (ranks 0..W-1), :class:`ShardServer` on the last S
ranks, pushing as fast as they can at uneven paces.

What is checked (issue 12, "Tests"):

- no lost update: every server applied each worker's clocks 1..N exactly once
  (``ps_apply``), and its counts (``ps_counts``) say pushed == applied;
- no torn read: the servers' ``apply`` writes a known pattern, so a worker can check
  that every shard it pulls is one version, labelled with the version the reply says,
  and that the versions it sees never go backwards;
- the SSP bound s: every answered pull has ``clock - slowest <= s`` (``ps_pull``), the
  worker sees every other worker's clock >= its own - s in what it pulls, and the
  version staleness of every applied update is within the bound SSP implies;
- BSP (s = 0): every round's W pushes are added in worker order 0..W-1 (values whose
  float sum depends on the order) and applied as one update.

Run by hand: ``mpiexec -n 4 python -m mpi4py -m pytest --with-mpi tests/test_mpi_ps_protocol.py``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from mpiml.config import load_config
from mpiml.errors import ConfigError
from mpiml.protocols.ps import ShardClient
from mpiml.protocols.ps_server import ShardServer
from mpiml.protocols.ps_wire import DONE, PULL, PUSH, shard_ranges
from mpiml.testing import assert_all
from mpiml.trace import Trace
from mpiml.trainer import train

pytestmark = pytest.mark.mpi(min_size=2)
RANK_COUNTS = (2, 3, 4)

NULL = open("/dev/null", "w")  # noqa: SIM115 - progress output of the runs under test

# The pattern. Element j (global index) of the model holds, exactly in float64,
#     version * V + applied[j % W] * A + j
# where version = updates applied to its shard and applied[w] = worker w's pushes applied
# to it. A worker's push is the constant vector sig(w, c) = w * A + c.
V, A = float(2**32), float(2**16)


def _sig(worker: int, clock: int) -> float:
    return worker * A + clock


def _decode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(version, applied, global index) of every element of a pulled shard."""
    xi = x.astype(np.int64)
    return xi >> 32, (xi >> 16) & 0xFFFF, xi & 0xFFFF


def _roles(comm: MPI.Comm, servers: int) -> tuple[list[int], list[int]]:
    n = comm.Get_size()
    if servers >= n:
        pytest.skip(f"{servers} server(s) need at least {servers + 1} ranks (this run has {n})")
    return list(range(n - servers)), list(range(n - servers, n))


def _pace(worker: int, step: int, rng: np.random.Generator) -> None:
    """Uneven paces: worker 0 runs flat out, worker 1 sleeps, worker 2 busy-works, in bursts."""
    if worker == 0:
        return
    if worker % 2 == 1:
        if rng.random() < 0.5:
            time.sleep(float(rng.random()) * 1e-3 * worker)
    else:
        t_end = time.perf_counter() + float(rng.random()) * 1e-3
        while time.perf_counter() < t_end:
            pass


@contextmanager
def _or_abort() -> Iterator[None]:
    """An exception inside the protocol (the server's LostUpdateError, a worker's
    RuntimeError) aborts the job: the other ranks are blocked on it, and a test
    failure caught by pytest would leave them waiting until the timeout."""
    try:
        yield
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)


def _bound(workers: int, s: int) -> int:
    """The most version staleness SSP allows, see test_load_no_lost_update_no_torn_read."""
    return (workers - 1) * (2 * s + 1)


class PatternServer:
    """A server's apply that writes the pattern and checks every push it gets."""

    def __init__(self, lo: int, hi: int, workers: int) -> None:
        self.lo, self.hi, self.w = lo, hi, workers
        self.idx = np.arange(lo, hi, dtype=np.float64)
        self.version = 0
        self.applied = np.zeros(workers, dtype=np.int64)
        self.problems: list[str] = []
        self.x = self.idx.copy()  # version 0, nothing applied

    def apply(self, x: np.ndarray, u: np.ndarray, worker: int) -> None:
        if not (u == u[0]).all():
            self.problems.append(f"a torn push from worker {worker}: {np.unique(u)[:4]}")
        w, c = divmod(int(u[0]), int(A))
        if w != worker or c != self.applied[w] + 1:
            self.problems.append(f"apply(worker={worker}) got the push of worker {w}, clock {c}")
            return
        self.version += 1
        self.applied[w] = c
        x[...] = self.version * V + self.applied[np.arange(self.lo, self.hi) % self.w] * A + self.idx


@pytest.mark.parametrize("servers", [1, 2, 3])
@pytest.mark.parametrize("staleness", [None, 1, 3])
def test_load_no_lost_update_no_torn_read(comm: MPI.Comm, servers: int, staleness: int | None) -> None:
    """Every worker pushes as fast as its pace lets it; the servers write the pattern.

    The version staleness bound under SSP s with W workers, per shard: worker i's push
    of clock c was computed from the model of its pull at clock c-1 (answered once every
    worker's clock on that shard was >= c-1-s). Between that read and the apply of push
    c, worker i applied nothing (its push c is its next), and another worker j:
    at the read, j had >= c-1-s pushes applied; for j's push c' to be applied, j's pull
    at clock c'-1 must have been answered by every server, this one included, so this
    server saw i's clock >= c'-1-s; i's clock is at most c-1 before its push c is
    applied, so c' <= c+s. Hence j contributed at most (c+s) - (c-1-s) = 2s+1 updates,
    and staleness = version - version_read <= (W-1)(2s+1).
    """
    workers, srv_ranks = _roles(comm, servers)
    r, w = comm.Get_rank(), len(workers)
    d = 61  # not a multiple of 2 or 3: the first shards are one longer
    ranges = shard_ranges(d, servers)
    # fully asynchronous: workers stop at different clocks; under SSP they must push alike
    steps = [120 + (37 * i if staleness is None else 0) for i in range(w)]
    problems: list[str] = []
    if r in srv_ranks:
        s = srv_ranks.index(r)
        lo, hi = ranges[s]
        pat = PatternServer(lo, hi, w)
        trace = Trace(enabled=False)
        srv = ShardServer(comm, workers, pat.x, pat.apply, staleness=staleness, trace=trace)
        with _or_abort():
            finished = srv.serve(lambda step, stop: problems.append(f"quiesce({step}, {stop}) never asked"))
        problems += pat.problems
        tabs = trace.take_tables()
        ap, pl, ct = tabs["ps_apply"], tabs["ps_pull"], tabs["ps_counts"]
        if not finished:
            problems.append("serve() returned False")
        for i in range(w):
            clocks = np.sort(ap["clock"][ap["worker"] == i])
            if not np.array_equal(clocks, np.arange(1, steps[i] + 1)):
                problems.append(f"shard {s}: worker {i}'s applied clocks are not 1..{steps[i]} once each")
        if not np.array_equal(ap["version"], np.arange(len(ap))):
            problems.append(f"shard {s}: versions applied to are not 0, 1, 2, ...")
        if not (np.array_equal(ct["pushed"], steps) and np.array_equal(ct["applied"], steps)):
            problems.append(f"shard {s}: counts {ct.tolist()} (pushed {steps})")
        st = ap["version"] - ap["version_read"]
        if (st < 0).any():
            problems.append(f"shard {s}: negative staleness {st.min()}")
        if staleness is not None:
            if (pl["clock"] - pl["slowest"] > staleness).any():
                problems.append(
                    f"shard {s}: a pull answered {int((pl['step'] - pl['slowest']).max())} clocks ahead"
                )
            if st.max() > _bound(w, staleness):
                problems.append(f"shard {s}: staleness {st.max()} > (W-1)(2s+1) = {_bound(w, staleness)}")
        if len(pl) != sum(steps):
            problems.append(f"shard {s}: {len(pl)} pulls answered, {sum(steps)} made")
        if pat.version != sum(steps) or srv.version != sum(steps):
            problems.append(f"shard {s}: version {srv.version} / {pat.version}, {sum(steps)} pushes")
    else:
        i = workers.index(r)
        rng = np.random.default_rng([11, i, servers])
        client = ShardClient(comm, srv_ranks, ranges, np.dtype(np.float64), first=i == 0)
        x, u = np.zeros(d), np.zeros(d)
        seen_v = np.zeros(servers, dtype=np.int64)
        seen_a = np.zeros((servers, w), dtype=np.int64)
        for c in range(1, steps[i] + 1):
            _pace(i, c, rng)
            u[:] = _sig(i, c)
            with _or_abort():
                client.request(PUSH | PULL, c, u)
                client.wait(x)
            for s, (lo, hi) in enumerate(ranges):
                ver, applied, idx = _decode(x[lo:hi])
                a = np.array([applied[(np.arange(lo, hi) % w) == k][0] for k in range(w)])
                if not np.array_equal(idx, np.arange(lo, hi)):
                    problems.append(f"clock {c}, shard {s}: elements out of place")
                if not (ver == ver[0]).all():
                    problems.append(f"clock {c}, shard {s}: a torn read, versions {np.unique(ver)}")
                elif ver[0] != client.versions[s]:
                    problems.append(
                        f"clock {c}, shard {s}: holds version {ver[0]}, reply says {client.versions[s]}"
                    )
                if not all((applied[(np.arange(lo, hi) % w) == k] == a[k]).all() for k in range(w)):
                    problems.append(f"clock {c}, shard {s}: a torn read (one worker's count differs)")
                if a.sum() != ver[0]:
                    problems.append(f"clock {c}, shard {s}: counts {a} do not add up to version {ver[0]}")
                if a[i] != c:
                    problems.append(
                        f"clock {c}, shard {s}: my own pushes applied {a[i]} (not reading my writes)"
                    )
                if ver[0] < seen_v[s] or (a < seen_a[s]).any():
                    problems.append(f"clock {c}, shard {s}: went backwards ({seen_v[s]} -> {ver[0]})")
                if staleness is not None and a.min() < c - staleness:
                    problems.append(
                        f"clock {c}, shard {s}: pulled with a worker at clock {a.min()} (s={staleness})"
                    )
                seen_v[s], seen_a[s] = ver[0], a
        with _or_abort():
            client.request(DONE, steps[i])
            client.wait(x)  # FINAL: the servers' last model
        for s, (lo, hi) in enumerate(ranges):
            ver, applied, _ = _decode(x[lo:hi])
            if not (ver == sum(steps)).all() or not (applied == np.array(steps)[np.arange(lo, hi) % w]).all():
                problems.append(f"final shard {s}: version {np.unique(ver)}, not {sum(steps)}")
    assert_all(comm, not problems, "; ".join(problems[:5]))


def _bsp_update(worker: int, clock: int, d: int) -> np.ndarray:
    """Worker ``worker``'s push of ``clock``: magnitudes 1e-8..1e8 with random signs, so
    the float sum of W >= 3 of them depends on the order of the additions."""
    rng = np.random.default_rng([worker, clock, 5])
    return rng.choice([-1.0, 1.0], d) * 10.0 ** rng.uniform(-8, 8, d)


def _in_order(vs: list[np.ndarray]) -> np.ndarray:
    acc = vs[0].copy()
    for v in vs[1:]:
        acc += v
    return acc


def test_bsp_order_sensitive_values_are_order_sensitive() -> None:
    """The check below means something: with 3 workers, another order of the same
    additions gives a different sum (serial)."""
    vs = [_bsp_update(i, 1, 61) for i in range(3)]
    assert not np.array_equal(_in_order(vs), _in_order(vs[::-1]))
    assert not np.array_equal(_in_order(vs), _in_order([vs[2], vs[0], vs[1]]))


@pytest.mark.parametrize("servers", [1, 2])
def test_bsp_sums_each_round_in_worker_order(comm: MPI.Comm, servers: int) -> None:
    """s = 0: each clock's W pushes, added in worker order 0..W-1, are one update
    (apply gets worker -1); every pull at clock c holds exactly c rounds; staleness 0.
    The order matters from W = 3 workers (4 ranks, S = 1): float addition of two
    values commutes."""
    workers, srv_ranks = _roles(comm, servers)
    r, w, d, steps = comm.Get_rank(), len(workers), 61, 40
    ranges = shard_ranges(d, servers)
    expected, model = [np.zeros(d)], np.zeros(d)  # the model after each round, in worker order
    for c in range(1, steps + 1):
        model = model + _in_order([_bsp_update(i, c, d) for i in range(w)])
        expected.append(model)
    problems: list[str] = []
    if r in srv_ranks:
        s = srv_ranks.index(r)
        lo, hi = ranges[s]
        rounds = [0]

        def apply(x: np.ndarray, u: np.ndarray, worker: int) -> None:
            rounds[0] += 1
            c = rounds[0]
            want = _in_order([_bsp_update(i, c, d)[lo:hi] for i in range(w)])
            if worker != -1 or not np.array_equal(u, want):
                problems.append(f"round {c}: apply(worker={worker}) got a sum not in worker order")
            x += u

        trace = Trace(enabled=False)
        srv = ShardServer(comm, workers, np.zeros(hi - lo), apply, staleness=0, trace=trace)
        with _or_abort():
            srv.serve(lambda step, stop: None)
        tabs = trace.take_tables()
        ap, pl = tabs["ps_apply"], tabs["ps_pull"]
        if rounds[0] != steps or srv.version != steps:
            problems.append(f"{rounds[0]} rounds applied, version {srv.version}, not {steps}")
        if len(ap) != w * steps or (ap["version"] != ap["version_read"]).any():
            problems.append("BSP: an update applied to another version than it was computed from")
        if (pl["clock"] != pl["slowest"]).any():
            problems.append("BSP: a pull answered before every worker reached its clock")
        if not np.array_equal(srv.x, expected[-1][lo:hi]):
            problems.append("the final shard differs from the worker-order sum")
    else:
        i = workers.index(r)
        rng = np.random.default_rng([3, i])
        client = ShardClient(comm, srv_ranks, ranges, np.dtype(np.float64))
        x = np.zeros(d)
        for c in range(1, steps + 1):
            _pace(i, c, rng)
            with _or_abort():
                client.request(PUSH | PULL, c, _bsp_update(i, c, d))
                client.wait(x)
            if not np.array_equal(x, expected[c]) or (client.versions != c).any():
                problems.append(
                    f"clock {c}: pulled versions {client.versions.tolist()}, model not round {c}'s"
                )
        with _or_abort():
            client.request(DONE, steps)
            client.wait(x)
    assert_all(comm, not problems, "; ".join(problems[:5]))


# ---- bad input: the same ConfigError on every rank, before any communication --------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm.servers={n}"], "algorithm.servers = {n} leaves no worker: it must be at most {n0}"),
        (["algorithm.servers={n1}"], "algorithm.servers = {n1} leaves no worker: it must be at most {n0}"),
        (["algorithm.servers=0"], "algorithm.servers must be >= 1 (got 0)"),
        (["algorithm.staleness=-2"], "algorithm.staleness must be an integer in [0, 1_000_000_000]"),
        (["algorithm.push=delta", "algorithm.tau=0"], "algorithm.tau must be >= 1 (got 0)"),
        (
            ["compression.codec=topk"],
            "compression.codec = 'topk' does not apply to algorithm.name = 'async_ps'",
        ),
    ],
)
def test_bad_job_raises_the_same_config_error_on_every_rank(
    comm: MPI.Comm, shared_tmp: Path, overrides: list[str], message: str
) -> None:
    n = comm.Get_size()
    fill = {"n": n, "n0": n - 1, "n1": n + 1, "n2": n + 2}
    sets = ["algorithm.name=async_ps", "run.steps=4", *(o.format(**fill) for o in overrides)]
    got = ""
    try:
        train(load_config(None, sets), comm, out=shared_tmp, stream=NULL)
    except ConfigError as exc:
        got = str(exc)
    seen = comm.allgather(got)
    assert_all(comm, message.format(**fill) in got, f"got {got!r}")
    assert_all(comm, len(set(seen)) == 1, f"different messages on different ranks: {seen}")
    assert_all(comm, not any(shared_tmp.iterdir()), "a run folder was written")
