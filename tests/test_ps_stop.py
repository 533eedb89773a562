"""``async_ps`` stops through the ``mpiml`` command, requested mid-run.

- No staleness bound: a stop stops each worker where it is (a straggler does not
  delay it): the checkpoint holds each worker's own step (``ps/done``, the straggler's
  smaller), labelled by the furthest worker's; --resume runs every worker to the end
  and every push is applied exactly once. Also when the fast workers were already done
  when the stop came.
- A SIGTERM seen only by a server rank (S = 1, and the non-coordinator of S = 2)
  stops every rank at one step: the server forwards the stop bits in its replies.

The stop is requested by the test while the job runs (a stop file created, or a
signal to one rank, found in mpiexec's own process group); the asserts are on steps,
counts and logs, never on times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
from ps_launched import MPIML, REPO, TIMEOUT, stopped_at  # tests/ps_launched.py

from mpiml.io import checkpoint as ckpt
from mpiml.io.runfile import rank_file_name
from mpiml.testing import launch_env, mpiexec_command, run_ranks

RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")


def _args(tmp: Path, name: str, sets: list[str]) -> list[str]:
    out = [*MPIML, "train", "--set", f"run.name={name}", "--out", str(tmp)]
    for s in sets:
        out += ["--set", s]
    return out


def _launch(
    n: int,
    tmp: Path,
    args: list[str],
    trigger: Callable[[subprocess.Popen, list[str]], bool],
    env: dict | None = None,
) -> tuple[int, str, str]:
    """Run ``args`` on n ranks; ``trigger(proc, stdout lines so far)`` is called until it
    returns True (it requests the stop); (exit status, stdout, stderr)."""
    proc = subprocess.Popen(
        mpiexec_command(n, args),
        cwd=str(tmp),
        env=launch_env(dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []
    errs: list[str] = []
    readers = [
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True),  # type: ignore[arg-type]
        threading.Thread(target=lambda: errs.extend(proc.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for t in readers:
        t.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not trigger(proc, lines):
            assert proc.poll() is None, ("the job ended before the stop", "".join(lines), "".join(errs))
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        status = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for t in readers:
        t.join(10)
    return status, "".join(lines), "".join(errs)


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of world rank ``rank`` among the descendants of ``root`` (the test's own
    mpiexec; hydra starts each rank in a session of its own, so the process tree, not
    the group), read from each process's environment."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    ours, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in ours} - ours
        ours |= more
        grew = bool(more)
    for pid in sorted(ours - {root}):
        try:
            if b"mpiml.cli" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            env = dict(
                kv.split(b"=", 1)
                for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"=" in kv
            )
        except OSError:
            continue
        for var in RANK_VARS:
            if env.get(var.encode()) == str(rank).encode():
                return pid
    return None


def _done(run_dir: Path, step: int, workers: int) -> list[int]:
    """Each worker's own step in the checkpoint labelled ``step``."""
    out = []
    for r in range(workers):
        arrays, _ = ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", step, r))
        out.append(int(arrays["ps/done"][0]))
    return out


def _every_push_once(run_dir: Path, n: int, servers: int, steps: int) -> list[str]:
    """Every server's ps_apply holds clocks 1..steps exactly once per worker, and its
    ps_counts say pushed == applied == steps per worker."""
    bad = []
    w = n - servers
    want = sorted((i, c) for i in range(w) for c in range(1, steps + 1))
    for r in range(w, n):
        with h5py.File(run_dir / rank_file_name(r), "r") as f:
            log, counts = f["ps_apply"][()], f["ps_counts"][()]
        got = sorted(zip(log["worker"].tolist(), log["clock"].tolist(), strict=True))
        if got != want:
            bad.append(
                f"server rank {r}: {len(got)} (worker, clock) rows, missing "
                f"{sorted(set(want) - set(got))[:5]}, extra {len(got) - len(set(got))}"
            )
        c = sorted(
            zip(counts["worker"].tolist(), counts["pushed"].tolist(), counts["applied"].tolist(), strict=True)
        )
        if c != [(i, steps, steps) for i in range(w)]:
            bad.append(f"server rank {r}: ps_counts (worker, pushed, applied) {c}")
    return bad


JOB = [
    "algorithm.name=async_ps",
    "model.name=timed",
    "model.params=64",
    "model.compute_ms=4",
    "straggler.ranks=[1]",
    "run.eval_every=10",
    "checkpoint.every=0",
]


def _stop_then_resume(
    tmp: Path, n: int, steps: int, factor: int, wait_for: str, after: float = 0.0
) -> tuple[int, list[int]]:
    """A run with worker 1 ``factor`` times slower, stopped by a stop file created
    ``after`` seconds after rank 0 printed a line starting with ``wait_for``; resumed
    to the end. (the stop step, each worker's own step in that checkpoint)."""
    seen: list[float] = []
    stop = tmp / "STOP"
    job = [*JOB, f"straggler.factor={factor}", f"run.steps={steps}"]

    def trigger(proc: subprocess.Popen, lines: list[str]) -> bool:
        if not seen and any(ln.startswith(wait_for) for ln in lines):
            seen.append(time.monotonic())
        if seen and time.monotonic() >= seen[0] + after:
            stop.touch()
            return True
        return False

    status, out, err = _launch(n, tmp, _args(tmp, "cut", job), trigger, env={"MPIML_STOP_FILE": str(stop)})
    assert status == 75, (status, out, err[-3000:])
    at = stopped_at(out, f"{stop} appeared")
    assert "Traceback" not in err, err
    assert (tmp / "cut" / "checkpoints" / f"step-{at:09d}" / "COMPLETE").is_file(), out
    done = _done(tmp / "cut", at, n - 1)
    stop.unlink()
    again = run_ranks(
        n,
        [*_args(tmp, "cut", job), "--resume"],
        TIMEOUT,
        cwd=str(tmp),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert not again.timed_out and again.returncode == 0, (again.stdout, again.stderr[-3000:])
    assert f"at step {at}" in again.stdout, again.stdout
    bad = _every_push_once(tmp / "cut", n, 1, steps)
    assert not bad, bad
    return at, done


def test_a_stop_with_no_bound_stops_each_worker_where_it_is_and_resumes_every_push_once(
    tmp_path: Path,
) -> None:
    """3 workers (worker 1 8x slower), 1 server, no staleness bound: a stop file created
    mid-run stops the job (75, one line) with each worker's own step in the checkpoint,
    the straggler's behind the others', the checkpoint labelled by the furthest; the
    resumed run applies clocks 1..steps of every worker exactly once."""
    at, done = _stop_then_resume(tmp_path, 4, 200, 8, "step ")
    assert at == max(done) and 0 < at < 200, (at, done)
    assert done[1] < min(done[0], done[2]), f"the straggler's step is not behind: {done}"


def test_a_stop_when_the_fast_workers_are_done_still_stops_and_resumes_to_the_end(tmp_path: Path) -> None:
    """40 steps, worker 1 50x slower (4 ms -> 200 ms a step): the fast workers are done
    (their DONE sent) when the stop file appears 3 s after the job's first line (rank
    0 prints step lines only once the straggler's evaluations are in; the asserts
    below check that the case did arise); the job still stops (75, not 0) with their
    step 40 and the straggler's smaller one checkpointed, and --resume finishes the
    straggler's run."""
    at, done = _stop_then_resume(tmp_path, 4, 40, 50, "mpiml: async_ps on", after=3.0)
    assert done[0] == done[2] == 40 and done[1] < 40 and at == 40, done


def _sigterm_server(tmp: Path, n: int, servers: int) -> None:
    """SIGTERM to the last server rank alone (the non-coordinator when S = 2) once
    rank 0 printed its first step line: every rank stops at one step, status 75."""
    job = [
        "algorithm.name=async_ps",
        f"algorithm.servers={servers}",
        "model.name=timed",
        "model.params=64",
        "model.compute_ms=2",
        "run.steps=100000",
        "run.eval_every=10",
        "checkpoint.every=0",
    ]
    target = n - 1

    def trigger(proc: subprocess.Popen, lines: list[str]) -> bool:
        if not any(ln.startswith("step ") for ln in lines):
            return False
        pid = _rank_pid(proc.pid, target)
        assert pid is not None, f"rank {target}'s process not found in mpiexec's group {proc.pid}"
        os.kill(pid, signal.SIGTERM)
        return True

    status, out, err = _launch(n, tmp, _args(tmp, "term", job), trigger)
    assert status == 75, (status, out, err[-3000:])
    at = stopped_at(out, "SIGTERM")
    assert "Traceback" not in err, err
    assert (tmp / "term" / "checkpoints" / f"step-{at:09d}" / "COMPLETE").is_file(), out
    for r in range(n):
        assert ckpt.rank_path(tmp / "term" / "checkpoints", at, r).is_file(), r


def test_a_sigterm_to_the_only_server_stops_every_rank(tmp_path: Path) -> None:
    _sigterm_server(tmp_path, 3, 1)


def test_a_sigterm_to_the_second_server_stops_every_rank(tmp_path: Path) -> None:
    _sigterm_server(tmp_path, 4, 2)
