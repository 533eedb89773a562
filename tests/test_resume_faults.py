"""Checkpoints under faults, through the ``mpiml`` command on 2 ranks: a kill right after
a checkpoint loses no table row; files in the wrong slot, foreign things in the folder,
newer versions, missing arrays and non-finite models are each handled as the
checkpoint section of docs/run-file.md says."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np

from mpiml.io import checkpoint as ckpt
from mpiml.testing import run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]


def _train(tmp: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = dict(os.environ, **(env or {}))
    res = run_ranks(
        2, [*MPIML, "train", *args, "--out", str(tmp / "results")], TIMEOUT, cwd=str(tmp), env=full_env
    )
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.returncode, res.stdout, res.stderr


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_kill_right_after_a_checkpoint_loses_no_table_row(tmp_path: Path) -> None:
    """Every rank is killed (SIGKILL) the moment checkpoint 20's COMPLETE marker is on
    disk, long before the next periodic flush (trace.flush_every=100); resumed from it,
    the tables hold every step exactly once."""
    from mpiml.io import load_run

    job = ["--set", "run.steps=40", "--set", "run.eval_every=5", "--set", "checkpoint.every=10"]
    job += ["--set", "trace.flush_every=100"]
    code, _, err = _train(tmp_path, *job, env={"MPIML_KILL_AT_CHECKPOINT": "20"})
    assert code != 0
    assert (tmp_path / "results/default/checkpoints/step-000000020/COMPLETE").is_file(), err
    code, out, err = _train(tmp_path, *job, "--resume")
    assert code == 0 and "at step 20" in out, err
    run = load_run(tmp_path / "results" / "default")
    for name in ("loss", "test_loss", "accuracy", "bytes_sent"):
        assert list(run.metric(name)[0]) == list(range(5, 45, 5)), name  # no gap, no duplicate
    for r in (0, 1):
        ev = run.events[r]
        steps, counts = np.unique(ev["step"][ev["kind"] == "compute"], return_counts=True)
        assert list(steps) == list(range(40)) and set(counts) == {1}, (r, steps, counts)
        ck = ev["step"][ev["kind"] == "checkpoint"]
        assert list(ck) == [9, 19, 29, 39]  # the checkpoint's own row too


def test_checkpoint_files_are_bound_to_their_slot(tmp_path: Path) -> None:
    """Step 30 holds another run's file, step 20 rank 1's file in rank 0's slot, and
    foreign things (a FIFO, odd names) lie around: each damaged step is skipped with a
    message naming the file and what differs, nothing hangs, and the run resumes from
    step 10. A linked step folder is refused (one line naming it), never followed."""
    job = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *job)[0] == 0
    assert _train(tmp_path, *job, "--set", "run.name=other")[0] == 0
    root = tmp_path / "results" / "default" / "checkpoints"
    other = tmp_path / "results" / "other" / "checkpoints"
    shutil.copy(
        ckpt.rank_path(other, 30, 0), ckpt.rank_path(root, 30, 0)
    )  # same job, step, rank: another run
    shutil.copy(ckpt.rank_path(root, 20, 1), ckpt.rank_path(root, 20, 0))
    (root / "step-50").mkdir()
    os.mkfifo(root / "step-000000060")
    os.mkfifo(root / "step-000000010" / "rank-00000.h5.tmp")
    (root / "step-000000010" / "extra").mkdir()
    code, out, err = _train(tmp_path, *job, "--resume")
    assert code == 0 and "resuming" in out and "at step 10" in out, err
    assert "step-000000030/rank-00000.h5 does not belong in its slot: run id" in err
    assert "step-000000020/rank-00000.h5 does not belong in its slot: rank 1 (the slot's: 0)" in err
    assert "Traceback" not in err
    (root / "step-000000025").symlink_to(other / "step-000000030")
    before = _tree(tmp_path / "results" / "other")
    code, out, err = _train(tmp_path, *job, "--resume")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "step-000000025 is a symbolic link" in lines[0], err
    assert _tree(tmp_path / "results" / "other") == before


def test_a_newer_checkpoint_stops_the_resume_and_a_missing_array_is_skipped(tmp_path: Path) -> None:
    job = ["--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *job)[0] == 0
    root = tmp_path / "results" / "default" / "checkpoints"
    marker = ckpt.step_dir(root, 20) / "COMPLETE"
    text = marker.read_text()
    marker.write_text(text.replace(f'"format": {ckpt.FORMAT}', '"format": 7'))
    before = _tree(tmp_path / "results")
    code, _, err = _train(tmp_path, *job, "--resume")
    assert code == 2 and "Traceback" not in err, err
    assert "checkpoint step-000000020 was written by mpiml" in err and "(format 7); this is mpiml" in err
    assert ": upgrade mpiml" in err and "skipping" not in err
    assert _tree(tmp_path / "results") == before  # no fallback, nothing deleted or written

    marker.write_text(text)
    with h5py.File(ckpt.rank_path(root, 20, 1), "a") as f:  # a rank file of a newer format
        f.attrs["format"] = 7
    code, _, err = _train(tmp_path, *job, "--resume")
    assert code == 2 and "checkpoint step-000000020 was written by mpiml" in err and "(format 7)" in err, err

    # a checkpoint consistent in itself but without an array this job's program reads
    arrays, meta = ckpt.read_rank(ckpt.rank_path(root, 10, 1))
    del arrays["params"]
    ckpt.rank_path(root, 20, 1).unlink()
    ckpt.write_rank(root, 20, 1, arrays, {**meta, "step": 20})
    code, out, err = _train(tmp_path, *job, "--resume")
    assert code == 0 and "at step 10" in out, err
    assert "step-000000020/rank-00001.h5 lacks the array 'params'" in err and "Traceback" not in err


def test_a_non_finite_model_never_becomes_a_checkpoint(tmp_path: Path) -> None:
    job = ["--set", "run.steps=20", "--set", "run.eval_every=20", "--set", "checkpoint.every=10"]
    code, _, err = _train(tmp_path, *job, "--set", "optimizer.lr=1e4")
    assert code != 0 and "non-finite" in err and "at step 10 on rank" in err, err
    root = tmp_path / "results" / "default" / "checkpoints"
    assert not list(root.rglob("COMPLETE")) and not list(root.rglob("rank-*"))  # nothing written


def test_a_checkpoint_from_before_versions_still_resumes(tmp_path: Path) -> None:
    """Format 1 (no format, version or run id; the role as its description) resumes."""
    import json

    from mpiml.layout import data_parallel

    job = ["--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *job)[0] == 0
    root = tmp_path / "results" / "default" / "checkpoints"
    for step in (10, 20):
        marker = ckpt.step_dir(root, step) / "COMPLETE"
        m = json.loads(marker.read_text())
        marker.write_text(json.dumps({k: m[k] for k in ("step", "world_size", "layout")}))
        for r in (0, 1):
            with h5py.File(ckpt.rank_path(root, step, r), "a") as f:
                meta = json.loads(f.attrs["meta"])
                for k in ("format", "mpiml_version", "run_id"):
                    del meta[k]
                meta["role"] = data_parallel(2).roles[r].describe()
                arrays = {name: f[name][()] for name in _datasets(f)}
                text = json.dumps(meta, sort_keys=True)
                f.attrs["meta"], f.attrs["sha256"] = text, ckpt._digest(arrays, text)
                del f.attrs["format"], f.attrs["mpiml_version"]
    code, out, err = _train(tmp_path, *job, "--set", "run.steps=30", "--resume")
    assert code == 0 and "at step 20" in out and "skipping" not in err, err


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names
