"""mpiml.mixing, the serial parts: t_mix from a curve (MixML Assumption 2 with the worst
start), the spectral bound against a serial simulation, Figure 3 (PNG), the HDF5 file
and the Figure 3 writer. The multi-rank measurement is tests/test_mpi_mixing.py."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import mpiml.mixing.spectral as spectral_mod
import mpiml.mixing.tmix as tmix_mod
from mpiml.mixing import (
    MixingResult,
    format_table,
    gossip_estimate,
    halving_times,
    read_attrs,
    result_name,
    rounds_to_halve,
    summarize,
    t_mix_of_curve,
    write_result,
)
from mpiml.mixing.cli import _params, parser
from mpiml.mixing.sweep import figure_panel, redraw, write_figure
from mpiml.topology import Schedule, build_schedule, ring


@pytest.mark.parametrize("mod", [tmix_mod, spectral_mod])
def test_doctests(mod) -> None:  # type: ignore[no-untyped-def]
    assert doctest.testmod(mod).failed == 0


# ----------------------------------------------------------------- t_mix from a curve


def test_allreduce_curve_is_n() -> None:
    # one AllReduce per n updates: the distance drops to 0 at t = n
    for n in (2, 5, 8):
        mix = t_mix_of_curve([0, n], [3.0, 0.0])
        assert (mix.t_mix, mix.t_mix0, mix.worst_start) == (n, n, 0)


def test_local_step_curve_counts_the_quiet_iterations() -> None:
    # m = 3, n = 4: records every iteration, the average lands at t = 12
    mix = t_mix_of_curve([0, 4, 8, 12], [2.0, 2.0, 2.0, 1e-17])
    assert mix.t_mix == 12
    # starting at t = 4 (unchanged state) the halving is only 8 away: the worst start is 0
    assert halving_times([0, 4, 8, 12], [2.0, 2.0, 2.0, 1e-17]).tolist()[:3] == [12, 8, 4]


def test_worst_start_beats_the_start_at_zero() -> None:
    # fast first (a fast mode dies), then slow: from t = 0 one record halves, from t = 1 it takes 3
    t = [0, 1, 2, 3, 4, 5]
    d = [1.0, 0.3, 0.25, 0.2, 0.14, 0.05]
    mix = t_mix_of_curve(t, d)
    assert mix.t_mix0 == 1
    assert mix.t_mix == 3 and mix.worst_start == 1
    assert t_mix_of_curve(t, d, worst_start=False).t_mix == 1


def test_halving_is_the_first_record_at_or_below_half_and_not_monotone_safe() -> None:
    # a curve that goes up again (async): the first record <= half counts
    h = halving_times([0, 2, 4, 6], [1.0, 0.5, 0.9, 0.2])
    assert h.tolist() == [2, 4, 2, math.inf]
    # exactly half counts (Assumption 2 has <=), and so does half up to rounding
    assert halving_times([0, 1], [1.0, 0.5000000000000001]).tolist()[0] == 1
    assert halving_times([0, 1], [1.0, 0.5000001]).tolist()[0] == math.inf


def test_floor_leaves_out_rounding_noise_starts() -> None:
    # below rel_floor * d_0 the "curve" is float64 noise that need not halve
    t = [0, 8, 16, 24]
    d = [1.0, 1e-17, 2e-17, 1.5e-17]
    assert t_mix_of_curve(t, d, rel_floor=1e-6).t_mix == 8
    mix = t_mix_of_curve(t, d, rel_floor=0.0)
    assert mix.t_mix == 8 and mix.censored >= 1  # the noise starts never halve: left out, counted


def test_censored_start_zero_is_inf_and_consensus_start_is_zero() -> None:
    assert t_mix_of_curve([0, 1, 2], [1.0, 0.9, 0.8]).t_mix == math.inf
    assert t_mix_of_curve([0, 1], [0.0, 0.0]).t_mix == 0


@pytest.mark.parametrize(
    "times,dists",
    [
        ([1, 2], [1.0, 0.5]),
        ([0, 2, 2], [1.0, 0.5, 0.2]),
        ([0, 1], [1.0]),
        ([0, 1], [1.0, -0.1]),
        ([0, 1], [1.0, np.nan]),
    ],
)
def test_bad_curves_are_errors(times, dists) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        t_mix_of_curve(times, dists)


def test_summarize() -> None:
    s = summarize([8, 16, 8, 24])
    assert s["max"] == 24 and s["mean"] == 14 and s["min"] == 8 and s["q50"] == 16 and s["q90"] == 24
    assert summarize([8, math.inf])["max"] == math.inf
    with pytest.raises(ValueError):
        summarize([])


# ----------------------------------------------------------------- the spectral bound


def test_rounds_to_halve() -> None:
    assert rounds_to_halve(0.0) == 1 and rounds_to_halve(1e-17) == 1
    assert rounds_to_halve(0.5) == 1 and rounds_to_halve(0.5000000000000001) == 1
    assert rounds_to_halve(0.51) == 2 and rounds_to_halve(2**-0.25) == 4
    assert rounds_to_halve(1.0) == math.inf
    with pytest.raises(ValueError):
        rounds_to_halve(-0.1)


@pytest.mark.parametrize("name,n", [("ring", 8), ("ring", 7), ("torus", 8), ("star", 6), ("hypercube", 8)])
def test_estimate_is_rho_of_the_topology_and_attained(name: str, n: int) -> None:
    """For a symmetric static W the bound n ceil(log 1/2 / log rho) is Assumption 2's t_mix:
    no start halves later (simulated on random states, worst start), and the eigenvector
    of the eigenvalue of modulus rho takes exactly that long."""
    schedule = build_schedule(name, n)
    W = schedule.at(0).W
    est = gossip_estimate(schedule)
    assert est.rho == pytest.approx(schedule.at(0).rho(), abs=1e-12)
    assert est.t_mix == n * rounds_to_halve(est.rho)
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(5):
        X = rng.standard_normal((n, 3))
        t, d = [0], [np.linalg.norm(X - X.mean(0))]
        ref = X.mean(0)
        while d[-1] > 1e-9 * d[0]:
            X = W @ X
            t.append(t[-1] + n)
            d.append(np.linalg.norm(X - ref))
        worst = max(worst, t_mix_of_curve(t, d).t_mix)
    assert worst <= est.t_mix
    lam, vec = np.linalg.eigh(W)
    k = int(np.argmax(np.where(np.isclose(lam, 1.0), -1.0, np.abs(lam))))  # modulus rho, not the 1
    x = vec[:, k]
    r = 0
    while np.linalg.norm(x) > 0.5 * (1 + 1e-9):
        x = W @ x
        r += 1
    assert n * r == est.t_mix


def test_estimate_slack_and_time_varying() -> None:
    s = Schedule.of(ring(4))  # eigenvalues 1, 1/3, -1/3, 1/3
    assert gossip_estimate(s).t_mix == 4
    # W' = (I + W) / 2: eigenvalues 1, 2/3, 1/3, 2/3 -> 2 rounds
    e = gossip_estimate(s, gamma=0.5)
    assert e.rho == pytest.approx(2 / 3) and e.t_mix == 8
    # one-peer exponential on 8 ranks averages exactly in one period of 3 rounds
    e = gossip_estimate(build_schedule("one_peer_exponential", 8))
    assert e.period == 3 and e.rho < 1e-12 and e.t_mix == 24
    assert gossip_estimate(build_schedule("complete", 8)).t_mix == 8
    with pytest.raises(ValueError):
        gossip_estimate(s, gamma=0.0)


# ----------------------------------------------------------------- files, table, CLI options


def _result(protocol: str = "gossip", params: dict | None = None) -> MixingResult:  # type: ignore[type-arg]
    curves = [(np.array([0, 4, 8]), np.array([1.0, 0.4, 0.1])), (np.array([0, 4]), np.array([2.0, 0.5]))]
    return MixingResult(
        protocol=protocol,
        n=4,
        dim=8,
        seed=0,
        rel_floor=1e-6,
        params={"topology": "ring", "method": "p2p", "gamma": 1.0} if params is None else params,
        resolution=4,
        estimate=4.0,
        rho=1 / 3,
        t_mix_trials=np.array([4.0, 4.0]),
        t_mix0_trials=np.array([4.0, 4.0]),
        worst_starts=np.array([0.0, 0.0]),
        censored=np.array([0, 0]),
        curves=curves,
    )


def test_result_file_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import h5py

    r = _result()
    path = write_result(tmp_path / result_name(r.protocol, r.n, r.params), r)
    assert path.name == "gossip-ring-n4.h5"
    a = read_attrs(path)
    assert a["protocol"] == "gossip" and a["n"] == 4 and a["trials"] == 2 and a["t_mix"] == 4
    assert a["estimate"] == 4 and a["topology"] == "ring" and a["rho"] == pytest.approx(1 / 3)
    with h5py.File(path) as f:
        assert f["curves/distance"][1].tolist() == [2.0, 0.5]
        assert f["curves/time"][0].tolist() == [0, 4, 8]
        assert f["t_mix"][:].tolist() == [4, 4]
    assert result_name("allreduce", 8, {}) == "allreduce-n8.h5"
    assert result_name("local_step", 8, {"m": 3}) == "local_step-m3-n8.h5"
    assert result_name("async_gossip", 8, {"topology": "topologies/x.toml"}) == "async_gossip-x-n8.h5"
    table = format_table([r, _result("async_gossip", {"topology": "ring", "every": 2})])
    assert "t_mix" in table and "estimate" in table and "ring every=2" in table


def test_figure_writer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rows = []
    for n in (2, 3, 4):
        rows.append(
            dict(
                protocol="allreduce",
                n=n,
                trials=5,
                t_mix=n,
                t_mix_mean=n,
                t_mix_q90=n,
                t_mix0_max=n,
                estimate=n,
                rho=math.nan,
                wall_s=1.0,
            )
        )
        rows.append(
            dict(
                protocol="gossip",
                topology="ring",
                n=n,
                trials=5,
                t_mix=2 * n,
                t_mix_mean=1.5 * n,
                t_mix_q90=2 * n,
                t_mix0_max=n,
                estimate=2 * n,
                rho=0.5,
                wall_s=1.0,
            )
        )
    png, md = write_figure(rows, tmp_path)
    assert png == tmp_path / "figure3.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    legend = {s.label: s for s in figure_panel(rows).series}
    assert set(legend) == {"AllReduce", "SyncDR (ring)", "SyncDR (ring) spectral bound"}
    assert legend["SyncDR (ring) spectral bound"].dashed and not legend["AllReduce"].dashed
    assert list(legend["SyncDR (ring) spectral bound"].y) == [4, 6, 8]
    text = md.read_text()
    assert "| SyncDR (ring) | 4 | 5 | 8 | 6.0 |" in text and "figure3.png" in text


def test_the_sweep_redraws_figure3_from_the_stored_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FileNotFoundError):
        redraw(tmp_path)
    r = _result("allreduce", {})
    write_result(tmp_path / result_name("allreduce", r.n, {}), r)
    png = redraw(tmp_path)
    assert png == tmp_path / "figure3.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figure3.md").exists()  # the table keeps the sweep's wall times


def test_cli_options_belong_to_their_protocol() -> None:
    p = parser()
    assert _params(p.parse_args(["--protocol", "gossip"])) == {"topology": "ring"}
    assert _params(p.parse_args(["--protocol", "local_step", "--m", "3"])) == {"m": 3}
    with pytest.raises(ValueError, match="--m does not apply to --protocol gossip"):
        _params(p.parse_args(["--protocol", "gossip", "--m", "3"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--protocol", "hogwild"])


# ----------------------------------------------------------------- no file replaced unless told (#17.4)


def _sha(path) -> str:  # type: ignore[no-untyped-def]
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_write_result_never_replaces_without_overwrite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "gossip-ring-n4.h5"
    write_result(path, _result())
    before = _sha(path)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_result(path, _result("async_gossip", {"topology": "ring", "every": 2}))
    assert _sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    write_result(path, _result("async_gossip", {"topology": "ring", "every": 2}), overwrite=True)
    assert read_attrs(path)["protocol"] == "async_gossip"


def _mixing(n: int, cwd, *args: str):  # type: ignore[no-untyped-def]
    from mpiml.testing import python_command, run_ranks

    res = run_ranks(n, python_command("-m", "mpiml.mixing", *args), 120, cwd=str(cwd))
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res


def test_mixing_refuses_to_replace_a_result_it_did_not_create(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: `mpiml mixing --protocol gossip --topology ring` with the default
    --out replaced the committed 200-trial file. A copy of the committed file stands in for
    it here (cwd = tmp_path, so the default results/mixing/ is the copy's folder)."""
    import shutil
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "results" / "mixing" / "gossip-ring-n2.h5"
    target = tmp_path / "results" / "mixing" / "gossip-ring-n2.h5"
    target.parent.mkdir(parents=True)
    shutil.copyfile(committed, target)
    before = _sha(target)
    res = _mixing(2, tmp_path, "--protocol", "gossip", "--topology", "ring", "--trials", "2")
    assert res.returncode == 2, res.stdout + res.stderr
    # (python -m mpi4py adds an "Abort(2)" line per rank for a non-zero exit: #16.13's business)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("Abort(")]
    assert len(lines) == 1 and "results/mixing/gossip-ring-n2.h5" in lines[0] and "--overwrite" in lines[0], (
        lines
    )
    assert "--out" in lines[0] and "Traceback" not in res.stderr
    assert _sha(target) == before
    # a second run into a fresh --out creates its file; a third into the same --out refuses
    out = tmp_path / "mine"
    first = _mixing(2, tmp_path, "--protocol", "allreduce", "--trials", "2", "--out", str(out))
    assert first.returncode == 0, first.stderr
    mine = out / "allreduce-n2.h5"
    made = _sha(mine)
    again = _mixing(2, tmp_path, "--protocol", "allreduce", "--trials", "3", "--out", str(out))
    assert again.returncode == 2 and str(mine) in again.stderr and _sha(mine) == made
    # with --overwrite it replaces (3 trials now)
    over = _mixing(2, tmp_path, "--protocol", "allreduce", "--trials", "3", "--out", str(out), "--overwrite")
    assert over.returncode == 0, over.stderr
    assert read_attrs(mine)["trials"] == 3 and sorted(p.name for p in out.iterdir()) == [mine.name]


def test_sweep_checks_every_output_before_launching(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mpiml.mixing import sweep as sweep_mod

    (tmp_path / "figure3.md").write_text("kept")
    (tmp_path / "allreduce-n3.h5").write_text("kept too")
    assert sweep_mod.existing_outputs([2, 3], ["allreduce"], tmp_path) == [
        tmp_path / "allreduce-n3.h5",
        tmp_path / "figure3.md",
    ]
    launched: list[tuple[str, int]] = []
    monkeypatch.setattr(sweep_mod, "run_one", lambda p, n, *a, **k: launched.append((p, n)))  # records only
    with pytest.raises(FileExistsError, match=r"allreduce-n3.h5 \(and 1 more\) exists: pass --overwrite"):
        sweep_mod.sweep([2, 3], ["allreduce"], tmp_path, trials=2)
    assert launched == [] and (tmp_path / "figure3.md").read_text() == "kept"
    assert sweep_mod.main(["--n", "2", "3", "--protocols", "allreduce", "--out", str(tmp_path)]) == 2
    assert launched == []
    monkeypatch.setenv("PMI_SIZE", "4")  # one rank of four: the sweep launches its own ranks
    with pytest.raises(SystemExit):
        sweep_mod.main(["--n", "2", "--out", str(tmp_path / "new")])
