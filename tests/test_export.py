"""``mpiml trace export``: Chrome JSON, Perfetto protobuf and OTF2 of a real run, read
back and compared with the run file's events (read with plain h5py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from mpiml.report.export import main
from mpiml.testing import run_ranks

TIMEOUT = 120
N = 3
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """D-PSGD on a ring of 3 ranks, 30 steps: gossip rounds with send/recv messages."""
    tmp = tmp_path_factory.mktemp("export")
    cmd = [sys.executable, "-m", "mpiml.cli", "train", str(EXAMPLES / "dpsgd_ring.toml")]
    cmd += ["--set", "run.steps=30", "--set", "run.eval_every=10", "--out", str(tmp / "results")]
    res = run_ranks(N, cmd, TIMEOUT, cwd=str(tmp))
    assert not res.timed_out and res.returncode == 0, res.stderr[-2000:]
    return tmp / "results" / "dpsgd_ring"


def _events(run: Path, rank: int) -> np.ndarray:
    with h5py.File(run / "run.h5", "r") as f:
        return f[f"ranks/{rank}/events"][()]


def _export(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _chrome(capsys: pytest.CaptureFixture[str], run: Path, out: Path, *args: str) -> list[dict[str, Any]]:
    code, _, err = _export(capsys, str(run), "--format", "chrome", "-o", str(out), *args)
    assert code == 0, err
    return json.loads(out.read_text())["traceEvents"]


def _messages(ev: np.ndarray, rank: int) -> tuple[set[tuple[int, int, int]], set[tuple[int, int, int]]]:
    """(sends, recvs) of a rank as (src, dst, msg)."""
    kind = ev["kind"].astype(str)
    sends = {
        (rank, int(p), int(m)) for k, p, m in zip(kind, ev["peer"], ev["msg"], strict=True) if k == "send"
    }
    recvs = {
        (int(p), rank, int(m)) for k, p, m in zip(kind, ev["peer"], ev["msg"], strict=True) if k == "recv"
    }
    return sends, recvs


def _pairs(run: Path, ranks: list[int], keep: Any = None) -> set[tuple[int, int, int]]:
    sends: set[tuple[int, int, int]] = set()
    recvs: set[tuple[int, int, int]] = set()
    for r in ranks:
        ev = _events(run, r)
        s, v = _messages(ev if keep is None else ev[keep(ev)], r)
        sends |= s
        recvs |= v
    return sends & recvs


def test_chrome_one_process_per_rank_named_by_role(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _chrome(capsys, run, tmp_path / "t.json")
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {r: f"rank {r} · replica (shard {r})" for r in range(N)}
    counts = Counter(e["pid"] for e in events if e["ph"] == "X")
    assert counts == {r: len(_events(run, r)) for r in range(N)}
    # the args carry the run file's columns, event by event (file order within a rank)
    for r in range(N):
        ev = _events(run, r)
        xs = [e for e in events if e["ph"] == "X" and e["pid"] == r]
        assert [x["name"] for x in xs] == ev["kind"].astype(str).tolist()
        assert [x["args"]["peer"] for x in xs] == ev["peer"].tolist()
        assert [x["args"]["bytes"] for x in xs] == ev["nbytes"].tolist()
        assert [x["args"]["step"] for x in xs] == ev["step"].tolist()
        assert np.allclose([x["ts"] for x in xs], ev["t_start"] * 1e6)
    # a thread per activity, and no two slices of one thread overlap (nesting stays valid)
    threads: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in events:
        if e["ph"] == "X":
            threads[e["pid"], e["tid"]].append((e["ts"], e["ts"] + e["dur"]))
    for spans in threads.values():
        spans.sort()
        assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False))
    thread_names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {"compute", "in_flight", "send", "recv", "wait"} <= thread_names


def test_chrome_flows_join_each_send_to_its_receive(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = _chrome(capsys, run, tmp_path / "t.json")
    xs = {(e["pid"], e["tid"], e["ts"]): e for e in events if e["ph"] == "X"}
    ends: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for e in events:
        if e["ph"] in "sf":
            ends[e["id"]][e["ph"]].append(e)
    assert len(ends) == len(_pairs(run, list(range(N)))) > 0
    for both in ends.values():
        assert len(both["s"]) == 1 and len(both["f"]) == 1
        s, f = both["s"][0], both["f"][0]
        send, recv = xs[s["pid"], s["tid"], s["ts"]], xs[f["pid"], f["tid"], f["ts"]]
        assert (send["name"], recv["name"], f["bp"]) == ("send", "recv", "e")
        assert send["args"]["peer"] == f["pid"] and recv["args"]["peer"] == s["pid"]
        assert send["args"]["msg"] == recv["args"]["msg"]


def test_window_options_cut(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _chrome(capsys, run, tmp_path / "w.json", "--ranks", "0,2", "--steps", "5:12")
    counts = Counter(e["pid"] for e in events if e["ph"] == "X")

    def steps(ev: np.ndarray) -> np.ndarray:
        return (ev["step"] >= 5) & (ev["step"] < 12)

    assert counts == {r: int(steps(_events(run, r)).sum()) for r in (0, 2)}
    flows = {e["id"] for e in events if e["ph"] == "s"}
    assert len(flows) == len(_pairs(run, [0, 2], steps)) > 0  # only messages between 0 and 2
    assert {e["pid"] for e in events if e["ph"] in "sf"} == {0, 2}

    ev1 = _events(run, 1)
    t0, t1 = float(ev1["t_start"][len(ev1) // 3]), float(ev1["t_start"][len(ev1) // 2])
    events = _chrome(capsys, run, tmp_path / "t.json", "--time", f"{t0!r}:{t1!r}", "--ranks", "1-2")

    def overlap(ev: np.ndarray) -> np.ndarray:
        return (ev["t_end"] >= t0) & (ev["t_start"] < t1)

    counts = Counter(e["pid"] for e in events if e["ph"] == "X")
    assert counts == {r: int(overlap(_events(run, r)).sum()) for r in (1, 2)}
    assert 0 < sum(counts.values()) < len(ev1) + len(_events(run, 2))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "svg"], "--format must be one of chrome, perfetto, otf2 (got 'svg')"),
        (["--format", "chrome", "--ranks", "0,7"], "--ranks: rank 7 is not in the run (ranks 0..2)"),
        (["--format", "chrome", "--ranks", "2-1"], "--ranks: '2-1' is not a rank or a range"),
        (["--format", "chrome", "--steps", "9:3"], "--steps takes A:B with A < B (got '9:3')"),
        (["--format", "chrome", "--time", "x:1"], "--time takes A:B with numbers A < B (got 'x:1')"),
    ],
)
def test_bad_options_are_one_line(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _export(capsys, str(run), "-o", str(tmp_path / "x"), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_perfetto_reads_back_with_slices_and_flows(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("perfetto", reason="the 'perfetto' extra is not installed")
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    out = tmp_path / "t.pftrace"
    code, _, err = _export(capsys, str(run), "--format", "perfetto", "-o", str(out))
    assert code == 0, err
    trace = Trace()
    trace.ParseFromString(out.read_bytes())
    pid: dict[int, int] = {}
    names: dict[int, str] = {}
    parent: dict[int, int] = {}
    for p in trace.packet:
        d = p.track_descriptor
        if p.HasField("track_descriptor") and d.HasField("process"):
            pid[d.uuid], names[d.process.pid] = d.process.pid, d.process.process_name
        elif p.HasField("track_descriptor"):
            parent[d.uuid] = d.parent_uuid
    assert names == {r: f"rank {r} · replica (shard {r})" for r in range(N)}
    begins: Counter[int] = Counter()
    open_: Counter[int] = Counter()
    flows: Counter[int] = Counter()
    terminating: Counter[int] = Counter()
    for p in trace.packet:
        if not p.HasField("track_event"):
            continue
        te = p.track_event
        if te.type == TrackEvent.Type.TYPE_SLICE_BEGIN:
            begins[pid[parent[te.track_uuid]]] += 1
            open_[te.track_uuid] += 1
            flows.update(te.flow_ids)
            terminating.update(te.terminating_flow_ids)
            assert {a.name for a in te.debug_annotations} == {"step", "bytes", "peer", "msg"}
        elif te.type == TrackEvent.Type.TYPE_SLICE_END:
            open_[te.track_uuid] -= 1
    assert begins == {r: len(_events(run, r)) for r in range(N)}
    assert set(open_.values()) == {0}  # every slice ended
    assert set(flows) == set(terminating) and set(flows.values()) == set(terminating.values()) == {1}
    assert len(flows) == len(_pairs(run, list(range(N)))) > 0


def test_otf2_reads_back_events_per_rank(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otf2 = pytest.importorskip("otf2", reason="the 'otf2' extra is not installed")
    out = tmp_path / "archive"
    code, _, err = _export(capsys, str(run), "--format", "otf2", "-o", str(out))
    assert code == 0, err
    enters: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    mpi: Counter[str] = Counter()
    last: dict[str, int] = {}
    with otf2.reader.open(str(out / "traces.otf2")) as trace:
        assert trace.definitions.clock_properties.timer_resolution == 10**9
        for loc, ev in trace.events:
            assert ev.time >= last.get(f"{loc.group.name}/{loc.name}", 0)  # monotone per location
            last[f"{loc.group.name}/{loc.name}"] = ev.time
            if isinstance(ev, otf2.events.Enter):
                enters[loc.group.name] += 1
                kinds[loc.group.name][ev.region.name] += 1
            elif isinstance(ev, otf2.events.MpiSend | otf2.events.MpiRecv):
                mpi[type(ev).__name__] += 1
    for r in range(N):
        name = f"rank {r} · replica (shard {r})"
        ev = _events(run, r)
        assert enters[name] == len(ev)
        assert kinds[name] == Counter(ev["kind"].astype(str).tolist())
    pairs = len(_pairs(run, list(range(N))))
    assert mpi == {"MpiSend": pairs, "MpiRecv": pairs} and pairs > 0


@pytest.mark.parametrize("package", ["perfetto", "otf2"])
def test_missing_package_names_the_extra(run: Path, tmp_path: Path, package: str) -> None:
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "from mpiml.cli import main\n"
        f"sys.exit(main(['trace', 'export', {str(run)!r}, '--format', {package!r}, '-o', {str(tmp_path / 'x')!r}]))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 2, res.stderr
    line = f"{package} export needs the {package} package: pip install 'mpiml[{package}]'"
    assert res.stderr.count("\n") == 1 and line in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_damaged_run_exports_what_is_there(run: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    (damaged / "ranks" / "rank-00001.h5").unlink()
    (damaged / "ranks" / "rank-00002.h5").write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    out = tmp_path / "t.json"
    cmd = [sys.executable, "-m", "mpiml.cli", "trace", "export", str(damaged), "--format", "chrome"]
    cmd += ["-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 2, res.stderr
    assert "rank 1 left out: its file is missing" in lines[0]
    assert "rank 2 left out: its file could not be read" in lines[1]
    events = json.loads(out.read_text())["traceEvents"]
    assert Counter(e["pid"] for e in events if e["ph"] == "X") == {0: len(_events(run, 0))}
    assert not [e for e in events if e["ph"] in "sf"]  # no peer left to receive


def test_resumed_run_pairs_messages_within_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Message ids restart at a resume: a flow joins the send and receive of one segment."""
    cmd = [
        sys.executable,
        "-m",
        "mpiml.cli",
        "train",
        str(EXAMPLES / "dpsgd_ring.toml"),
        "--out",
        str(tmp_path),
    ]
    cmd += ["--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    killed = run_ranks(2, cmd, TIMEOUT, env={**os.environ, "MPIML_KILL_AT_CHECKPOINT": "10"})
    assert not killed.timed_out and killed.returncode != 0
    res = run_ranks(2, [*cmd, "--resume"], TIMEOUT)
    assert not res.timed_out and res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "dpsgd_ring"
    ev = _events(run, 0)
    sends = ev[ev["kind"] == b"send"]
    assert sends["msg"][sends["step"] == 10].tolist() == [0]  # the ids restarted
    events = _chrome(capsys, run, tmp_path / "t.json")
    xs = {(e["pid"], e["tid"], e["ts"]): e for e in events if e["ph"] == "X"}
    ends: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if e["ph"] in "sf":
            ends[e["id"]].append(xs[e["pid"], e["tid"], e["ts"]])
    n_sends = sum(int((_events(run, r)["kind"] == b"send").sum()) for r in (0, 1))
    assert len(ends) == n_sends == 40
    for send, recv in ends.values():
        assert send["args"]["step"] == recv["args"]["step"]  # the same round, not the same id a segment later


def test_lanes_assigned_by_chunk_equal_first_fit_one_event_at_a_time() -> None:
    from mpiml.report.export.tracks import GROUPS, Lanes

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        g = rng.integers(0, 3, n)
        s = np.sort(rng.uniform(0, 10, n))
        e = s + rng.exponential(rng.choice([0.01, 0.3, 2.0]), n)
        one, chunked = Lanes(), Lanes()
        want = [one.place(GROUPS[int(gi)], float(si), float(ei)) for gi, si, ei in zip(g, s, e, strict=True)]
        got: list[tuple[int, bool]] = []
        cuts = sorted({0, n, *rng.integers(0, n, 3).tolist()})
        for a, b in zip(cuts, cuts[1:], strict=False):
            lanes, opens = chunked.assign(g[a:b], s[a:b], e[a:b])
            got += list(zip(lanes, opens, strict=True))
        assert got == want


# --- review fixes (issue 15): the output folder, partial outputs, negative windows ----------


def _small_run(folder: Path) -> Path:
    """Two ranks, steps -1 (set-up) to 1 from t = 0: compute, then a message each way."""
    import mpiml.algorithms  # noqa: F401  (registers the kinds written)
    from mpiml.io.runfile import RankFile, RunFile
    from mpiml.trace import EVENT_DTYPE

    folder.mkdir(parents=True)
    rf = RunFile(folder, 2, {"config": json.dumps({"run": {"name": "small", "steps": 2}})}, None)
    for r in (0, 1):
        rows = []
        for s in (-1, 0, 1):
            t = float(s + 1)
            rows.append((s, b"compute", t, t + 0.5, 0, -1, -1))
            rows.append((s, b"send", t + 0.5, t + 0.6, 8, 1 - r, 2 * (s + 1) + r))
            rows.append((s, b"recv", t + 0.55, t + 0.8, 8, 1 - r, 2 * (s + 1) + 1 - r))
        f = RankFile(folder, r, 0.0, None)
        f.append_events(np.array(rows, dtype=EVENT_DTYPE))
        f.close()
    rf.close()
    return folder


def test_otf2_export_replaces_its_own_archive_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    otf2 = pytest.importorskip("otf2", reason="the 'otf2' extra is not installed")
    run = _small_run(tmp_path / "run")
    out = tmp_path / "arch2"
    assert _export(capsys, str(run), "--format", "otf2", "-o", str(out))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["traces", "traces.def", "traces.otf2"]
    (out / "keep.txt").write_text("precious\n")
    code, stdout, err = _export(capsys, str(run), "--format", "otf2", "-o", str(out))
    assert code == 2 and stdout == "" and err.count("\n") == 1, err
    assert "not an OTF2 archive's (keep.txt)" in err
    assert (out / "keep.txt").read_text() == "precious\n" and (out / "traces.otf2").is_file()
    (out / "keep.txt").unlink()
    code, _, err = _export(capsys, str(run), "--format", "otf2", "-o", str(out), "--steps", "0:1")
    assert code == 0, err  # our own archive: replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _export(capsys, str(run), "--format", "otf2", "-o", str(empty))
    assert code == 0, err  # an empty folder is taken
    for folder, n in ((out, 2 * 3), (empty, 2 * 9)):  # events per rank: 3 in step 0, 9 in all
        with otf2.reader.open(str(folder / "traces.otf2")) as trace:
            assert sum(isinstance(ev, otf2.events.Enter) for _, ev in trace.events) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arch2", "empty", "run"]  # no temporaries left
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    code, _, err = _export(capsys, str(run), "--format", "otf2", "-o", str(a_file))
    assert code == 2 and "exists and is not a folder" in err and a_file.read_text() == "x"


@pytest.mark.parametrize("fmt", ["chrome", "perfetto", "otf2"])
def test_an_export_failing_part_way_leaves_no_partial_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    if fmt != "chrome":
        pytest.importorskip(fmt, reason=f"the {fmt!r} extra is not installed")
    import importlib

    run = _small_run(tmp_path / "run")
    module = importlib.import_module(f"mpiml.report.export.{fmt}")

    def fail_part_way(run: Any, ranks: Any, window: Any, found: Any, out: Any) -> int:
        if fmt == "otf2":  # the archive's folder, half written
            Path(out).mkdir()
            (Path(out) / "traces.otf2").write_text("half")
        else:
            out.write(b"half" if fmt == "perfetto" else "half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, f"write_{fmt}", fail_part_way)
    out = tmp_path / "out" / "trace"
    out.parent.mkdir()
    code, _, err = _export(capsys, str(run), "--format", fmt, "-o", str(out))
    assert code == 2 and err.count("\n") == 1 and "No space left on device" in err, err
    assert list(out.parent.iterdir()) == []  # nothing written, nothing left behind
    if fmt == "chrome":  # an existing output stays as it was
        out.write_text("old")
        assert _export(capsys, str(run), "--format", fmt, "-o", str(out))[0] == 2
        assert out.read_text() == "old" and list(out.parent.iterdir()) == [out]


def test_window_values_may_start_with_a_minus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _small_run(tmp_path / "run")
    for args, n in (
        (["--steps", "-1:0"], 3),
        (["--time", "-1:0.9"], 3),
        (["--steps=-1:1", "--ranks", "0"], 6),
    ):
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
        events = _chrome(capsys, run, out, *args)
        assert sum(e["ph"] == "X" for e in events) == n * (1 if "--ranks" in args else 2), args
