"""What mpiml never makes in a run folder (a FIFO, a folder where it writes a file) is
refused with one line before any collective, never opened (a FIFO blocks), and never
a traceback (issue #16.4, #16.16)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mpiml.testing import run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli", "train"]
JOB = [
    "--set",
    "run.steps=20",
    "--set",
    "run.eval_every=10",
    "--set",
    "checkpoint.every=10",
    "--set",
    "run.name=f",
]


def _train(tmp: Path, *args: str) -> tuple[int, str, str]:
    res = run_ranks(2, [*MPIML, *JOB, *args, "--out", str(tmp / "results")], TIMEOUT, cwd=str(tmp))
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.returncode, res.stdout, res.stderr


def _plant_fifo(p: Path) -> None:
    p.unlink()
    os.mkfifo(p)


def _plant_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()


@pytest.mark.parametrize(
    ("where", "plant"),
    [
        ("run.h5", _plant_fifo),
        ("ranks/rank-00001.h5", _plant_fifo),
        ("ranks/rank-00000.h5", _plant_folder),
        ("checkpoints/step-000000020/COMPLETE", _plant_folder),
        ("checkpoints/step-000000020/rank-00000.h5", _plant_folder),
    ],
    ids=["run.h5-fifo", "rank-file-fifo", "rank-file-folder", "complete-folder", "checkpoint-file-folder"],
)
def test_a_foreign_entry_is_one_line_before_anything_runs(tmp_path: Path, where: str, plant) -> None:  # type: ignore[no-untyped-def]
    assert _train(tmp_path)[0] == 0
    target = tmp_path / "results" / "f" / where
    plant(target)
    code, out, err = _train(tmp_path, "--resume")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and str(target) in lines[0], (out, err)
    assert "Traceback" not in err


def test_load_run_lists_a_fifo_rank_file_as_unreadable(tmp_path: Path) -> None:
    from mpiml.io import load_run

    assert _train(tmp_path)[0] == 0
    _plant_fifo(tmp_path / "results" / "f" / "ranks" / "rank-00001.h5")
    with pytest.warns(UserWarning):
        run = load_run(tmp_path / "results" / "f")
    assert 1 in run.unreadable_ranks and "not a regular file" in run.unreadable_ranks[1]
    _plant_fifo(tmp_path / "results" / "f" / "run.h5")
    with pytest.raises(OSError, match="not a regular file"):
        load_run(tmp_path / "results" / "f")
