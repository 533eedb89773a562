"""AsyncPS's t_mix measured on real ranks (mpiml.mixing.ps_ranks, the parameter server's
own ShardServer) against the model of docs/mixing.md "AsyncPS": n under BSP, the
straggler's schedule under an SSP bound equal to the event simulator's ((s + 1)(n - 1)
+ 1, then n), never above the bound (2s + 1)(n - 1) + 1, and a straggler's gaps that
average (n - 1) r + 1 when fully asynchronous. The last ranks are servers; n = ranks - servers.
Slowness is sleeps; every assertion is on counts of pushes."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.mixing import measure, read_attrs
from mpiml.mixing.cli import main
from mpiml.mixing.ps_model import t_mix_ssp_bound
from mpiml.mixing.ps_sim import simulate, speeds
from mpiml.testing import assert_all

pytestmark = pytest.mark.mpi(min_size=2)


def _same_everywhere(comm, res) -> None:  # type: ignore[no-untyped-def]
    mine = (
        res.t_mix_trials.tolist(),
        [c[1].tolist() for c in res.curves],
        [[p.tolist() for p in t] for t in res.pulls],
    )
    assert_all(comm, all(v == mine for v in comm.allgather(mine)), "ranks disagree on the result")


@pytest.mark.parametrize("servers", [1, 2])
def test_bsp_is_n(comm, servers: int) -> None:  # type: ignore[no-untyped-def]
    if comm.Get_size() <= servers:
        pytest.skip(f"{servers} servers need {servers + 1} ranks")
    n = comm.Get_size() - servers
    res = measure(comm, "async_ps", 3, d=5, seed=2, servers=servers, staleness=0, rounds=3, period=0.0)
    ok = (res.t_mix_trials == n).all() and res.estimate == n and res.n == n
    assert_all(comm, bool(ok), f"t_mix {res.t_mix_trials} != n = {n}")
    # every pair pulls at the end of each round of n pushes: t = n, 2n, 3n
    want = [n, 2 * n, 3 * n]
    assert_all(comm, all(p.tolist() == want for t in res.pulls for p in t), f"{res.pulls[0]}")
    assert_all(comm, all(len(t) == n * servers for t in res.pulls), "one schedule per (worker, shard)")
    _same_everywhere(comm, res)


def test_the_curve_is_the_trials_random_state(comm) -> None:  # type: ignore[no-untyped-def]
    """d_0 = ||X_0 - M_inf X_0||_F from the seeds (x_0 the servers', x_i the workers'
    copies), and the distance is 0 once every worker has pulled."""
    seed, d = 9, 6
    n = comm.Get_size() - 1
    res = measure(comm, "async_ps", 2, d=d, seed=seed, rounds=2, period=0.0)
    ok = True
    for trial, (t, dist) in enumerate(res.curves):
        x0 = np.random.default_rng([seed, trial, n]).standard_normal(d)
        xs = [np.random.default_rng([seed, trial, i]).standard_normal(d) for i in range(n)]
        d0 = np.sqrt(sum(float(np.sum((x - x0) ** 2)) for x in xs))
        first = max(int(p[0]) for p in res.pulls[trial])
        ok &= abs(dist[0] - d0) <= 1e-12 * d0 and dist[-1] == 0.0 and int(t[-1]) == first and t[0] == 0
    assert_all(comm, bool(ok), f"curves {res.curves}")
    _same_everywhere(comm, res)


def test_ssp_straggler_follows_the_simulator(comm) -> None:  # type: ignore[no-untyped-def]
    """s = 1, worker 0 twenty times slower: its first gap is (s + 1)(n - 1) + 1 (the
    others run s + 1 clocks ahead, then wait), every later one n while others are
    running: exactly the simulated schedule; no gap anywhere above (2s + 1)(n - 1) + 1."""
    s, r, rounds = 1, 20, 4
    n = comm.Get_size() - 1
    res = measure(comm, "async_ps", 2, d=4, seed=3, staleness=s, slow=r, rounds=rounds, period=0.005)
    durations, _ = speeds(n, r)
    model = simulate(durations, rounds, staleness=s)
    want = model.pulls[0].tolist()
    assert_all(comm, all(t[0].tolist() == want for t in res.pulls), f"straggler {res.pulls[0][0]} != {want}")
    bound = t_mix_ssp_bound(n, s)
    assert_all(comm, bool((res.t_mix_trials <= bound).all()), f"t_mix {res.t_mix_trials} > bound {bound}")
    ok = (res.t_mix_trials == (s + 1) * (n - 1) + 1).all() and res.estimate == (s + 1) * (n - 1) + 1
    assert_all(comm, bool(ok), f"t_mix {res.t_mix_trials}")
    _same_everywhere(comm, res)


def test_async_straggler_mean_gap_is_n_minus_1_r_plus_1(comm) -> None:  # type: ignore[no-untyped-def]
    """Fully asynchronous, worker 0 r = 4 times slower: its mean gap is (n - 1) r + 1 up to
    the race at the instants where its push and one push of each fast worker are due
    together (each gap is (n - 1) r + 1 +- (n - 1)); not r n."""
    n = comm.Get_size() - 1
    if n < 2:
        pytest.skip("a straggler needs another worker")
    r = 4
    res = measure(comm, "async_ps", 2, d=4, seed=4, slow=r, rounds=6, period=0.02)
    gaps = np.concatenate([np.diff(t[0]) for t in res.pulls])  # the straggler's gaps after its first pull
    mean = float(gaps.mean())
    ok = (n - 1) * (r - 1) + 1 <= mean <= (n - 1) * (r + 1) + 1 and res.estimate == (n - 1) * r + 1
    assert_all(comm, bool(ok), f"straggler's mean gap {mean} ({gaps.tolist()}), model {(n - 1) * r + 1}")
    _same_everywhere(comm, res)


def test_bad_parameters_fail_on_every_rank(comm) -> None:  # type: ignore[no-untyped-def]
    size = comm.Get_size()
    for params in [{"servers": size}, {"staleness": -1}, {"slow": 0}, {"period": -1.0}, {"topology": "ring"}]:
        with pytest.raises(ValueError):
            measure(comm, "async_ps", 1, **params)
    if size > 2:
        with pytest.raises(ValueError, match="dim must be >= servers"):
            measure(comm, "async_ps", 1, d=1, servers=2)
    with pytest.raises(ValueError, match="max_time"):
        measure(comm, "async_ps", 1, max_time=10)
    comm.Barrier()


def test_cli_writes_the_schedule(comm, shared_tmp, capsys) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size() - 1
    args = [
        "--protocol",
        "async_ps",
        "--staleness",
        "0",
        "--trials",
        "2",
        "--period",
        "0",
        "--out",
        str(shared_tmp),
    ]
    rc = main(args)
    out = capsys.readouterr().out
    assert_all(comm, rc == 0, f"exit status {rc}")
    comm.Barrier()
    a = read_attrs(shared_tmp / f"async_ps-S1-s0-n{n}.h5")
    ok = a["t_mix"] == n and a["n"] == n and a["servers"] == 1 and a["staleness"] == 0 and a["gap_mean"] == n
    assert_all(comm, bool(ok), f"{a}")
    if comm.Get_rank() == 0:
        assert "async_ps" in out and "S=1 s=0" in out
    size = str(comm.Get_size())
    assert_all(comm, main(["--protocol", "async_ps", "--servers", size]) == 2, "no worker left must fail")
    assert_all(comm, main(["--protocol", "async_ps", "--max-time", "9"]) == 2, "--max-time must fail")
    assert_all(comm, main(["--protocol", "async_ps", "--m", "2"]) == 2, "--m must fail")
