"""The run file's writer and reader side by side: readers never make a flush fail,
load_run says why a rank file cannot be read, and no file is written through a link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import mpiml.run  # noqa: F401  (the owners register their kinds)
from mpiml.errors import ConfigError
from mpiml.io import load_run
from mpiml.io.fs import unique_tmp
from mpiml.io.runfile import RankFile, RunFile, rank_file_name
from mpiml.trace import Trace

HOLD = """
import sys, time, h5py
files = [h5py.File(p) for p in sys.argv[1:]]   # plain h5py.File: HDF5's file lock, as docs/run-file.md shows
print(sum(len(f["metrics/loss"]) if "metrics" in f else len(f["events"]) for f in files), flush=True)
sys.stdin.readline()                             # hold them open until told
print(sum(len(f["metrics/loss"]) if "metrics" in f else len(f["events"]) for f in files), flush=True)
"""


def _events(n: int, step0: int) -> np.ndarray:
    tr = Trace()
    for s in range(step0, step0 + n):
        tr.record(s, "compute", float(s), float(s) + 0.5)
    return tr.take()


def test_a_reader_holding_the_files_open_never_fails_a_flush(tmp_path: Path) -> None:
    run = RunFile(tmp_path, 1, {"config": "{}", "algorithm": "sgd"}, None)
    rank = RankFile(tmp_path, 0, 0.0, None)
    run.metric("loss", 1, 0.1, 1.0)
    rank.append_events(_events(3, 0))
    run.flush()
    rank.flush()
    reader = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "run.h5"), str(tmp_path / rank_file_name(0))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "4", reader.stderr  # 1 metric row + 3 events, read
        for k in range(2, 12):  # flushes while the reader holds both files (and their locks)
            run.metric("loss", k, 0.1 * k, 1.0 / k)
            rank.append_events(_events(3, 3 * k))
            run.flush()
            rank.flush()
        reader.stdin.write("\n")
        reader.stdin.flush()
        held = reader.stdout.readline().strip()
    finally:
        reader.kill()
        reader.wait()
    assert held == "4"  # a held handle sees the file as it was when opened
    run.close()
    rank.close()
    got = load_run(tmp_path)
    assert list(got.metric("loss")[0]) == list(range(1, 12)) and len(got.events[0]) == 3 + 30


def test_load_run_reports_why_a_rank_file_cannot_be_read_not_missing(tmp_path: Path) -> None:
    run = RunFile(tmp_path, 3, {"config": "{}", "algorithm": "sgd"}, None)
    run.close()
    for r in range(3):
        rf = RankFile(tmp_path, r, 0.0, None)
        rf.append_events(_events(2, 0))
        rf.close()
    loop = tmp_path / rank_file_name(1)
    loop.unlink()
    loop.symlink_to(loop.name)  # a link to itself: it exists, and cannot be opened
    (tmp_path / rank_file_name(2)).unlink()
    with pytest.warns(UserWarning):
        got = load_run(tmp_path)
    assert got.missing_ranks == [2] and list(got.unreadable_ranks) == [1], (
        got.missing_ranks,
        got.unreadable_ranks,
    )
    assert "Too many levels of symbolic links" in got.unreadable_ranks[1]


def test_to_pandas_without_pandas_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    RunFile(tmp_path, 0, {"config": "{}", "algorithm": "sgd"}, None).close()
    run = load_run(tmp_path)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(ImportError) as info:
        run.to_pandas()
    assert str(info.value) == "Run.to_pandas() needs pandas: pip install 'mpiml[pandas]'"


def test_a_new_run_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"precious")
    run_dir = tmp_path / "run"
    (run_dir / "ranks").mkdir(parents=True)
    (run_dir / rank_file_name(0)).symlink_to(outside)
    with pytest.raises(ConfigError, match="rank-00000.h5 is a symbolic link"):
        RankFile(run_dir, 0, 0.0, None)
    with pytest.raises(ConfigError, match="rank-00000.h5 is a symbolic link"):
        RankFile(run_dir, 0, 0.0, resume_step=1)
    assert outside.read_bytes() == b"precious"


def test_a_hard_linked_file_keeps_its_other_name_unchanged(tmp_path: Path) -> None:
    first = RankFile(tmp_path, 0, 0.0, None)
    first.append_events(_events(2, 0))
    first.close()
    path = tmp_path / rank_file_name(0)
    snapshot = tmp_path / "snapshot.h5"  # e.g. a backup made with cp -al
    os.link(path, snapshot)
    before = snapshot.read_bytes()
    again = RankFile(tmp_path, 0, 0.0, resume_step=2)  # continued: copied first, then appended
    again.append_events(_events(2, 2))
    again.close()
    assert snapshot.read_bytes() == before and path.stat().st_nlink == 1
    RankFile(tmp_path, 0, 0.0, None).close()  # a new run: a new file, the old name unlinked
    assert snapshot.read_bytes() == before
    with h5py.File(snapshot, "r") as f:
        assert len(f["events"]) == 2


def test_temporary_names_are_unique_per_writer(tmp_path: Path) -> None:
    final = tmp_path / "rank-00000.h5"
    names = {unique_tmp(final) for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".rank-00000.h5.") for n in names)
    here = json.dumps(sorted(n.name for n in names))
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from mpiml.io.fs import unique_tmp; from pathlib import Path; print(unique_tmp(Path({str(final)!r})).name)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f".{os.getpid()}." in names.pop().name and other not in here


def test_truncation_drops_every_row_after_the_resume_step_wherever_it_is(tmp_path: Path) -> None:
    """Two resumed segments: set-up rows (step -1) of the second follow steps of the
    first; resuming at an older step keeps exactly the rows at or before it, in order."""
    import h5py
    import numpy as np

    from mpiml.io.runfile import _truncate_after

    dt = np.dtype([("step", "<i8"), ("value", "<f8")])
    steps = [-1, 0, 1, 2, 3, -1, 2, 3, 4]  # segment 1: -1, 0..3; resumed at 1: -1, 2..4
    rows = np.array([(s, i) for i, s in enumerate(steps)], dtype=dt)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        ds = f.create_dataset("t", data=rows, maxshape=(None,), chunks=True)
        _truncate_after(ds, 1)
        got = ds[...]
    assert got["step"].tolist() == [-1, 0, 1, -1] and got["value"].tolist() == [0, 1, 2, 5]
