"""mpiml.mixing.measure on real ranks: t_mix is exactly n for AllReduce and m n for Local
Step (MixML footnote 2 and §6), n for gossip on the complete graph, the spectral bound for
a ring (with the slack matrix, where the worst start matters); the gossip curve equals
a serial simulation of W^r X_0; async gossip ends on every rank with a finite t_mix."""

from __future__ import annotations

import numpy as np
import pytest

from mpiml.mixing import gossip_estimate, measure, read_attrs
from mpiml.mixing.cli import main
from mpiml.testing import assert_all
from mpiml.topology import build_schedule

pytestmark = pytest.mark.mpi(min_size=2)


def _same_everywhere(comm, res) -> None:  # type: ignore[no-untyped-def]
    mine = (res.t_mix_trials.tolist(), [c[1].tolist() for c in res.curves])
    assert_all(comm, all(v == mine for v in comm.allgather(mine)), "ranks disagree on the result")


def test_allreduce_is_n(comm) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    res = measure(comm, "allreduce", 5, d=4, seed=1)
    ok = (res.t_mix_trials == n).all() and (res.t_mix0_trials == n).all() and res.estimate == n
    assert_all(comm, bool(ok), f"t_mix {res.t_mix_trials} != n = {n}")
    assert_all(
        comm, all(len(t) == 2 and t[1] == n for t, _ in res.curves), "one AllReduce should end a trial"
    )
    _same_everywhere(comm, res)


@pytest.mark.parametrize("m", [2, 3])
def test_local_step_is_m_n(comm, m: int) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    res = measure(comm, "local_step", 5, d=4, seed=2, m=m)
    ok = (res.t_mix_trials == m * n).all() and res.estimate == m * n and res.params == {"m": m}
    assert_all(comm, bool(ok), f"t_mix {res.t_mix_trials} != m n = {m * n}")
    t, d = res.curves[0]
    # records at every iteration; the state stands still until the AllReduce at t = m n
    assert_all(comm, t.tolist() == [k * n for k in range(m + 1)] and (d[:m] == d[0]).all(), f"{t} {d}")


def test_gossip_complete_is_n(comm) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    for method in ("p2p", "neighbor"):
        res = measure(comm, "gossip", 4, d=4, topology="complete", method=method)
        assert_all(
            comm, bool((res.t_mix_trials == n).all()), f"{method}: t_mix {res.t_mix_trials} != n = {n}"
        )


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_gossip_ring_meets_the_spectral_bound(comm, gamma: float) -> None:  # type: ignore[no-untyped-def]
    """Every start halves within n ceil(log 1/2 / log rho) (rho = ||W' - J||_2), and the
    worst start reaches it: on 2 and 4 ranks with gamma = 0.5 (eigenvalues 2/3 and 1/3
    on 4 ranks) the state from t = 0 may halve in one round, the slow mode left later
    takes two."""
    n = comm.Get_size()
    res = measure(comm, "gossip", 6, d=3, seed=3, topology="ring", gamma=gamma)
    est = gossip_estimate(build_schedule("ring", n), gamma)
    assert_all(comm, res.estimate == est.t_mix, f"estimate {res.estimate} != {est.t_mix}")
    assert_all(comm, res.t_mix == est.t_mix, f"measured {res.t_mix} != spectral {est.t_mix} (n = {n})")
    assert_all(comm, bool((res.t_mix0_trials <= res.t_mix_trials).all()), "t = 0 is one of the starts")
    # Lemma 1 (its proof's last line, xi = 1 for a doubly stochastic W): d_t <= 2^-floor(t / t_mix) d_0
    lemma = all(
        (d <= 2.0 ** -np.floor(t / res.t_mix) * d[0] * (1 + 1e-9) + 1e-15 * d[0]).all() for t, d in res.curves
    )
    assert_all(comm, lemma, "a curve decays slower than Lemma 1 allows with the measured t_mix")
    _same_everywhere(comm, res)


def test_gossip_curve_is_w_power_x0(comm) -> None:  # type: ignore[no-untyped-def]
    """The recorded distances are ||W'^r X_0 - J X_0||_F of a serial float64 simulation."""
    n, d, seed, gamma = comm.Get_size(), 5, 7, 0.5
    res = measure(comm, "gossip", 2, d=d, seed=seed, topology="ring", gamma=gamma)
    W = (1 - gamma) * np.eye(n) + gamma * build_schedule("ring", n).at(0).W
    ok = True
    for trial, (t, dist) in enumerate(res.curves):
        X = np.stack([np.random.default_rng([seed, trial, r]).standard_normal(d) for r in range(n)])
        ref = X.mean(axis=0)
        want = []
        for _ in range(len(t)):
            want.append(np.linalg.norm(X - ref))
            X = W @ X
        ok &= t.tolist() == [n * r for r in range(len(t))]
        ok &= np.allclose(dist, want, rtol=1e-10, atol=1e-13 * want[0])
    assert_all(comm, bool(ok), "the measured curve is not W^r X_0")


def test_async_gossip_terminates_with_finite_t_mix(comm) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    res = measure(comm, "async_gossip", 3, d=4, seed=4, topology="ring", every=2)
    ok = np.isfinite(res.t_mix_trials).all() and res.t_mix >= n and res.resolution == 2 * n
    assert_all(comm, bool(ok), f"async t_mix {res.t_mix_trials}")
    # push-sum keeps the mass: every trial ran down to the floor around the true mean
    assert_all(comm, all(c[1][-1] <= 0.5e-6 * c[1][0] for c in res.curves), "did not reach the floor")
    assert_all(comm, all(t[-1] % (2 * n) == 0 for t, _ in res.curves), "cuts every 2 exchanges per rank")
    _same_everywhere(comm, res)
    comm.Barrier()  # every rank got here: nobody is stuck in a window


def test_wrong_parameters_fail_on_every_rank(comm) -> None:  # type: ignore[no-untyped-def]
    for protocol, params in [("allreduce", {"m": 2}), ("gossip", {"every": 2}), ("hogwild", {})]:
        with pytest.raises(ValueError):
            measure(comm, protocol, 1, **params)
    with pytest.raises(ValueError, match="m must be >= 1"):
        measure(comm, "local_step", 1, m=0)
    comm.Barrier()


def test_cli_writes_the_result_file(comm, shared_tmp, capsys) -> None:  # type: ignore[no-untyped-def]
    n = comm.Get_size()
    rc = main(["--protocol", "gossip", "--topology", "complete", "--trials", "3", "--out", str(shared_tmp)])
    out = capsys.readouterr().out
    assert_all(comm, rc == 0, f"exit status {rc}")
    comm.Barrier()
    a = read_attrs(shared_tmp / f"gossip-complete-n{n}.h5")
    ok = a["t_mix"] == n and a["trials"] == 3 and a["estimate"] == n and a["protocol"] == "gossip"
    assert_all(comm, bool(ok), f"{a}")
    if comm.Get_rank() == 0:
        assert "gossip" in out and "wrote" in out
    assert_all(comm, main(["--protocol", "allreduce", "--m", "2"]) == 2, "--m with allreduce must fail")
    assert_all(
        comm, main(["--protocol", "gossip", "--topology", "nosuch"]) == 2, "an unknown topology must fail"
    )
