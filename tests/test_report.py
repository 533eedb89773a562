"""``mpiml report``: the streaming time partition against a brute-force oracle, its parts
summing to wall on real runs, the communication matrix against h5py, late sender on a
hand-made run, overlap, damaged runs, the renderers and the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpiml.algorithms  # noqa: F401  (registers the kinds the hand-made runs use)
import mpiml.protocols  # noqa: F401
from mpiml.io.runfile import RankFile, RunFile, rank_file_name
from mpiml.report.analysis import build_report, load
from mpiml.report.timeline import IN_FLIGHT, rank_timeline
from mpiml.testing import launch_env, run_ranks
from mpiml.trace import EVENT_DTYPE

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]
ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "runs"
STEPS = ["--set", "run.steps=36", "--set", "run.eval_every=12"]

JOBS = {  # name: (ranks, job file or None, extra --set)
    "sgd": (2, None, ["algorithm.name=sgd"]),
    "dasgd": (2, None, ["algorithm.name=dasgd"]),
    "dpsgd": (3, "examples/dpsgd_ring.toml", []),
    "async_gossip": (3, "examples/async_gossip_ring.toml", []),
    # rank 1's compute stretched 10x ([straggler]); local steps between averages let it fall behind
    "straggler": (
        2,
        None,
        ["algorithm.name=local_sgd", "algorithm.tau=8", "straggler.ranks=[1]", "straggler.factor=10.0"],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small real run of each algorithm, made once for the module."""
    out = tmp_path_factory.mktemp("report_runs")
    made = {}
    for name, (n, job, sets) in JOBS.items():
        args = [*MPIML, "train", *([str(ROOT / job)] if job else []), *STEPS, "--set", f"run.name={name}"]
        args += [a for s in sets for a in ("--set", s)]
        res = run_ranks(n, [*args, "--out", str(out)], TIMEOUT, cwd=str(out))
        assert not res.timed_out and res.returncode == 0, res.stderr[-2000:]
        made[name] = out / name
    return made


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MPIML, "report", *args], capture_output=True, text=True, timeout=TIMEOUT, env=launch_env()
    )


# --- the partition against a brute-force oracle -------------------------------------------


class _FakeRun:
    """The reader's chunked interface (``iter_columns``, ``kind_names``) over events in
    memory, so that hypothesis can try hundreds of event sets without writing files."""

    def __init__(self, events: np.ndarray, kinds: dict[str, str]) -> None:
        self._ev, self.kinds, self.attrs = events, kinds, {}
        self.kind_names = list(kinds)
        self.resumed_at_steps = np.zeros(0, np.int64)

    def iter_columns(self, rank, fields, *, steps=None, time=None, chunk=65536):  # noqa: ANN001, ANN202
        ev = self._ev
        if time is not None:
            ev = ev[(ev["t_end"] >= time[0]) & (ev["t_start"] < time[1])]
        for i in range(0, len(ev), chunk):
            part = ev[i : i + chunk]
            codes = np.array([self.kind_names.index(k) for k in part["kind"]], np.int32)
            yield {f: codes if f == "kind" else part[f] for f in fields}


# docs/report.md: an instant covered by several categories counts for the first of these
ORDER = ("compute", "codec", "communication", "wait", "bookkeeping")

KIND_OF = {
    "c": "compute",
    "k": "codec",
    "m": "communication",
    "w": "wait",
    "b": "bookkeeping",
    "f": IN_FLIGHT,
}

interval = st.tuples(
    st.sampled_from(sorted(KIND_OF)),
    st.integers(0, 40),
    st.integers(0, 15),
)


def _events(spec: list[tuple[str, int, int]]) -> np.ndarray:
    rows = sorted(spec, key=lambda x: x[1])
    ev = np.zeros(len(rows), dtype=[(n, "U32" if n == "kind" else EVENT_DTYPE[n]) for n in EVENT_DTYPE.names])
    for i, (k, s, d) in enumerate(rows):
        ev[i] = (i, k, s * 0.25, (s + d) * 0.25, 0, -1, -1)
    return ev


def _oracle(ev: np.ndarray, time: tuple[float, float] | None) -> dict[str, float]:
    """Per elementary segment, in plain Python: which categories cover its midpoint."""
    s, e = ev["t_start"].tolist(), ev["t_end"].tolist()
    if time is not None:
        s = [min(max(x, time[0]), time[1]) for x in s]
        e = [min(max(x, time[0]), time[1]) for x in e]
    cats = [KIND_OF[k] for k in ev["kind"]]
    edges = sorted(set(s) | set(e))
    out = dict.fromkeys([*ORDER, "idle", "in_flight", "hidden"], 0.0)
    lo, hi = min(s), max(e)
    for a, b in zip(edges, edges[1:], strict=False):
        if a < lo or b > hi:
            continue
        mid = (a + b) / 2
        on = {c for c, x, y in zip(cats, s, e, strict=True) if x <= mid < y}
        first = next((c for c in ORDER if c in on), "idle")
        out[first] += b - a
        if IN_FLIGHT in on:
            out["in_flight"] += b - a
            if on & {"compute", "codec"}:
                out["hidden"] += b - a
    out["wall"] = hi - lo
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(interval, min_size=1, max_size=30),
    st.integers(1, 7),
    st.one_of(st.none(), st.tuples(st.integers(0, 20), st.integers(1, 30))),
)
def test_partition_matches_brute_force(spec, chunk, window) -> None:  # noqa: ANN001
    ev = _events(spec)
    time = None if window is None else (window[0] * 0.25, (window[0] + window[1]) * 0.25)
    if time is not None:
        ev = ev[(ev["t_end"] >= time[0]) & (ev["t_start"] < time[1])]
        if not len(ev):
            return
    t = rank_timeline(_FakeRun(ev, KIND_OF), 0, time=time, chunk=chunk)
    want = _oracle(ev, time)
    for c in ORDER:
        assert t.exclusive[c] == pytest.approx(want[c], abs=1e-9), c
    assert t.idle == pytest.approx(want["idle"], abs=1e-9)
    assert t.in_flight == pytest.approx(want["in_flight"], abs=1e-9)
    assert t.hidden == pytest.approx(want["hidden"], abs=1e-9)
    assert t.wall == pytest.approx(want["wall"], abs=1e-9)


# --- real runs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(JOBS))
def test_parts_and_untraced_sum_to_wall(runs: dict[str, Path], name: str) -> None:
    run = load(runs[name])
    for r in run.ranks:
        t = rank_timeline(run, r)
        small = rank_timeline(run, r, chunk=5)  # streaming: the result does not depend on the chunk
        assert t.wall > 0
        assert sum(t.exclusive.values()) + t.idle == pytest.approx(t.wall, rel=1e-9)
        assert t.idle >= 0 and 0 <= t.hidden <= t.in_flight + 1e-12
        assert small.idle == pytest.approx(t.idle, rel=1e-9, abs=1e-12)
        assert small.in_flight == pytest.approx(t.in_flight, rel=1e-9, abs=1e-12)
        assert len(t.step_times) == 35  # 36 steps: 35 intervals between first events
    res = _report(str(runs[name]))
    assert res.returncode == 0, res.stderr
    assert "idle" in res.stdout and "Time per rank and role" in res.stdout


@pytest.mark.parametrize("name", ["dpsgd", "async_gossip"])
def test_comm_matrix_equals_traced_bytes(runs: dict[str, Path], name: str) -> None:
    want: dict[str, dict[str, int]] = {}
    with h5py.File(runs[name] / "run.h5", "r") as f:
        for r in f["ranks"]:
            ev = f[f"ranks/{r}/events"][()]
            sends = np.isin(ev["kind"], [b"send", b"push"])
            for p, b in zip(ev["peer"][sends], ev["nbytes"][sends], strict=True):
                want.setdefault(r, {}).setdefault(str(p), 0)
                want[r][str(p)] += int(b)
    assert want, "the run traced no bytes to peers"
    doc = json.loads(_report(str(runs[name]), "--json").stdout)
    (sec,) = [s for s in doc["runs"][0]["sections"] if s["key"] == "comm_matrix"]
    assert sec["data"]["matrix"] == want
    row = {str(r[0]): r[-1] for r in sec["rows"]}
    assert row == {r: sum(v.values()) for r, v in want.items()}


def test_sections_apply_only_where_they_do(runs: dict[str, Path]) -> None:
    keys = {name: {s.key for s in build_report(load(path)).sections} for name, path in runs.items()}
    assert {"summary", "time", "pop", "stragglers", "kinds"} <= keys["sgd"]
    assert "late_sender" not in keys["sgd"] and "comm_matrix" not in keys["sgd"]
    assert {"late_sender", "late_sender_pairs", "comm_matrix"} <= keys["dpsgd"]
    assert "comm_matrix" in keys["async_gossip"] and "late_sender" not in keys["async_gossip"]


def test_json_and_markdown(runs: dict[str, Path]) -> None:
    res = _report(str(runs["sgd"]), str(runs["dpsgd"]), "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [Path(r["path"]).parent.name for r in doc["runs"]] == ["sgd", "dpsgd"]
    assert all(r["missing"] == [] for r in doc["runs"])
    md = _report(str(runs["sgd"]), str(runs["dpsgd"]), "--markdown")
    assert md.returncode == 0, md.stderr
    lines = md.stdout.splitlines()
    assert "|   | run 1 | run 2 |" in lines  # the summary: one column per run
    assert any(line.startswith("|---") for line in lines)
    assert "### Time per rank and role (seconds)" in lines


def test_plots_are_written(runs: dict[str, Path], tmp_path: Path) -> None:
    res = _report(str(runs["dpsgd"]), "--plots", str(tmp_path / "fig"))
    assert res.returncode == 0, res.stderr
    assert {"metrics.png", "timeline.png", "comm_matrix.png"} <= {
        p.name for p in (tmp_path / "fig").iterdir()
    }


def test_windows_cut_and_clip(runs: dict[str, Path]) -> None:
    doc = json.loads(_report(str(runs["dpsgd"]), "--json", "--steps", "10:20").stdout)
    (summary,) = [s for s in doc["runs"][0]["sections"] if s["key"] == "summary"]
    assert ["steps", "10 (steps 10..19, 0-based)"] in summary["rows"]
    run = load(runs["dpsgd"])
    whole = rank_timeline(run, 0)
    a = whole.t_first + 0.25 * whole.wall
    b = a + 0.5 * whole.wall
    for r in (0, 1, 2):
        t = rank_timeline(run, r, time=(a, b))
        assert a <= t.t_first and t.t_last <= b
        assert sum(t.exclusive.values()) + t.idle == pytest.approx(t.wall, rel=1e-9)


def test_the_slowed_rank_is_the_straggler(runs: dict[str, Path]) -> None:
    (sec,) = [s for s in build_report(load(runs["straggler"])).sections if s.key == "stragglers"]
    assert [row[0] for row in sec.rows] == [1]
    assert any("rank 1: 36 slowed steps, mean x10.00" in n for n in sec.notes)


def test_straggler_threshold_flags_the_slow_rank(runs: dict[str, Path]) -> None:
    rep = build_report(load(runs["dpsgd"]), straggler_threshold=-1.0)  # every rank above "-100 %"
    (sec,) = [s for s in rep.sections if s.key == "stragglers"]
    assert [row[0] for row in sec.rows] == [0, 1, 2]
    rep = build_report(load(runs["dpsgd"]), straggler_threshold=100.0)
    (sec,) = [s for s in rep.sections if s.key == "stragglers"]
    assert sec.rows == [] and "No straggler" in sec.notes[0]


# --- hand-made runs ------------------------------------------------------------------------


def _write_run(folder: Path, events: dict[int, list[tuple]]) -> Path:
    """A schema-2 run file written with mpiml's own writers, events as given."""
    folder.mkdir(parents=True)
    rf = RunFile(folder, len(events), {"config": "{}", "algorithm": "handmade"}, None)
    for r, rows in events.items():
        f = RankFile(folder, r, 0.0, None)
        f.append_events(
            np.array([(s, k.encode(), a, b, n, p, m) for s, k, a, b, n, p, m in rows], EVENT_DTYPE)
        )
        f.close()
    rf.close()
    return folder


def test_late_sender_on_a_hand_made_run(tmp_path: Path) -> None:
    # rank 0 sends to rank 1: message 0 posted 0.8 s after its receive (late 0.8 s),
    # message 1 before it (not late), message 2 posted 0.5 s late but the receive took
    # only 0.2 s (late 0.2 s: bounded by the receive's duration)
    run = _write_run(
        tmp_path / "ls",
        {
            0: [
                (0, "send", 1.0, 1.5, 8, 1, 0),
                (1, "send", 2.0, 2.1, 8, 1, 1),
                (2, "send", 3.0, 3.1, 8, 1, 2),
            ],
            1: [
                (0, "recv", 0.2, 1.6, 8, 0, 0),
                (1, "recv", 2.05, 2.2, 8, 0, 1),
                (2, "recv", 2.5, 2.7, 8, 0, 2),
            ],
        },
    )
    rep = build_report(load(run))
    (per_rank,) = [s for s in rep.sections if s.key == "late_sender"]
    assert per_rank.rows == [[1, 3, 2, pytest.approx(1.0), pytest.approx(0.8)]]
    (pairs,) = [s for s in rep.sections if s.key == "late_sender_pairs"]
    assert pairs.rows == [[0, 1, 3, 2, pytest.approx(1.0), pytest.approx(0.8)]]


def _shares(path: Path) -> tuple[float, float]:
    """(overlap, blocked share) over both ranks: hidden / in flight, under-a-wait / in flight."""
    run = load(path)
    tl = [rank_timeline(run, r) for r in (0, 1)]
    fly = sum(t.in_flight for t in tl)
    return sum(t.hidden for t in tl) / fly, sum(t.blocked for t in tl) / fly


def test_overlap_and_blocked_share_of_dasgd() -> None:
    # recorded over a 1 Gbit/s shaped link (tests/fixtures/runs/README.md): a span ends at
    # its observed completion, so both overlap ~0.6; without progress ~a fifth is blocked
    high, low = FIXTURES / "dasgd_overlap_high", FIXTURES / "dasgd_progress_none"
    (o_high, b_high), (o_low, b_low) = _shares(high), _shares(low)
    assert o_high == pytest.approx(0.64, abs=0.01) and o_low == pytest.approx(0.61, abs=0.01)
    assert b_high < 0.01 and b_low > 0.15


# --- damaged runs and bad paths --------------------------------------------------------------


def test_damaged_run_reports_what_is_there(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(runs["dpsgd"], run)
    (run / rank_file_name(2)).unlink()
    victim = run / rank_file_name(1)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated: a kill during a write
    res = _report(str(run))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert "missing: rank 2: file missing" in res.stdout
    assert "missing: rank 1: unreadable:" in res.stdout
    assert "Time per rank and role" in res.stdout  # rank 0 is reported
    doc = json.loads(_report(str(run), "--json").stdout)
    assert doc["runs"][0]["missing"][0] == "rank 2: file missing"


def test_not_a_run_file_is_one_line_and_status_2(tmp_path: Path) -> None:
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    for path, why in (
        (junk, "not a readable mpiml run file"),
        (tmp_path / "nowhere", "no such run folder or file"),
    ):
        res = _report(str(path))
        assert res.returncode == 2
        assert len(res.stderr.strip().splitlines()) == 1 and why in res.stderr


def test_a_message_is_paired_whatever_comes_after_it(tmp_path: Path) -> None:
    # rank 1 sends rank 0 a message every 0.5 s for 5 s; each is received right away
    run = _write_run(
        tmp_path / "pair",
        {
            0: [(k, "recv", 0.5 * k + 0.05, 0.5 * k + 0.1, 8, 1, k) for k in range(10)],
            1: [(k, "send", 0.5 * k, 0.5 * k + 0.1, 8, 0, k) for k in range(10)],
        },
    )
    (sec,) = [s for s in build_report(load(run)).sections if s.key == "late_sender"]
    assert sec.rows == [[0, 10, 0, 0.0, 0.0]]


# --- review fixes (issue 15) ------------------------------------------------------------------


def _pop_run(folder: Path) -> Path:
    """Three ranks, two steps of 1 s from t = 0 (no set-up rows): rank r computes for
    c_r = 0.5, 0.25, 0.15 s at the start of each step and waits for the rest."""
    rows = {}
    for r, c in enumerate((0.5, 0.25, 0.15)):
        rows[r] = [
            row
            for s in (0, 1)
            for row in ((s, "compute", s, s + c, 0, -1, -1), (s, "wait", s + c, s + 1.0, 0, -1, -1))
        ]
    return _write_run(folder, rows)


def test_pop_efficiencies_follow_their_definitions(tmp_path: Path) -> None:
    path = _pop_run(tmp_path / "pop")
    # the oracle, from the raw events of the training steps (step >= 0; the section's
    # notes): useful u_r = time in compute and codec kinds; runtime T = the longest rank's
    # time from its first event's start to its last event's end
    with h5py.File(path / "run.h5", "r") as f:
        cat = {
            n.decode(): c.decode() for n, c in zip(f["kinds"]["name"], f["kinds"]["category"], strict=True)
        }
        ev = {r: f[f"ranks/{r}/events"][()] for r in f["ranks"]}
    u, spans = [], []
    for e in ev.values():
        e = e[e["step"] >= 0]
        useful = np.array([cat[k.decode()] in ("compute", "codec") for k in e["kind"]])
        u.append(float((e["t_end"] - e["t_start"])[useful].sum()))
        spans.append(float(e["t_end"].max() - e["t_start"].min()))
    u_mean, u_max, T = sum(u) / len(u), max(u), max(spans)
    (pop,) = [s for s in build_report(load(path)).sections if s.key == "pop"]
    assert any("mean(useful) / max(useful)" in n and "max(useful) / runtime" in n for n in pop.notes)
    (row,) = [r for r in pop.rows if r[0] == "training ranks"]
    lb, comm, pe = row[2:5]
    assert lb == pytest.approx(u_mean / u_max) and lb != pytest.approx(min(u) / u_max)
    assert comm == pytest.approx(u_max / T) and comm != pytest.approx(u_mean / T)
    assert pe == pytest.approx(u_mean / T)
    assert (lb, comm, pe) == (pytest.approx(0.6), pytest.approx(0.5), pytest.approx(0.3))


def test_plots_folder_that_is_a_file_or_cannot_be_made_is_one_line_before_the_report(tmp_path: Path) -> None:
    run = _pop_run(tmp_path / "run")
    a_file = tmp_path / "a_file"
    a_file.write_text("precious\n")
    for bad, why in ((a_file, "exists and is not a folder"), ("/proc/nope", "cannot create the folder")):
        res = _report(str(run), "--plots", str(bad))
        assert res.returncode == 2, res.stderr
        assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1 and why in res.stderr
    assert a_file.read_text() == "precious\n"
    res = _report(str(run), "--plots", str(tmp_path / "new" / "fig"))  # created, parents too
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "new" / "fig" / "timeline.png").is_file()


def test_window_values_may_start_with_a_minus(tmp_path: Path) -> None:
    run = _pop_run(tmp_path / "run")  # steps 0 and 1, from t = 0 to 2 s
    for opt, value, wall in (("--steps", "-1:1", 1.0), ("--time", "-1:0.5", 0.5)):
        res = _report(str(run), "--json", opt, value)
        assert res.returncode == 0, res.stderr
        (summary,) = [s for s in json.loads(res.stdout)["runs"][0]["sections"] if s["key"] == "summary"]
        assert ["wall (s)", pytest.approx(wall)] in summary["rows"]


class _StageRun:
    """The reader's interface for :func:`bubble_section`: two stage ranks of a pipeline
    ``algorithm``, each computing 0.75 s then waiting 0.25 s."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.config = {"algorithm": {"name": algorithm, "stages": 2, "micro_batches": 4}, "run": {"steps": 1}}
        self.ranks = [0, 1]
        self.kinds = {"compute": "compute", "wait": "wait"}
        self.kind_names = list(self.kinds)

    def role_info(self, r: int) -> dict[str, object]:
        return {"kind": "stage", "stage": r, "group": 0}

    def iter_columns(self, rank, fields, *, steps=None, time=None, chunk=65536):  # noqa: ANN001, ANN202
        yield {
            "step": np.array([0, 0]),
            "kind": np.array([0, 1], np.int32),
            "t_start": np.array([0.0, 0.75]),
            "t_end": np.array([0.75, 1.0]),
        }


def test_bubble_compares_with_an_ideal_only_when_there_is_one() -> None:
    from mpiml.report.pipelines import bubble_section

    sd = bubble_section(_StageRun("sdpipe"))
    assert sd is not None and [row[5] for row in sd.rows] == [pytest.approx(0.25)] * 2
    assert not any("measured and ideal" in n for n in sd.notes)
    assert any("no ideal for sdpipe" in n for n in sd.notes)
    gp = bubble_section(_StageRun("gpipe"))
    assert gp is not None and any("measured and ideal differ" in n for n in gp.notes)


def test_plots_draw_the_reports_window(tmp_path: Path) -> None:
    from mpiml.io import load_run
    from mpiml.report.plots import timeline

    run = _pop_run(tmp_path / "run")
    res = _report(str(run), "--steps", "1:2", "--plots", str(tmp_path / "fig"))
    assert res.returncode == 0, res.stderr
    drawn = (tmp_path / "fig" / "timeline.png").read_bytes()
    assert drawn == timeline(load_run(run), tmp_path / "want.png", steps=(1, 2)).read_bytes()
    assert drawn != timeline(load_run(run), tmp_path / "default.png").read_bytes()


def test_plots_without_matplotlib_is_one_line_before_the_report(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None; from mpiml.report.cli import main; "
        f"sys.exit(main([{str(runs['sgd'])!r}, '--plots', {str(tmp_path / 'figs')!r}]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, env=launch_env()
    )
    assert res.returncode == 2 and res.stdout == "", res.stdout
    assert "pip install 'mpiml[plots]'" in res.stderr and "Traceback" not in res.stderr
