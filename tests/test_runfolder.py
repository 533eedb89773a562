"""The run folder: claimed by one job at a time, fresh for unnamed runs, never written
through a planted link; checks that need no data come first. Serial tests of
mpiml.run.folder, then jobs launched under mpiexec."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mpiml.errors import ConfigError
from mpiml.io.runfile import rank_file_name
from mpiml.run import folder
from mpiml.testing import launch_env, mpiexec_command, run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]
SHORT = ["--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]


def _tree(path: Path) -> dict[str, str]:
    """Every entry under ``path``, links as links (not followed), files by digest."""
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "/"
    return out


def _lock(run_dir: Path, **owner: object) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / folder.LOCK
    body = {
        "host": socket.gethostname(),
        "pid": 1,
        "pid_start": None,
        "job": "",
        "restart": "",
        "started": "2026-01-01T00:00:00+00:00",
        "token": "planted",
    }
    lock.write_text(json.dumps({**body, **owner}))
    return lock


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- serial: mpiml.run.folder


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    c = folder.claim(tmp_path)
    owner = json.loads((tmp_path / ".lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(ConfigError, match=rf"is in use by a job on host .* pid {os.getpid()}"):
        folder.claim(tmp_path)
    c.release()
    assert not (tmp_path / ".lock").exists()
    folder.claim(tmp_path).release()


@pytest.mark.parametrize(
    ("owner", "age", "stale"),
    [
        ({"pid": "dead"}, 0, "is gone"),  # this host, the process is gone
        ({"pid": "live"}, 0, ""),  # this host, alive
        ({"pid": "live", "pid_start": -5}, 0, "is another process now"),  # the pid was reused
        ({"host": "elsewhere", "pid": 7}, 10, ""),  # another host, fresh heartbeat
        ({"host": "elsewhere", "pid": 7}, 4000, "heartbeat is"),  # another host, none for long
        ({"host": "elsewhere", "job": "99", "restart": "0"}, 10, "was requeued"),  # SLURM requeue
    ],
)
def test_stale_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: dict, age: int, stale: str
) -> None:
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = {"dead": _dead_pid(), "live": live.pid}.get(owner.get("pid"), owner.get("pid"))  # type: ignore[arg-type]
        lock = _lock(tmp_path, **{**owner, "pid": pid})
        then = time.time() - age
        os.utime(lock, (then, then))
        monkeypatch.setenv("SLURM_JOB_ID", "99")
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        if stale:
            c = folder.claim(tmp_path)  # taken over
            assert json.loads(lock.read_text())["token"] == c.token
            c.release()
        else:
            with pytest.raises(ConfigError, match=f"in use by .* pid {pid} "):
                folder.claim(tmp_path)
            assert json.loads(lock.read_text())["token"] == "planted"  # left alone
    finally:
        live.kill()
        live.wait()


def test_unnamed_runs_get_numbered_folders(tmp_path: Path) -> None:
    names = [folder.fresh_folder(tmp_path).name for _ in range(3)]
    assert names == ["default", "default-2", "default-3"]
    (tmp_path / "default-2").rmdir()
    assert folder.fresh_folder(tmp_path).name == "default-4"  # after the highest: names keep their order
    (tmp_path / "default-x").mkdir()
    (tmp_path / "defaults").mkdir()
    assert folder.fresh_folder(tmp_path).name == "default-5"


def test_overwrite_checks_everything_before_deleting_anything(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000000010").mkdir(parents=True)
    (run / "ranks").mkdir()
    (run / "run.h5").write_bytes(b"run")
    (run / "ranks" / "rank-00001.h5").write_bytes(b"rank 1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep")
    (run / "checkpoints" / "step-000000010" / "rank-00000.h5").symlink_to(outside / "keep")
    before = _tree(tmp_path)
    with pytest.raises(ConfigError, match="step-000000010/rank-00000.h5 is a symbolic link"):
        folder.clear_run(run)
    assert _tree(tmp_path) == before
    (run / "checkpoints" / "step-000000010" / "rank-00000.h5").unlink()
    (run / "ranks" / "sub").symlink_to(outside)
    with pytest.raises(ConfigError, match="ranks/sub is a symbolic link"):
        folder.clear_run(run)
    (run / "ranks" / "sub").unlink()
    folder.clear_run(run)
    assert sorted(p.name for p in run.iterdir()) == [] and (outside / "keep").read_bytes() == b"keep"


# ---- jobs under mpiexec


def _train(out: Path, *args: str, n: int = 2, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    res = run_ranks(n, [*MPIML, "train", *args, "--out", str(out)], TIMEOUT, cwd=str(out.parent), env=env)
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.returncode, res.stdout, res.stderr


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpiml: error: ") and "Traceback" not in err, err
    return lines[0]


READER = """
import sys, time, subprocess, h5py
from pathlib import Path
run_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
rows = dumps = frames = 0
while not stop.exists():
    try:
        with h5py.File(run_dir / "run.h5") as f:            # plain h5py: HDF5's file lock, held ~0.5 s
            with h5py.File(run_dir / "ranks/rank-00001.h5") as g:
                time.sleep(0.5)
                n = len(f["metrics/loss"]) + len(f["ranks/0/events"]) + len(g["events"])
                rows = max(rows, n)
    except Exception:
        pass                                                   # not there yet, or read during a flush
    if subprocess.run(["h5dump", "-H", str(run_dir / "run.h5")], capture_output=True).returncode == 0:
        dumps += 1
    try:
        from mpiml.io import load_run
        metrics, events = load_run(run_dir).to_pandas()
        frames = max(frames, len(events))
    except Exception:
        pass
print(rows, dumps, frames)
"""


def test_readers_of_a_live_run_never_stop_it(tmp_path: Path) -> None:
    """Plain h5py (holding run.h5 and a rank file open), h5dump and pandas read while a
    2-rank job flushes every 5 steps: the job finishes, and the readers read rows."""
    out = tmp_path / "results"
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(out / "live"), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=launch_env(),
    )
    try:
        code, stdout, err = _train(
            out,
            "--set",
            "run.name=live",
            "--set",
            "run.steps=300",
            "--set",
            "run.eval_every=5",
            "--set",
            "trace.flush_every=5",
        )
    finally:
        stop.touch()
        got, rerr = reader.communicate(timeout=60)
    assert code == 0, err[-3000:]
    rows, dumps, frames = (int(v) for v in got.split())
    print(f"reader: up to {rows} rows held open, {dumps} h5dump runs, up to {frames} events via load_run")
    assert rows > 0 and frames > 0, (got, rerr)
    if subprocess.run(["which", "h5dump"], capture_output=True).returncode == 0:
        assert dumps > 0


def test_two_jobs_started_at_once_into_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = [
        *MPIML,
        "train",
        "--set",
        "run.name=twice",
        "--set",
        "run.steps=200",
        "--set",
        "run.eval_every=20",
        "--set",
        "checkpoint.every=50",
        "--out",
        str(out),
    ]
    procs = [
        subprocess.Popen(
            mpiexec_command(2, args),
            env=launch_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            cwd=str(tmp_path),
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], (codes, results)
    loser = next(err for p, (_, err) in zip(procs, results, strict=True) if p.returncode == 2)
    line = _one_line(loser)
    assert f"{out / 'twice'} is in use by a job on host " in line, line  # claimed while the other runs
    from mpiml.io import load_run

    run = load_run(out / "twice")
    steps, _ = run.metric("loss")
    assert list(steps) == list(range(20, 201, 20))  # one run's rows, once each
    for ev in run.events.values():
        assert np.all(np.diff(ev["step"]) >= 0)
    assert not (out / "twice" / ".lock").exists()


def test_a_live_lock_refuses_the_job_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "results"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _lock(out / "held", pid=holder.pid, job="4242")
        before = _tree(out)
        code, _, err = _train(out, "--set", "run.name=held", "--resume", *SHORT)
    finally:
        holder.kill()
        holder.wait()
    line = _one_line(err)
    assert code == 2 and f"is in use by job 4242 on host {socket.gethostname()} pid {holder.pid}" in line
    assert _tree(out) == before


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "results"
    pid = _dead_pid()
    _lock(out / "crashed", pid=pid)
    code, stdout, err = _train(out, "--set", "run.name=crashed", *SHORT)
    assert code == 0, err
    assert (
        f"pid {pid} (since 2026-01-01T00:00:00+00:00): pid {pid} is gone; taking the run folder over" in err
    )
    assert (out / "crashed" / "run.h5").exists() and not (out / "crashed" / ".lock").exists()


def test_unnamed_runs_get_fresh_folders_and_resume_continues_the_newest(tmp_path: Path) -> None:
    out = tmp_path / "results"
    for name in ("default", "default-2"):
        code, stdout, err = _train(out, *SHORT)
        assert code == 0, err
        assert f"-> {out / name}\n" in stdout and f"run file: {out / name / 'run.h5'}" in stdout
    code, stdout, err = _train(out, *SHORT, "--set", "run.steps=30", "--resume")
    assert code == 0, err
    assert f"--resume: continuing {out / 'default-2'}, the newest unnamed run with a checkpoint" in stdout
    assert "at step 20" in stdout and not (out / "default-3").exists()


def test_a_planted_link_is_an_error_and_its_target_is_untouched(tmp_path: Path) -> None:
    out = tmp_path / "results"
    outside = tmp_path / "precious.h5"
    outside.write_bytes(b"not mpiml's")
    (out / "x" / "ranks").mkdir(parents=True)
    (out / "x" / rank_file_name(0)).symlink_to(outside)
    before = _tree(tmp_path)
    for extra in ([], ["--overwrite"], ["--resume"]):
        code, _, err = _train(out, "--set", "run.name=x", *SHORT, *extra)
        line = _one_line(err)
        assert code == 2 and f"{out / 'x' / rank_file_name(0)} is a symbolic link (to {outside})" in line, (
            line
        )
        assert _tree(tmp_path) == before, extra
    # --overwrite of a run holding a link deletes nothing
    (out / "x" / "run.h5").write_bytes(b"an earlier run")
    (out / "x" / "checkpoints").mkdir()
    before = _tree(tmp_path)
    code, _, err = _train(out, "--set", "run.name=x", *SHORT, "--overwrite")
    assert code == 2 and _tree(tmp_path) == before


def test_run_folder_errors_come_before_the_data_is_read(tmp_path: Path) -> None:
    """A job with a bad data setting into a folder that holds a run: the folder's error
    is the one reported (checked before any data is read)."""
    out = tmp_path / "results"
    (out / "busy").mkdir(parents=True)
    (out / "busy" / "run.h5").write_bytes(b"an earlier run")
    t0 = time.perf_counter()
    code, _, err = _train(out, "--set", "run.name=busy", "--set", "data.batch_size=5000")
    wall = time.perf_counter() - t0
    assert code == 2 and "busy already holds a run" in _one_line(err)
    print(f"run-folder error after {wall:.2f}s (launch included)")
    assert not (out / "busy" / ".lock").exists()
    # and a data error in a fresh folder leaves no folder and no lock behind
    code, _, err = _train(out, "--set", "data.batch_size=5000")
    assert code == 2 and "data.batch_size = 5000" in _one_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["busy"]
