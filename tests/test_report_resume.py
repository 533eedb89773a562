"""The report on runs that are not one clean launch: a resumed run (its time between
launches is no rank's), a run that stopped early, set-up left out of POP, an empty
window, and bytes overwritten in the middle of a rank file (report and exports)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpiml.algorithms  # noqa: F401  (registers the kinds the hand-made runs use)
from mpiml.io.runfile import RankFile, RunFile
from mpiml.report.analysis import build_report, load
from mpiml.testing import launch_env, python_command, run_ranks
from mpiml.trace import EVENT_DTYPE

ROOT = Path(__file__).resolve().parents[1]
MPIML = [sys.executable, "-m", "mpiml.cli"]


def _section(rep, key: str):  # noqa: ANN001, ANN202
    return next(s for s in rep.sections if s.key == key)


def _summary(rep) -> dict:  # noqa: ANN001
    return {row[0]: row[1] for row in _section(rep, "summary").rows}


def _train(out: Path, *sets: str, resume: bool = False) -> None:
    job = str(ROOT / "examples" / "local_sgd_digits.toml")
    args = python_command("-m", "mpiml.cli", "train", job, "--out", str(out), "--set", "run.name=r")
    for s in sets:
        args += ["--set", s]
    done = run_ranks(2, [*args, *(["--resume"] if resume else [])], timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_resumed_run_leaves_the_time_between_launches_out(tmp_path: Path) -> None:
    _train(tmp_path, "run.steps=12", "checkpoint.every=6")
    time.sleep(2.0)  # the queue: no rank runs
    _train(tmp_path, "run.steps=24", "checkpoint.every=6", resume=True)
    rep = build_report(load(tmp_path / "r"))
    summary = _summary(rep)
    assert summary["launches"].startswith("2 (resumed at steps 12)")
    assert summary["between launches (s)"] >= 2.0
    for r, t in rep.timelines.items():
        assert t.between_launches >= 2.0 and t.launches == 2, r
        assert t.wall == pytest.approx(t.t_last - t.t_first - t.between_launches)
        parts = sum(t.exclusive.values()) + t.idle
        assert parts == pytest.approx(t.wall, rel=1e-9)
        assert t.idle < t.wall  # the gap is not idle time
    # POP's runtime is no longer mostly the gap
    pop = _section(rep, "pop").rows[0]
    assert pop[-1] < max(t.t_last - t.t_first for t in rep.timelines.values()) - 2.0


def _hand_run(folder: Path, planned: int, ranks: int = 2, setup: float = 0.0, steps: int = 10) -> Path:
    """A run file whose ranks each compute 0.1 s per step (rank 1 0.2 s) then wait to the
    step's end at 0.3 s; ``setup`` seconds of a step -1 compute first."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.dumps({"run": {"steps": planned}})
    layout = json.dumps({"roles": [{"kind": "replica", "shard": r, "reads": "xy"} for r in range(ranks)]})
    RunFile(folder, ranks, {"config": cfg, "algorithm": "sgd"}, None, layout=layout).close()
    for r in range(ranks):
        rows = [(-1, b"compute", 0.0, setup, 0, -1, -1)] if setup else []
        for s in range(steps):
            t0 = setup + 0.3 * s
            c = 0.1 * (r + 1)
            rows += [(s, b"compute", t0, t0 + c, 0, -1, -1), (s, b"wait", t0 + c, t0 + 0.3, 0, -1, -1)]
        rf = RankFile(folder, r, 0.0, None)
        rf.append_events(np.array(rows, EVENT_DTYPE))
        rf.close()
    return folder


def test_a_run_that_stopped_early_says_so(tmp_path: Path) -> None:
    rep = build_report(load(_hand_run(tmp_path / "cut", planned=50)))
    assert _summary(rep)["steps"].startswith("10 of 50 (incomplete")
    rep = build_report(load(_hand_run(tmp_path / "whole", planned=10)))
    assert _summary(rep)["steps"] == 10


def test_pop_covers_the_training_steps_not_the_set_up(tmp_path: Path) -> None:
    rep = build_report(load(_hand_run(tmp_path, planned=10, setup=30.0)))
    row = _section(rep, "pop").rows[0]
    lb, comm, par, mean, mx, runtime = row[2:]
    assert runtime == pytest.approx(3.0)  # 10 steps of 0.3 s, not the 30 s of set-up
    assert mean == pytest.approx(1.5) and mx == pytest.approx(2.0)  # 10 x 0.1 and 10 x 0.2
    assert lb == pytest.approx(0.75) and comm == pytest.approx(2.0 / 3.0) and par == pytest.approx(0.5)
    # the time per rank still shows the set-up: it is the rank's time
    assert rep.timelines[0].exclusive["compute"] == pytest.approx(31.0)


def test_an_empty_window_says_so(tmp_path: Path) -> None:
    rep = build_report(load(_hand_run(tmp_path, planned=10)), time=(100.0, 200.0))
    notes = " ".join(_section(rep, "summary").notes)
    assert "selected no events" in notes and "trace.events" not in notes


def _overwrite_middle(path: Path) -> None:
    with h5py.File(path, "r") as f:
        ds = f["events"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    mid = chunks[len(chunks) // 2]
    with open(path, "r+b") as fh:
        fh.seek(mid.byte_offset + 3000)
        fh.write(np.random.default_rng(1).bytes(2000))


@pytest.mark.parametrize("fmt", ["report", "chrome", "perfetto", "otf2"])
def test_overwritten_bytes_leave_the_rank_out_with_a_line(tmp_path: Path, fmt: str) -> None:
    run = _hand_run(tmp_path / "run", planned=2000, steps=2000)
    _overwrite_middle(run / "ranks" / "rank-00001.h5")
    if fmt == "report":
        args = ["report", str(run)]
    else:
        args = ["trace", "export", str(run), "--format", fmt, "-o", str(tmp_path / f"out.{fmt}")]
    done = subprocess.run([*MPIML, *args], capture_output=True, text=True, timeout=120, env=launch_env())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    said = done.stdout + done.stderr
    assert "rank 1" in said and "damaged rows" in said
    if fmt == "report":
        assert "replica (shard 0)" in said and "replica (shard 1)" not in said  # rank 0 reported, 1 not
