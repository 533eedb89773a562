"""The report's protocol sections (mpiml.report.protocols) on small real runs, each made
once per module and checked against what h5py reads from the same files; and the two
recorded DaSGD runs of tests/fixtures/runs (overlap with and without progress)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiml.io import load_run
from mpiml.pipeline import Timetable
from mpiml.report.protocols import protocol_sections
from mpiml.testing import run_ranks

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "runs"
MPIML = [sys.executable, "-m", "mpi4py", "-m", "mpiml.cli"]

RUNS = {  # name: (ranks, example, --set overrides)
    "async_ps": (3, "async_ps_digits", ["run.steps=40", "run.eval_every=20"]),
    "1f1b": (2, "pipeline_1f1b_digits", ["run.steps=20", "run.eval_every=20", "algorithm.stages=2"]),
    "dsp": (
        2,
        "dsp_digits",
        [
            "run.steps=20",
            "run.eval_every=20",
            "algorithm.stages=2",
            "algorithm.dsp_p=[1,0]",
            "algorithm.dsp_m=[2,0]",
        ],
    ),
    "sdpipe": (4, "sdpipe_digits", ["run.steps=30", "run.eval_every=30"]),
    "async_gossip": (3, "async_gossip_ring", ["run.steps=30", "run.eval_every=10"]),
    "sgd": (2, "sgd_digits", ["run.steps=20", "run.eval_every=10"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("protocol_runs")
    paths = {}
    for name, (n, example, sets) in RUNS.items():
        args = [*MPIML, "train", str(ROOT / "examples" / f"{example}.toml"), "--out", str(out)]
        args += [a for s in [*sets, f"run.name={name}", "checkpoint.every=0"] for a in ("--set", s)]
        res = run_ranks(n, args, 120, cwd=str(out))
        assert res.returncode == 0 and not res.timed_out, f"{name}: {res.stdout[-1500:]} {res.stderr[-1500:]}"
        paths[name] = out / name
    return paths


def _sections(path: Path) -> dict[str, object]:
    return {s.key: s for s in protocol_sections(load_run(path))}


def _kinds(f: h5py.File) -> dict[str, str]:
    return {n.decode(): c.decode() for n, c in zip(f["kinds"]["name"], f["kinds"]["category"], strict=True)}


def test_ps_staleness_counts_equal_ps_apply(runs: dict[str, Path]) -> None:
    s = _sections(runs["async_ps"])
    assert "consensus" not in s and "bubble" not in s and "groups" not in s  # NaN metric, no stages
    st = s["staleness"]
    with h5py.File(runs["async_ps"] / "run.h5") as f:
        log = f["ranks/2/ps_apply"][()]  # 3 ranks: 2 workers, the server last
    stale = log["version"] - log["version_read"]
    values, counts = np.unique(stale, return_counts=True)
    assert sum(st.data["histogram"]["counts"]) == log.size
    assert st.data["histogram"] == {"values": values.tolist(), "counts": counts.tolist()}
    shard = st.rows[0]
    assert shard[:3] == ["parameter server", "shard 0", log.size]
    assert shard[3:7] == [float(x) for x in np.percentile(stale, [0, 50, 95, 100])]
    per_worker = {r[1]: r[2] for r in st.rows[1:]}
    assert per_worker == {f"shard 0, worker {w}": int((log["worker"] == w).sum()) for w in (0, 1)}


def test_sgd_has_no_protocol_section_but_consensus(runs: dict[str, Path]) -> None:
    keys = set(_sections(runs["sgd"]))
    assert keys == {"consensus"}


def test_consensus_series_equals_metric(runs: dict[str, Path]) -> None:
    c = _sections(runs["async_gossip"])["consensus"]
    with h5py.File(runs["async_gossip"] / "run.h5") as f:
        m = f["metrics/consensus_distance"][()]
    assert c.data["series"] == {
        "step": m["step"].tolist(),
        "time": m["time"].tolist(),
        "value": m["value"].tolist(),
    }
    assert c.rows[0] == ["first", int(m["step"][0]), float(m["time"][0]), float(m["value"][0])]
    assert c.rows[-1] == ["last", int(m["step"][-1]), float(m["time"][-1]), float(m["value"][-1])]
    assert np.all(m["value"] > 0)


def test_async_gossip_staleness_is_the_drains_age(runs: dict[str, Path]) -> None:
    st = _sections(runs["async_gossip"])["staleness"]
    ages = []
    with h5py.File(runs["async_gossip"] / "run.h5") as f:
        for r in range(3):
            ex = f[f"ranks/{r}/exchanges"][()]
            ages.append(ex["age"][(ex["peer"] == -1) & (ex["pushes"] > 0)])
    floor = np.floor(np.concatenate(ages)).astype(int)
    values, counts = np.unique(floor, return_counts=True)
    assert st.data["histogram"] == {"values": values.tolist(), "counts": counts.tolist()}
    assert [r[2] for r in st.rows] == [a.size for a in ages]


def test_dsp_staleness_is_the_timetables_layerwise_staleness(runs: dict[str, Path]) -> None:
    st = _sections(runs["dsp"])["staleness"]
    table, steps = Timetable([1, 0], [2, 0], 20), 20
    for k, m_k in enumerate((2, 0)):
        # per batch n: backwards of stage k between forward F = n + d_k and backward F + m_k
        expect = [
            table.counts(k, n + table.d[k] + m_k - 1)[1] - table.counts(k, n + table.d[k] - 1)[1]
            for n in range(steps)
        ]
        values, counts = np.unique(expect, return_counts=True)
        assert st.data["histograms"][f"stage {k}"] == {"values": values.tolist(), "counts": counts.tolist()}
        assert st.rows[k][4] == m_k  # the median is m_k = Δt_k
    assert "bubble" in _sections(runs["dsp"])


def test_sdpipe_groups_equal_the_schedulers_table(runs: dict[str, Path]) -> None:
    g = _sections(runs["sdpipe"])["groups"]
    with h5py.File(runs["sdpipe"] / "run.h5") as f:
        groups = f["ranks/3/sdpipe_groups"][()]
    sizes, counts = np.unique(groups["size"], return_counts=True)
    assert g.rows == [
        [
            0,
            groups.size,
            float(groups["size"].mean()),
            ", ".join(f"{v}: {c}" for v, c in zip(sizes, counts, strict=True)),
            g.rows[0][4],
            int((groups["kind"] == 1).sum()),
            int((groups["kind"] == 2).sum()),
        ]
    ]
    assert sum(int(x.split()[-1]) for x in g.rows[0][4].split(", ")) == groups.size
    assert g.data["sizes"]["stage 0"] == {"values": sizes.tolist(), "counts": counts.tolist()}


def test_sdpipe_staleness_is_the_batch_spread_of_a_group(runs: dict[str, Path]) -> None:
    st = _sections(runs["sdpipe"])["staleness"]
    batches: dict[int, list[int]] = {}
    with h5py.File(runs["sdpipe"] / "run.h5") as f:
        for r in range(3):  # the stage replicas; rank 3 is the scheduler
            av = f[f"ranks/{r}/sdpipe_average"][()]
            for seq, b in zip(av["seq"], av["batch"], strict=True):
                batches.setdefault(int(seq), []).append(int(b))
    spread = [max(b) - min(b) for b in batches.values() if len(b) > 1]
    values, counts = np.unique(spread, return_counts=True)
    assert st.data["histogram"] == {"values": values.tolist(), "counts": counts.tolist()}


@pytest.mark.parametrize("name", ["1f1b", "dsp", "sdpipe"])
def test_bubble_is_wait_over_wall(runs: dict[str, Path], name: str) -> None:
    b = _sections(runs[name])["bubble"]
    with h5py.File(runs[name] / "run.h5") as f:
        waits = {k for k, c in _kinds(f).items() if c == "wait"}
        stages = [
            r for r, role in enumerate(json.loads(f.attrs["layout"])["roles"]) if role["kind"] == "stage"
        ]
        expect = {}
        for r in stages:
            ev = f[f"ranks/{r}/events"][()]
            ev = ev[ev["step"] >= 0]
            sel = np.isin(np.char.decode(ev["kind"]), sorted(waits))
            wall = ev["t_end"].max() - ev["t_start"].min()
            expect[r] = (ev["t_end"][sel] - ev["t_start"][sel]).sum() / wall
    got = {row[0]: row[5] for row in b.rows}
    assert got.keys() == expect.keys()
    for r in expect:
        assert got[r] == pytest.approx(expect[r], rel=1e-9)
        assert 0 < got[r] < 1
    if name == "1f1b":  # the schedule's ideal beside the measured one: (K-1)/(m+K-1), K = 2, m = 4
        assert [row[6] for row in b.rows] == [pytest.approx(1 / 5)] * 2


# ---------------------------------------------------------------- recorded fixtures


def _union(starts: np.ndarray, ends: np.ndarray) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, z in sorted(zip(starts.tolist(), ends.tolist(), strict=True)):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], z)
        else:
            out.append([a, z])
    return [(a, z) for a, z in out]


def _covered(spans: list[tuple[float, float]], by: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(z, d) - max(a, c)) for a, z in spans for c, d in by)


def overlap(path: Path) -> dict[str, float]:
    """Oracle over the whole run (both ranks): in-flight time, the part of it covered by
    compute ("overlap") and the part blocked in a wait ("blocked")."""
    flight = covered = blocked = 0.0
    run = load_run(path)
    for r in (0, 1):
        ev = run.events[r]
        cat = np.array([run.kinds[k] for k in ev["kind"]])
        spans = _union(ev["t_start"][cat == "in_flight"], ev["t_end"][cat == "in_flight"])
        flight += sum(z - a for a, z in spans)
        covered += _covered(spans, _union(ev["t_start"][cat == "compute"], ev["t_end"][cat == "compute"]))
        blocked += _covered(spans, _union(ev["t_start"][cat == "wait"], ev["t_end"][cat == "wait"]))
    return {"in_flight": flight, "overlap": covered / flight, "blocked": blocked / flight}


def test_recorded_dasgd_fixtures_hide_with_progress_and_block_without() -> None:
    high, none = FIXTURES / "dasgd_overlap_high", FIXTURES / "dasgd_progress_none"
    assert load_run(high).config["algorithm"]["progress"] == "test"
    assert load_run(none).config["algorithm"]["progress"] == "none"
    h, n = overlap(high), overlap(none)
    print(f"dasgd_overlap_high: {h}\ndasgd_progress_none: {n}")
    # without progress the average moves only in the wait at the merge: a fifth of its
    # time in flight is blocked; with MPI_Test between compute chunks none is
    assert h["blocked"] < 0.01 < 0.1 < n["blocked"]
    assert h["overlap"] > 0.5 and n["overlap"] > 0.5  # the span covers the compute either way (README)
