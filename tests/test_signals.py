"""SIGINT and SIGTERM (mpiml.run.signals): a signal during training stops every rank
after the same step with a checkpoint, one line, a documented status, and a resume
ends bit for bit where the uninterrupted run ends; a second signal leaves at once; a
signal during start-up is one line and no traceback, even on a rank blocked in MPI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mpiml.testing import launch_env, mpiexec_command, run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]
REPO = Path(__file__).resolve().parents[1]


class _Job:
    """A job started under mpiexec in its own session; its stdout read as it comes."""

    def __init__(self, n: int, args: list[str], cwd: Path) -> None:
        env = launch_env(dict(os.environ, PYTHONPATH=str(REPO)))
        self.proc = subprocess.Popen(
            mpiexec_command(n, args),
            cwd=str(cwd),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self.out: list[str] = []
        self.err = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(pattern in line for line in self.out):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {pattern!r} before the job ended or {timeout}s:\n{self.text()}")
            time.sleep(0.05)

    def ranks(self) -> list[int]:
        """The pids of the ranks: the children of mpiexec's proxies (their own sessions)."""

        def children(pid: int) -> list[int]:
            got = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
            return [int(p) for p in got.stdout.split()]

        return [r for proxy in children(self.proc.pid) for r in children(proxy)]

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job hung after the signal:\n{self.text()}")
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def text(self) -> str:
        return "".join(self.out) + "\n--- stderr\n" + self.err


def _params(run_dir: Path, step: int, ranks: int = 2) -> list[np.ndarray]:
    from mpiml.io import checkpoint as ckpt

    return [
        ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", step, r))[0]["params"] for r in range(ranks)
    ]


def _stopped_at(job: _Job, why: str) -> int:
    lines = [line for line in job.out if "stopped at step" in line]
    assert len(lines) == 1, job.text()
    m = re.fullmatch(
        rf"mpiml: stopped at step (\d+) \({why}\); checkpoint written; resume with --resume\n", lines[0]
    )
    assert m, lines
    return int(m.group(1))


JOB = ["--set", "run.eval_every=10", "--set", "checkpoint.every=0"]


@pytest.mark.slow
def test_sigint_to_mpiexec_stops_all_ranks_with_a_checkpoint_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    """Ctrl-C in a terminal: mpiexec forwards SIGINT to every rank. One line, status
    130, a stop checkpoint (checkpoint.every = 0), and --resume to N + 20 steps ends
    where an uninterrupted run of N + 20 steps ends."""
    out = str(tmp_path)
    job = _Job(
        2,
        [*MPIML, "train", *JOB, "--set", "run.steps=100000", "--set", "run.name=cut", "--out", out],
        tmp_path,
    )
    job.wait_for("step ")
    os.kill(job.proc.pid, signal.SIGINT)
    assert job.finish() == 130, job.text()
    n = _stopped_at(job, "SIGINT")
    assert "Traceback" not in job.err and "Abort(" not in job.err, job.text()
    cut = tmp_path / "cut"
    assert (cut / "checkpoints" / f"step-{n:09d}" / "COMPLETE").exists(), job.text()

    steps = ["--set", f"run.steps={n + 20}", "--set", "checkpoint.every=0"]
    again = run_ranks(
        2,
        [*MPIML, "train", *JOB, *steps, "--set", "run.name=cut", "--out", out, "--resume"],
        TIMEOUT,
        cwd=out,
    )
    assert again.returncode == 0 and f"at step {n}" in again.stdout, (again.stdout, again.stderr)
    full = run_ranks(
        2, [*MPIML, "train", *JOB, *steps, "--set", "run.name=full", "--out", out], TIMEOUT, cwd=out
    )
    assert full.returncode == 0, (full.stdout, full.stderr)
    from mpiml.io import load_run

    a, b = load_run(tmp_path / "full"), load_run(cut)
    for name in ("loss", "test_loss", "accuracy"):
        assert np.array_equal(a.metrics[name]["value"], b.metrics[name]["value"]), name
    assert a.metrics["test_loss"]["step"][-1] == n + 20


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    """A signal that reaches one rank only (not rank 0) still stops all: status 75."""
    out = str(tmp_path)
    job = _Job(
        2, [*MPIML, "train", *JOB, "--set", "run.steps=100000", "--set", "run.name=t", "--out", out], tmp_path
    )
    job.wait_for("step ")
    ranks = job.ranks()
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), signal.SIGTERM)  # the rank started last
    assert job.finish() == 75, job.text()
    n = _stopped_at(job, "SIGTERM")
    step_dir = tmp_path / "t" / "checkpoints" / f"step-{n:09d}"
    assert (step_dir / "COMPLETE").exists(), job.text()
    p = _params(tmp_path / "t", n)
    assert len(p) == 2 and all(np.isfinite(x).all() for x in p)
    assert "Traceback" not in job.err, job.text()


SCRIPT = """
import os, signal, sys, time
from mpi4py import MPI
from mpiml.run.signals import {cls}
c = MPI.COMM_WORLD
with {cls}(c.Get_rank()) as s:
    print("ready", flush=True)
    {body}
print("not reached", flush=True)
"""


def _script(tmp_path: Path, cls: str, body: str) -> Path:
    p = tmp_path / "s.py"
    p.write_text(SCRIPT.format(cls=cls, body=body))
    return p


def test_a_signal_during_start_up_is_one_line_even_on_a_rank_blocked_in_mpi(tmp_path: Path) -> None:
    """Rank 0 waits in a barrier that rank 1 never joins (as a rank does while another
    still imports): a SIGINT forwarded by mpiexec ends both with 130 and one line."""
    script = _script(
        tmp_path, "StartupSignals", "if c.Get_rank() == 1:\n        time.sleep(60)\n    c.Barrier()"
    )
    job = _Job(2, [sys.executable, str(script)], tmp_path)
    job.wait_for("ready")
    time.sleep(0.5)  # both ranks past "ready": rank 0 inside MPI_Barrier
    os.kill(job.proc.pid, signal.SIGINT)
    assert job.finish(60) == 130, job.text()
    assert job.err.count("mpiml: interrupted by SIGINT during start-up") == 1, job.text()
    assert "Traceback" not in job.err and "not reached" not in "".join(job.out)


def test_a_second_signal_leaves_at_once_and_the_first_only_sets_a_flag(tmp_path: Path) -> None:
    body = (
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "    t = time.monotonic()\n"
        "    while not s.signum and time.monotonic() < t + 10: time.sleep(0.01)\n"
        "    print('first', s.signum, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)"
    )
    script = _script(tmp_path, "StopSignals", body)
    res = run_ranks(1, [sys.executable, str(script)], 60, cwd=str(tmp_path))
    assert not res.timed_out, (res.stdout, res.stderr)
    assert res.returncode == 128 + signal.SIGTERM, (res.stdout, res.stderr)
    assert f"first {int(signal.SIGTERM)}" in res.stdout and "not reached" not in res.stdout
    assert res.stderr.strip() == "mpiml: second SIGTERM: aborted at once, no checkpoint", res.stderr


def test_handlers_are_restored_and_not_installed_off_the_main_thread() -> None:
    from mpiml.run.signals import StopSignals

    before = signal.getsignal(signal.SIGINT)
    with StopSignals(0) as s:
        assert s.active and signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    seen: list[bool] = []

    def elsewhere() -> None:
        with StopSignals(0) as t:
            seen.append(t.active)

    th = threading.Thread(target=elsewhere)
    th.start()
    th.join()
    assert seen == [False] and signal.getsignal(signal.SIGINT) is before


API_SCRIPT = """
import sys
import mpiml
from mpiml.config import load_config

cfg = load_config(None, ["run.steps=60", "run.eval_every=30", "checkpoint.every=0", *sys.argv[2:]])
mpiml.train(cfg, out=sys.argv[1])
print("finished", flush=True)
"""


@pytest.mark.parametrize(
    ("sets", "env", "status"),
    [([], {"MPIML_FAIL_AT": "1:20"}, None), (["optimizer.lr=1e4", "run.name=d"], {}, 3)],
    ids=["exception-on-rank-1", "diverged"],
)
def test_the_python_api_ends_the_job_on_one_ranks_exception(
    tmp_path: Path, sets: list[str], env: dict[str, str], status: int | None
) -> None:
    """``mpiexec -n 2 python script.py`` calling mpiml.train, no ``-m mpi4py``: one
    rank's exception aborts both (one traceback); an agreed error is one line."""
    script = tmp_path / "script.py"
    script.write_text(API_SCRIPT)
    res = run_ranks(
        2,
        [sys.executable, str(script), str(tmp_path), *sets],
        TIMEOUT,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(REPO), **env),
    )
    assert not res.timed_out, f"the job hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    assert res.returncode != 0 and "finished" not in res.stdout, (res.stdout, res.stderr)
    if status is None:
        assert res.stderr.count("Traceback") == 1, res.stderr
        assert res.stderr.count("injected failure on rank 1 at step 20") == 1, res.stderr
    else:
        assert res.returncode == status and "Traceback" not in res.stderr, res.stderr
        assert res.stderr.count("mpiml: error: training diverged: non-finite loss at step 30 on rank") == 1, (
            res.stderr
        )


LATE_RANK_0 = """
import sys, time
from mpiml.comm import agreed_error, install_abort_handler
from mpi4py import MPI

install_abort_handler()
MPI.COMM_WORLD.Barrier()
if MPI.COMM_WORLD.Get_rank() == 0:
    time.sleep(1.5)  # the other ranks leave first
raise agreed_error("run.steps must be >= 1 (got 0)")
"""


def test_an_agreed_error_keeps_rank_0s_line_when_the_others_leave_first(tmp_path: Path) -> None:
    """Hydra kills the remaining ranks as soon as one exits unfinalized: the ranks
    finalize before they exit, so rank 0's one line and status 2 survive."""
    script = tmp_path / "late.py"
    script.write_text(LATE_RANK_0)
    res = run_ranks(
        3,
        [sys.executable, str(script)],
        TIMEOUT,
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert not res.timed_out, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and lines == ["mpiml: error: run.steps must be >= 1 (got 0)"], (
        res.stdout,
        res.stderr,
    )
