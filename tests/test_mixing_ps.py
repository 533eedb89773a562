"""AsyncPS's mixing time, the serial parts (docs/mixing.md "AsyncPS"): the matrices
P_i and M_inf against MixML's Assumptions 1 and 2, the closed forms against the event
simulator, the schedule's t_mix and curve, and the result file, CLI options and Figure 3
rows of async_ps. The measurement on ranks is tests/test_mpi_mixing_ps.py."""

from __future__ import annotations

import doctest
import math

import h5py
import numpy as np
import pytest

import mpiml.mixing.ps_model as model_mod
import mpiml.mixing.ps_sim as sim_mod
from mpiml.mixing import MixingResult, format_table, read_attrs, result_name, write_result
from mpiml.mixing.cli import _params, parser
from mpiml.mixing.ps_model import (
    consensus_curve,
    estimate,
    m_inf,
    pull_matrix,
    t_mix_of_pulls,
    t_mix_slow,
    t_mix_ssp_bound,
    t_mix_ssp_level,
)
from mpiml.mixing.ps_sim import simulate, speeds
from mpiml.mixing.sweep import existing_outputs, figure_panel, kept_rows, write_figure


@pytest.mark.parametrize("mod", [model_mod, sim_mod])
def test_doctests(mod) -> None:  # type: ignore[no-untyped-def]
    assert doctest.testmod(mod).failed == 0


# ----------------------------------------------------------------- the matrices


@pytest.mark.parametrize("n", [1, 2, 5])
def test_assumption_1_holds_with_the_servers_row_as_the_limit(n: int) -> None:
    M = m_inf(n)
    assert np.array_equal(M @ M, M)
    for i in range(1, n + 1):
        P = pull_matrix(n, i)
        assert np.array_equal(M @ P, M) and np.array_equal(P @ M, M)
        assert np.array_equal(P @ P, P)  # a second pull changes nothing
        for j in range(1, n + 1):
            assert np.array_equal(P @ pull_matrix(n, j), pull_matrix(n, j) @ P)  # pulls commute
    # the limit is the server's row, not the mean: the mean (J) is not preserved by a pull
    J = np.full((n + 1, n + 1), 1.0 / (n + 1))
    assert not np.allclose(J @ pull_matrix(n, 1), J)
    X = np.random.default_rng(0).standard_normal((n + 1, 3))
    assert np.array_equal(M @ X, np.tile(X[0], (n + 1, 1)))
    with pytest.raises(ValueError):
        pull_matrix(n, 0)


def _replay(
    pulls: list[np.ndarray], shards: int, X: np.ndarray, t_last: int
) -> tuple[list[int], list[float]]:
    """X_t = M_{t-1} ... M_0 X_0 with the matrices themselves: at each time, the pulls
    of the pairs (worker, shard) answered then, P_i on the shard's columns."""
    n = len(pulls) // shards
    cols = np.array_split(np.arange(X.shape[1]), shards)
    X = X.copy()
    ref = m_inf(n) @ X
    times, dists = [0], [float(np.linalg.norm(X - ref))]
    for t in range(1, t_last + 1):
        for k, p in enumerate(pulls):
            if t in p:
                i, s = divmod(k, shards)
                X[:, cols[s]] = pull_matrix(n, i + 1) @ X[:, cols[s]]
        times.append(t)
        dists.append(float(np.linalg.norm(X - ref)))
    return times, dists


@pytest.mark.parametrize("shards", [1, 2])
def test_the_matrices_replay_the_closed_form_curve(shards: int) -> None:
    """The distance of P-products applied to a random state equals consensus_curve's
    sum over the pairs not yet pulled, at every record."""
    n, d = 3, 6
    sim = simulate([3.0, 1.0, 1.5], 5, staleness=None)
    rng = np.random.default_rng(1)
    # shard s sees the same schedule shifted (each shard counts its own pushes)
    pulls = [p + s for p in sim.pulls for s in range(shards)]
    X = rng.standard_normal((n + 1, d))
    times, dists = _replay(pulls, shards, X, int(max(p[-1] for p in pulls)))
    cols = np.array_split(np.arange(d), shards)
    sq = np.array([np.sum((X[i + 1, cols[s]] - X[0, cols[s]]) ** 2) for i in range(n) for s in range(shards)])
    ct, cd = consensus_curve(np.array([p[0] for p in pulls]), sq)
    for t, dist in zip(ct, cd, strict=True):
        assert dists[times.index(int(t))] == pytest.approx(dist, rel=1e-12)
    assert cd[-1] == 0.0 and dists[-1] == 0.0


def test_assumption_2_on_the_matrices_is_the_longest_gap() -> None:
    """For the simulated schedule, every start's window of t_mix halves (zeroes) every
    state; at the worst start a window one shorter leaves the worst state untouched."""
    n = 3
    sim = simulate([2.0, 1.0, 1.0], [4, 8, 8])
    mix = t_mix_of_pulls(sim.pulls)
    assert mix.t_mix == t_mix_slow(n, 2) == 5
    t_end = mix.t_end

    def window(t0: int, T: int) -> np.ndarray:
        M = np.eye(n + 1)
        for t in range(t0 + 1, t0 + T + 1):
            for i, p in enumerate(sim.pulls):
                if t in p:
                    M = pull_matrix(n, i + 1) @ M
        return M

    T = int(mix.t_mix)
    for t0 in range(t_end):
        assert np.allclose(window(t0, T) @ np.eye(n + 1)[:, :] - m_inf(n), 0.0)  # every X: distance 0
    worst = np.zeros((n + 1, 1))
    worst[mix.worker + 1] = 1.0  # the whole deviation on the worker of the longest gap
    M = window(mix.worst_start, T - 1)
    assert np.linalg.norm(M @ worst - m_inf(n) @ worst) == np.linalg.norm(worst - m_inf(n) @ worst)


# ----------------------------------------------------------------- closed forms vs the simulator


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_equal_speeds_is_n(n: int) -> None:
    for s in (None, 0, 1, 3):
        sim = simulate([1.0] * n, 6, staleness=s)
        mix = t_mix_of_pulls(sim.pulls)
        assert mix.t_mix == n == estimate(n, 1, s)
        assert all((g == n).all() for g in mix.gaps)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
@pytest.mark.parametrize("r", [2, 3, 5])
def test_one_worker_r_times_slower_is_n_minus_1_r_plus_1(n: int, r: int) -> None:
    durations, steps = speeds(n, r, rounds=5)
    mix = t_mix_of_pulls(simulate(durations, steps).pulls)
    assert mix.t_mix == (n - 1) * r + 1 == estimate(n, r) and mix.worker == 0
    assert mix.t_mix != r * n  # the r n is wrong by r - 1
    # every later gap of the straggler is the same; the fast workers' gaps are <= n
    assert (mix.gaps[0] == (n - 1) * r + 1).all() or (mix.gaps[0][1:] == (n - 1) * r + 1).all()
    assert all(g.max() <= n for g in mix.gaps[1:])


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("s", [0, 1, 2])
@pytest.mark.parametrize("r", [1, 2, 4, 8])
def test_ssp_with_a_straggler_from_t0(n: int, s: int, r: int) -> None:
    durations, _ = speeds(n, r)
    mix = t_mix_of_pulls(simulate(durations, 4 * r + 2 * s + 2, staleness=s).pulls)
    want = (n - 1) * min(r, s + 1) + 1
    assert mix.t_mix == want == estimate(n, r, s)
    assert mix.t_mix <= t_mix_ssp_level(n, s)
    if r > s + 1 and n > 1:  # held s + 1 ahead, the fast workers push once per slow push
        assert mix.gaps[0][0] == want and (mix.gaps[0][1:-2] == n).all()


def _adversary(n: int, s: int) -> list[list[float]]:
    """Worker 0 runs s clocks ahead (the others push once, then stall), then stalls
    while the others run to its clock + s + 1."""
    return [[1.0] * (s + 1) + [1000.0, 1.0]] + [[0.5, 100.0, 1.0]] * (n - 1)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("s", [0, 1, 2, 3])
def test_ssp_bound_is_2s_plus_1_and_attained(n: int, s: int) -> None:
    mix = t_mix_of_pulls(simulate(_adversary(n, s), 4 * s + 6, staleness=s).pulls)
    assert mix.t_mix == t_mix_ssp_bound(n, s) == (2 * s + 1) * (n - 1) + 1
    if s > 0 and n > 1:  # the (s + 1)(n - 1) + 1 is exceeded: it is not a bound for any start
        assert mix.t_mix > t_mix_ssp_level(n, s)


def test_ssp_bound_holds_on_random_schedules() -> None:
    rng = np.random.default_rng(12)
    hit = 0
    for trial in range(400):
        n, s, k = int(rng.integers(2, 6)), int(rng.integers(0, 4)), int(rng.integers(2, 12))
        scale = (
            rng.choice([0.1, 1.0, 10.0, 100.0], size=(n, k)) if trial % 2 else rng.exponential(1.0, (n, k))
        )
        sim = simulate([list(row) for row in scale], k, staleness=s)
        mix = t_mix_of_pulls(sim.pulls)
        assert mix.t_mix <= t_mix_ssp_bound(n, s), (n, s, mix.t_mix)
        hit += mix.t_mix == t_mix_ssp_bound(n, s)
        # the bound the server enforces: no pull answered more than s clocks ahead
        assert all(((c - low) <= s).all() for c, low in zip(sim.clocks, sim.slowest, strict=True))
    assert hit > 0  # random schedules reach the bound too


def test_jittered_equal_speeds_stay_within_2n_minus_1() -> None:
    rng = np.random.default_rng(5)
    top = {}
    for _ in range(300):
        n = int(rng.integers(2, 7))
        sim = simulate([list(1 + rng.uniform(-0.3, 0.3, 30)) for _ in range(n)], 30)
        mix = t_mix_of_pulls(sim.pulls)
        assert n <= mix.t_mix <= 2 * n - 1
        top[n] = max(top.get(n, 0), mix.t_mix)
        # the mean gap is n: the last worker's last pull is after every push
        assert sim.pulls[int(np.argmax([p[-1] for p in sim.pulls]))][-1] == 30 * n
    assert any(top[n] == 2 * n - 1 for n in top)  # the order changes: 2n - 1 is reached


def test_bsp_pulls_land_on_round_boundaries() -> None:
    sim = simulate([1.0, 2.5, 0.3, 7.0], 5, staleness=0)
    assert all(p.tolist() == [4, 8, 12, 16, 20] for p in sim.pulls)


def test_simulator_errors() -> None:
    with pytest.raises(ValueError, match="staleness"):
        simulate([1.0, 1.0], 3, staleness=-1)
    with pytest.raises(ValueError, match="steps"):
        simulate([1.0, 1.0], [3])
    with pytest.raises(ValueError, match="durations"):
        simulate([1.0, -1.0], 3)
    with pytest.raises(RuntimeError, match="deadlock"):
        simulate([1.0, 1.0], [2, 9], staleness=1)  # worker 1 waits on a finished worker 0
    with pytest.raises(ValueError):
        estimate(3, slow=0)


# ----------------------------------------------------------------- a schedule's t_mix and curve


def test_t_mix_of_pulls_counts_the_first_gap_and_leaves_out_the_tail() -> None:
    # worker 1's first pull at 7 is the longest gap
    mix = t_mix_of_pulls([np.array([2, 4, 6, 8, 10]), np.array([7, 9])])
    assert (mix.t_mix, mix.worst_start, mix.worker, mix.t_end) == (7.0, 0, 1, 9)
    # the gap 4 -> 10 starts after t_end = 3 (worker 0 pulls no more): censored, left out
    mix = t_mix_of_pulls([np.array([1, 2, 3]), np.array([2, 4, 10])])
    assert (mix.t_mix, mix.t_end) == (2.0, 3)
    assert t_mix_of_pulls([np.array([1, 2, 3]), np.array([2, 3, 10])]).t_mix == 2  # start 3 = t_end: out
    assert t_mix_of_pulls([np.array([1, 2, 4]), np.array([2, 3, 10])]).t_mix == 7  # start 3 < t_end = 4: in
    assert t_mix_of_pulls([np.array([1, 2]), np.array([], dtype=np.int64)]).t_mix == math.inf
    with pytest.raises(ValueError):
        t_mix_of_pulls([np.array([3, 1])])


def test_consensus_curve_sums_the_pairs_not_yet_pulled() -> None:
    t, d = consensus_curve(np.array([3, 1, 3]), np.array([1.0, 4.0, 4.0]))
    assert t.tolist() == [0, 1, 3] and d.tolist() == [3.0, math.sqrt(5.0), 0.0]


# ----------------------------------------------------------------- file, table, CLI, figure


def _result(pulls: list[list[np.ndarray]]) -> MixingResult:
    curve = (np.array([0, 2, 3]), np.array([2.0, 1.0, 0.0]))
    return MixingResult(
        protocol="async_ps",
        n=2,
        dim=4,
        seed=0,
        rel_floor=1e-6,
        params={"servers": 2, "staleness": None, "slow": 1},
        resolution=1,
        estimate=2.0,
        rho=None,
        t_mix_trials=np.array([3.0, 2.0]),
        t_mix0_trials=np.array([3.0, 2.0]),
        worst_starts=np.array([0.0, 0.0]),
        censored=np.zeros(2, dtype=np.int64),
        curves=[curve, curve],
        pulls=pulls,
    )


def test_result_file_holds_the_schedule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # trial 0: worker 0 shards 0, 1, worker 1 shards 0, 1
    pulls = [[np.array([1, 3]), np.array([2, 4]), np.array([2, 4]), np.array([1, 3])]] * 2
    path = write_result(tmp_path / result_name("async_ps", 2, {"servers": 2}), _result(pulls))
    assert path.name == "async_ps-S2-n2.h5"
    a = read_attrs(path)
    assert a["servers"] == 2 and "staleness" not in a and a["gap_mean"] == pytest.approx(14 / 8)
    with h5py.File(path) as f:
        assert f["pulls/pair"][:].tolist() == [
            [k, i, s] for k in range(2) for i in range(2) for s in range(2)
        ]
        assert f["pulls/time"][1].tolist() == [2, 4]
    assert "S=2 async" in format_table([_result(pulls)])


def test_result_names_of_async_ps() -> None:
    assert result_name("async_ps", 4, {}) == "async_ps-S1-n4.h5"
    assert result_name("async_ps", 4, {"servers": 1, "staleness": 1, "slow": 4}) == "async_ps-S1-s1-r4-n4.h5"
    assert result_name("async_ps", 4, {"staleness": 0}) == "async_ps-S1-s0-n4.h5"


def test_cli_options_of_async_ps() -> None:
    p = parser()
    args = p.parse_args(["--protocol", "async_ps", "--servers", "2", "--staleness", "0", "--slow", "3"])
    assert _params(args) == {"servers": 2, "staleness": 0, "slow": 3}
    with pytest.raises(ValueError, match="--staleness does not apply"):
        _params(p.parse_args(["--protocol", "gossip", "--staleness", "1"]))
    with pytest.raises(ValueError, match="--topology does not apply"):
        _params(p.parse_args(["--protocol", "async_ps", "--topology", "ring"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--protocol", "async_ps", "--staleness", "-1"])


def test_figure_has_the_asyncps_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for n in (2, 3):
        rows.append(
            {
                "protocol": "async_ps", "n": n, "trials": 5, "t_mix": 2 * n - 1, "t_mix_mean": n + 0.5,
                "t_mix_q90": 2 * n - 1, "t_mix0_max": n, "estimate": n, "rho": math.nan,
                "servers": 1, "gap_mean": float(n),
            }
        )  # fmt: skip
    png, md = write_figure(rows, tmp_path)
    text = md.read_text()
    assert "| AsyncPS | 3 | 5 | 5 | 3.5 | 5 | 3 | 3 | - |" in text and "| 3.00 |" in text
    assert [s.label for s in figure_panel(rows).series] == ["AsyncPS"] and png.exists()
    # the sweep checks the async_ps files (named by workers) before launching
    (tmp_path / "async_ps-S1-n2.h5").write_text("")
    assert tmp_path / "async_ps-S1-n2.h5" in existing_outputs([2], ["async_ps"], tmp_path)


def test_a_sweep_of_async_ps_keeps_the_other_protocols_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = _result([[np.array([1, 3]), np.array([2, 4]), np.array([2, 4]), np.array([1, 3])]] * 2)
    allreduce = MixingResult(
        **{**r.__dict__, "protocol": "allreduce", "params": {}, "pulls": None}  # type: ignore[arg-type]
    )
    write_result(tmp_path / result_name("allreduce", 2, {}), allreduce)
    kept = kept_rows([2, 3], ["allreduce", "gossip"], tmp_path)
    assert [(a["protocol"], a["n"]) for a in kept] == [("allreduce", 2)]
    _, md = write_figure(kept, tmp_path)
    assert "| AllReduce | 2 | 2 | 3 |" in md.read_text() and "| - | - |" in md.read_text()
