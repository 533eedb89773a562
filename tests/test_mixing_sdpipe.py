"""SDPIPE's group protocol in `mpiml mixing` (docs/mixing.md "SDPIPE"), the serial parts and
the launched command: Assumption 2 on a schedule of groups against a brute force over
the window products, the replay and the end of a run, the result file, the CLI's
options and errors (one line), the side-by-side sweep's report. The measurement on
ranks is tests/test_mpi_mixing_sdpipe.py."""

from __future__ import annotations

import doctest
import json
import math

import h5py
import numpy as np
import pytest

import mpiml.mixing.sdpipe_model as model_mod
from mpiml.mixing import MixingResult, format_table, read_attrs, result_name, write_result
from mpiml.mixing.cli import _params, parser
from mpiml.mixing.sdpipe_model import (
    consensus_curve,
    group_matrix,
    group_times,
    live_groups,
    replay,
    t_mix_of_groups,
)
from mpiml.mixing.sdpipe_ranks import sdpipe_defaults
from mpiml.protocols.sdpipe import average_of


def test_doctests() -> None:
    assert doctest.testmod(model_mod).failed == 0


def _random_groups(rng: np.random.Generator, P: int, m: int) -> list[tuple[int, ...]]:
    """m groups: a random subset each, sizes 1..P, full groups rare."""
    out = []
    for _ in range(m):
        size = int(rng.integers(1, P + 1)) if rng.random() < 0.8 else 1
        out.append(tuple(sorted(rng.choice(P, size=size, replace=False).tolist())))
    return out


def _brute(P: int, groups: list[tuple[int, ...]]) -> tuple[float, int]:
    """max over starts of t_j - t_k, j the first group with ||W_j...W_{k+1} - J||_2 <= 1/2;
    the number of starts that never halve."""
    t = group_times(groups)
    J = np.full((P, P), 1.0 / P)
    h = []
    for k in range(len(groups)):
        A = np.eye(P)
        for j in range(k, len(groups)):
            A = group_matrix(P, groups[j]) @ A
            if np.linalg.norm(A - J, 2) <= 0.5 * (1 + 1e-9):
                h.append(float(t[j + 1] - t[k]))
                break
        else:
            h.append(math.inf)
    if not h or math.isinf(h[0]):
        return math.inf, sum(math.isinf(v) for v in h)
    return max(v for v in h if math.isfinite(v)), sum(math.isinf(v) for v in h)


@pytest.mark.parametrize("P", [2, 3, 4, 5])
def test_t_mix_of_groups_is_the_brute_force_over_window_products(P: int) -> None:
    rng = np.random.default_rng(P)
    for _ in range(20):
        groups = _random_groups(rng, P, int(rng.integers(1, 30)))
        mix = t_mix_of_groups(P, groups)
        want, censored = _brute(P, groups)
        assert mix.t_mix == want and mix.censored == censored, groups
        if math.isfinite(want):
            assert want >= P  # every replica updates in a window that halves every state


def test_full_groups_are_allreduce_and_isolated_pairs_never_mix() -> None:
    for P in (2, 3, 4):
        mix = t_mix_of_groups(P, [tuple(range(P))] * 5)
        assert (mix.t_mix, mix.worst_start, mix.censored) == (P, 0.0, 0)
    assert math.isinf(t_mix_of_groups(4, [(0, 1), (2, 3)] * 10).t_mix)
    # singletons are time steps in which nothing mixes
    assert t_mix_of_groups(2, [(0,), (1,), (0, 1), (0,), (1,), (0, 1)]).t_mix == 4
    with pytest.raises(ValueError, match="ascending replicas"):
        t_mix_of_groups(3, [(1, 0)])


def test_replay_is_the_group_averages_and_keeps_the_mean() -> None:
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((4, 5))
    groups = [(0, 2), (1,), (1, 3), (0, 1, 2, 3)]
    xs = replay(x0, groups)
    x = x0.copy()
    for g, got in zip(groups, xs, strict=True):
        if len(g) > 1:
            x[list(g)] = average_of(x, list(g))
        assert np.array_equal(got, x)  # bit for bit, summed in member order
        assert np.allclose(got.mean(axis=0), x0.mean(axis=0))
    d = consensus_curve(x0, xs)
    assert d.shape == (5,) and d[-1] <= 1e-12 * d[0] and d[2] == d[1]  # a singleton changes nothing
    assert np.isclose(d[0], np.linalg.norm(x0 - x0.mean(axis=0)))


def test_the_run_ends_with_the_first_replica_done() -> None:
    assert live_groups(3, [(0, 1, 2), (0, 1), (2,), (0, 1), (0,)]) == 3
    assert live_groups(2, [(0, 1), (0, 1)]) == 2


def test_defaults_and_bad_parameters() -> None:
    p = sdpipe_defaults({})
    assert (p["wait_ms"], p["wait_max_ms"], p["ssp_bound"], p["sync_every"]) == (1.0, 10.0, 10, None)
    for bad, match in [
        ({"wait_ms": 0}, "wait_ms must be > 0"),
        ({"wait_max_ms": -1}, "wait_max_ms must be > 0"),
        ({"wait_ms": 5, "wait_max_ms": 2}, "wait_max_ms must be >= wait_ms"),
        ({"ssp_bound": 0}, "ssp_bound must be an integer >= 1"),
        ({"sync_every": 0}, "sync_every must be an integer >= 1"),
        ({"jitter": 1.0}, r"jitter must be in \[0, 1\)"),
        ({"period": -0.1}, "period must be in"),
    ]:
        with pytest.raises(ValueError, match=match):
            sdpipe_defaults(bad)


def test_cli_options_of_sdpipe() -> None:
    p = parser()
    args = p.parse_args(["--protocol", "sdpipe", "--wait-ms", "2", "--ssp-bound", "4", "--slow", "2"])
    assert _params(args) == {"wait_ms": 2.0, "ssp_bound": 4, "slow": 2}
    with pytest.raises(ValueError, match="--wait-ms does not apply to --protocol gossip"):
        _params(p.parse_args(["--protocol", "gossip", "--wait-ms", "2"]))
    with pytest.raises(ValueError, match="--servers does not apply to --protocol sdpipe"):
        _params(p.parse_args(["--protocol", "sdpipe", "--servers", "1"]))


def _result() -> MixingResult:
    curve = (np.array([0, 2, 3, 5]), np.array([2.0, 1.0, 1.0, 0.0]))
    groups = [(0, (0, 1)), (0, (2,)), (1, (0, 2))]
    return MixingResult(
        protocol="sdpipe",
        n=3,
        dim=4,
        seed=0,
        rel_floor=1e-6,
        params=sdpipe_defaults({"slow": 2}),
        resolution=1,
        estimate=3.0,
        rho=None,
        t_mix_trials=np.array([5.0, 4.0]),
        t_mix0_trials=np.array([3.0, 3.0]),
        worst_starts=np.array([0.0, 2.0]),
        censored=np.zeros(2, dtype=np.int64),
        curves=[curve, curve],
        groups=[groups, groups[:1]],
    )


def test_result_file_holds_the_groups(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert result_name("sdpipe", 3, sdpipe_defaults({})) == "sdpipe-n3.h5"
    assert result_name("sdpipe", 3, sdpipe_defaults({"slow": 2, "jitter": 0.5})) == "sdpipe-r2-j0.5-n3.h5"
    path = write_result(tmp_path / result_name("sdpipe", 3, {"slow": 2}), _result())
    a = read_attrs(path)
    assert a["protocol"] == "sdpipe" and a["ssp_bound"] == 10 and "sync_every" not in a
    assert a["group_mean"] == pytest.approx(7 / 4) and a["group_full"] == 0.0
    with h5py.File(path) as f:
        assert f["groups/size"][0].tolist() == [2, 1, 2] and f["groups/kind"][0].tolist() == [0, 0, 1]
        assert f["groups/members"][0].tolist() == [0, 1, 2, 0, 2] and f["groups/size"][1].tolist() == [2]
    assert "b=10 r=2" in format_table([_result()])


def test_sweep_report_and_its_files(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mpiml.mixing import sdpipe_sweep as mod

    names = [p.name for p in mod.outputs([2], tmp_path)]
    assert names == [
        "allreduce-n2.h5", "gossip-ring-n2.h5", "sdpipe-n2.h5", "sdpipe-j0.5-n2.h5", "sdpipe-r2-j0.5-n2.h5",
        "sdpipe.md", "sdpipe.json", "sdpipe.png",
    ]  # fmt: skip
    launched: list[tuple[str, int]] = []

    def fake(protocol, n, params, out, trials, timeout=600.0, overwrite=False):  # type: ignore[no-untyped-def]
        launched.append((protocol, n))
        sd = protocol == "sdpipe"
        return {
            "protocol": protocol, "n": n, "trials": trials, "t_mix": 5.0 if sd else float(n),
            "t_mix_mean": 4.5, "t_mix_q50": 4.0, "t_mix_q90": 5.0, "t_mix0_max": 3.0,
            "estimate": float(n), "rho": math.nan, "wall_s": 1.0, "ranks": n + sd,
            **({"group_mean": 1.5, "group_full": 0.25} if sd else {}),
        }  # fmt: skip

    monkeypatch.setattr(mod, "run_one", fake)
    rows = mod.sweep([2, 3], tmp_path, trials=2, log=lambda *a: None)
    assert len(launched) == 10 and {p for p, _ in launched} == {"allreduce", "gossip", "sdpipe"}
    md, js, png = mod.write_report(rows, tmp_path, "cmd")
    assert "| SDPIPE, jitter 0.5 | 3 | 2 | 5 | 4.5 | 5 | 3 | 3 | 1.50 | 0.25 | 1.0 |" in md.read_text()
    data = json.loads(js.read_text())
    assert len(data["rows"]) == 10 and data["rows"][0]["rho"] == "nan" and data["command"] == "cmd"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing replaced unless told: checked before the first launch
    (tmp_path / "sdpipe-n2.h5").write_text("kept")
    launched.clear()
    with pytest.raises(FileExistsError, match="--overwrite"):
        mod.sweep([2], tmp_path, trials=2)
    assert launched == [] and (tmp_path / "sdpipe-n2.h5").read_text() == "kept"


# ----------------------------------------------------------------- the command, launched


def _mixing(n: int, cwd, *args: str):  # type: ignore[no-untyped-def]
    from mpiml.testing import launch_env, python_command, run_ranks

    res = run_ranks(n, python_command("-m", "mpiml.mixing", *args), 120, cwd=str(cwd), env=launch_env())
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res


def _error_lines(stderr: str) -> list[str]:
    # (python -m mpi4py adds an "Abort(2)" line per rank for a non-zero exit)
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Abort(")]


def test_mixing_sdpipe_on_4_ranks_writes_a_finite_t_mix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = ("--protocol", "sdpipe", "--trials", "2", "--rounds", "12", "--ssp-bound", "4", "--jitter", "0.5")
    res = _mixing(4, tmp_path, *args, "--out", str(tmp_path), "--slow", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    a = read_attrs(tmp_path / "sdpipe-r2-j0.5-n3.h5")
    assert a["n"] == 3 and a["trials"] == 2 and a["ssp_bound"] == 4 and a["rounds"] == 12
    assert math.isfinite(a["t_mix"]) and a["t_mix"] >= 3 and a["estimate"] == 3
    with h5py.File(tmp_path / "sdpipe-r2-j0.5-n3.h5") as f:
        for trial in range(2):
            assert int(f["groups/size"][trial].sum()) == 3 * 12  # every update of every replica
            assert int(f["curves/time"][trial][-1]) == 3 * 12
    assert "sdpipe" in res.stdout and "b=4 r=2 j=0.5" in res.stdout


@pytest.mark.parametrize(
    "ranks, args, words",
    [
        (4, ("--wait-ms", "0"), ("wait_ms must be > 0",)),
        (4, ("--ssp-bound", "0"), ("ssp_bound must be an integer >= 1",)),
        (4, ("--max-time", "9"), ("--max-time does not apply to --protocol sdpipe",)),
        (1, (), ("at least 3 ranks", "got 1")),
    ],
)
def test_mixing_sdpipe_bad_input_is_one_line(tmp_path, ranks: int, args: tuple[str, ...], words) -> None:  # type: ignore[no-untyped-def]
    res = _mixing(ranks, tmp_path, "--protocol", "sdpipe", "--trials", "1", "--no-write", *args)
    lines = _error_lines(res.stderr)
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert lines[0].startswith("mpiml mixing: error: ") and all(w in lines[0] for w in words), lines
    assert "Traceback" not in res.stderr
