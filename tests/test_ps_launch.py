"""``async_ps`` through the ``mpiml`` command: a failure and --resume, a stop file, a
SIGINT to mpiexec (staleness 0 ends bit for bit where the uninterrupted run ends,
servers' and workers' checkpointed state alike), and a worker that raises mid-run
(the whole job ends, servers included, with one line naming it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from ps_launched import MPIML, REPO, TIMEOUT, stopped_at  # tests/ps_launched.py
from ps_replay import read_apply_logs, replay  # tests/ps_replay.py

from mpiml.config import load_config
from mpiml.data import build_data
from mpiml.io import checkpoint as ckpt
from mpiml.io import load_run
from mpiml.io.runfile import rank_file_name
from mpiml.models import initial_params, job_model
from mpiml.testing import launch_env, mpiexec_command, run_ranks


def _job(*sets: str) -> list[str]:
    args = []
    for s in sets:
        args += ["--set", s]
    return args


def _mpiml(
    n: int, tmp: Path, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    res = run_ranks(
        n,
        [*MPIML, "train", *args, "--out", str(tmp)],
        TIMEOUT,
        cwd=str(tmp),
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
    )
    assert not res.timed_out, f"the job hung:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res  # type: ignore[return-value]


def _state(run_dir: Path, step: int, ranks: int) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Every rank's checkpoint of ``step``: its arrays, and the meta that must carry over
    (loss sums, sampler position)."""
    out = []
    for r in range(ranks):
        arrays, meta = ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", step, r))
        keep = {k: meta.get(k) for k in ("loss_sum", "loss_count", "sampler", "step")}
        out.append((arrays, keep))
    return out


def _same_state(a: list, b: list, skip: tuple[str, ...] = ()) -> list[str]:
    """What differs between two runs' checkpoints, rank by rank (empty: bit for bit),
    but for the arrays named in ``skip``."""
    bad = []
    for r, ((xa, ma), (xb, mb)) in enumerate(zip(a, b, strict=True)):
        if sorted(xa) != sorted(xb):
            bad.append(f"rank {r}: arrays {sorted(xa)} != {sorted(xb)}")
            continue
        bad += [f"rank {r}: {k} differs" for k in xa if k not in skip and not np.array_equal(xa[k], xb[k])]
        if ma != mb:
            bad.append(f"rank {r}: {ma} != {mb}")
    return bad


def _same_metrics(a: Path, b: Path) -> list[str]:
    ra, rb = load_run(a), load_run(b)
    bad = []
    for name in ("loss", "test_loss", "accuracy"):
        if not np.array_equal(ra.metrics[name]["step"], rb.metrics[name]["step"]):
            bad.append(f"{name}: steps {list(ra.metrics[name]['step'])} != {list(rb.metrics[name]['step'])}")
        elif not np.array_equal(ra.metrics[name]["value"], rb.metrics[name]["value"]):
            bad.append(f"{name}: values differ")
    return bad


# (ranks, extra settings, MPIML_FAIL_AT, checkpoint it resumes from); 2 workers, so the
# coordinator's sums of evaluations (added in arrival order) are exact as well
RESUME = [
    (3, ["algorithm.push=gradient", "optimizer.name=nesterov", "checkpoint.every=10"], "1:15", 10),
    # delta: checkpoints at 6 and 18 fall inside a period of tau = 4 (local model and
    # optimizer state saved mid-period); worker 0 fails at step 9
    (4, ["algorithm.push=delta", "algorithm.tau=4", "algorithm.servers=2", "checkpoint.every=6"], "0:9", 6),
]


@pytest.mark.parametrize(("n", "sets", "fail", "resumed"), RESUME, ids=["gradient", "delta-tau4-every6"])
def test_staleness_0_resumed_after_a_failure_ends_bit_for_bit(
    tmp_path: Path, n: int, sets: list[str], fail: str, resumed: int
) -> None:
    """A run interrupted by MPIML_FAIL_AT and resumed with --resume from its last
    checkpoint ends where the uninterrupted run ends: every rank's final checkpoint
    (servers: shard, optimizer state, version and clocks; workers: pushes, sampler,
    and in delta mode their local model, base and optimizer state) and every metric."""
    job = _job("algorithm.name=async_ps", "algorithm.staleness=0", "run.steps=24", "run.eval_every=8", *sets)
    full = _mpiml(n, tmp_path, [*job, "--set", "run.name=full"])
    assert full.returncode == 0, full.stderr
    cut = _mpiml(n, tmp_path, [*job, "--set", "run.name=cut"], env={"MPIML_FAIL_AT": fail})
    assert cut.returncode != 0 and "injected failure" in cut.stderr, cut.stderr[-3000:]
    again = _mpiml(n, tmp_path, [*job, "--set", "run.name=cut", "--resume"])
    assert again.returncode == 0 and f"at step {resumed}" in again.stdout, (again.stdout, again.stderr)
    skip: tuple[str, ...] = ()
    bad = _same_state(_state(tmp_path / "full", 24, n), _state(tmp_path / "cut", 24, n), skip)
    bad += _same_metrics(tmp_path / "full", tmp_path / "cut")
    assert not bad, bad


def test_a_stop_file_stops_every_rank_at_one_step_and_resume_ends_bit_for_bit(tmp_path: Path) -> None:
    """MPIML_STOP_FILE exists from the start: the coordinator fixes one stop step, every
    rank (2 workers, 2 servers) checkpoints there and the job exits 75 with one line;
    --resume (file gone) runs to the end and ends where a run never stopped ends."""
    n = 4
    job = _job(
        "algorithm.name=async_ps",
        "algorithm.staleness=0",
        "algorithm.servers=2",
        "run.steps=30",
        "run.eval_every=10",
        "checkpoint.every=0",
    )
    stop = tmp_path / "STOP"
    stop.touch()
    cut = _mpiml(n, tmp_path, [*job, "--set", "run.name=cut"], env={"MPIML_STOP_FILE": str(stop)})
    assert cut.returncode == 75, (cut.stdout, cut.stderr)
    at = stopped_at(cut.stdout, f"{stop} appeared")
    assert 0 < at < 30 and "Traceback" not in cut.stderr, cut.stderr
    for r in range(n):
        assert ckpt.rank_path(tmp_path / "cut" / "checkpoints", at, r).is_file(), r
    assert (tmp_path / "cut" / "checkpoints" / f"step-{at:09d}" / "COMPLETE").is_file()
    stop.unlink()
    again = _mpiml(n, tmp_path, [*job, "--set", "run.name=cut", "--set", "checkpoint.every=30", "--resume"])
    assert again.returncode == 0 and f"at step {at}" in again.stdout, (again.stdout, again.stderr)
    full = _mpiml(n, tmp_path, [*job, "--set", "run.name=full", "--set", "checkpoint.every=30"])
    assert full.returncode == 0, full.stderr
    bad = _same_state(_state(tmp_path / "full", 30, n), _state(tmp_path / "cut", 30, n))
    bad += _same_metrics(tmp_path / "full", tmp_path / "cut")
    assert not bad, bad


@pytest.mark.slow
def test_sigint_to_mpiexec_stops_every_rank_with_a_checkpoint_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    """Ctrl-C: mpiexec forwards SIGINT to every rank (2 workers, 1 server, staleness 0,
    a run of 10^5 steps): status 130, one line, one stop step with every rank's
    checkpoint; --resume to N + 20 steps ends where an uninterrupted run of N + 20 ends."""
    n = 3
    job = _job("algorithm.name=async_ps", "algorithm.staleness=0", "run.eval_every=10", "checkpoint.every=0")
    env = launch_env(dict(os.environ, PYTHONPATH=str(REPO)))
    cmd = [
        *MPIML,
        "train",
        *job,
        "--set",
        "run.steps=100000",
        "--set",
        "run.name=cut",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.Popen(
        mpiexec_command(n, cmd),
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not any(ln.startswith("step ") for ln in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        status = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    assert proc.stderr is not None
    err = proc.stderr.read()
    out = "".join(lines)
    assert status == 130, (out, err)
    at = stopped_at(out, "SIGINT")
    assert "Traceback" not in err, err
    assert (tmp_path / "cut" / "checkpoints" / f"step-{at:09d}" / "COMPLETE").is_file(), (out, err)
    steps = ["--set", f"run.steps={at + 20}", "--set", f"checkpoint.every={at + 20}"]
    again = _mpiml(n, tmp_path, [*job, *steps, "--set", "run.name=cut", "--resume"])
    assert again.returncode == 0 and f"at step {at}" in again.stdout, (again.stdout, again.stderr)
    full = _mpiml(n, tmp_path, [*job, *steps, "--set", "run.name=full"])
    assert full.returncode == 0, full.stderr
    bad = _same_state(_state(tmp_path / "full", at + 20, n), _state(tmp_path / "cut", at + 20, n))
    assert not bad, bad


@pytest.mark.parametrize(
    ("n", "sets", "fail"),
    [
        (3, ["algorithm.staleness=0"], "1:10"),  # BSP: the other worker waits on the server
        (4, ["algorithm.servers=2"], "0:10"),  # asynchronous, 2 servers, the first worker fails
    ],
    ids=["bsp-worker-1", "async-2-servers-worker-0"],
)
def test_a_worker_raising_mid_run_ends_the_whole_job(
    tmp_path: Path, n: int, sets: list[str], fail: str
) -> None:
    """A worker raises at step 10 of 10^5: every rank ends (the servers, blocked in
    their service loop, included) well within the timeout, status != 0, the error
    once, one traceback."""
    job = _job("algorithm.name=async_ps", "run.steps=100000", "run.eval_every=5", *sets)
    res = _mpiml(n, tmp_path, job, env={"MPIML_FAIL_AT": fail})
    rank, step = fail.split(":")
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert res.stderr.count(f"injected failure on rank {rank} at step {step}") == 1, res.stderr
    assert res.stderr.count("Traceback") == 1, res.stderr
    assert f"[mpiml rank {rank}]" in res.stderr, res.stderr


# ---- the staleness line, a failure on a server, delta mode's last period ----------


def _staleness_parts(out: str) -> list[tuple[int, int | None, str, str, str, str]]:
    """Rank 0's staleness line, per shard: (pushes, updates or None, mean, p50, p95, max)
    as printed."""
    lines = [ln for ln in out.splitlines() if ln.startswith("mpiml: staleness ")]
    assert len(lines) == 1, out
    pat = r"shard (\d+): (\d+) pushes(?: \((\d+) updates\))?, mean ([^,;\s]+), p50 ([^,;\s]+), p95 ([^,;\s]+), max ([^,;\s]+)"
    parts = re.findall(pat, lines[0].split(": ", 2)[2])
    assert parts and [int(p[0]) for p in parts] == list(range(len(parts))), lines[0]
    return [(int(p[1]), int(p[2]) if p[2] else None, p[3], p[4], p[5], p[6]) for p in parts]


def _lowest_reaching(stale: np.ndarray, q: float) -> int:
    """The lowest k whose cumulative count reaches q of the pushes."""
    s = np.sort(stale)
    return int(s[int(np.ceil(q * s.size)) - 1])


@pytest.mark.parametrize(
    ("n", "sets"),
    [
        # asynchronous, 2 servers, worker 1 4x slower: staleness spread over several values
        (4, ["algorithm.servers=2", "straggler.ranks=[1]", "straggler.factor=4"]),
        (3, ["algorithm.staleness=0"]),  # BSP: W pushes make one update
    ],
    ids=["async-2-servers-straggler", "bsp"],
)
def test_the_staleness_line_is_the_statistics_of_the_servers_apply_logs(
    tmp_path: Path, n: int, sets: list[str]
) -> None:
    """Rank 0's "mpiml: staleness ..." line equals, per shard, what the server's
    ps_apply table gives: pushes, mean, median and p95 (the lowest staleness whose
    cumulative count reaches 50% / 95%), max; "(M updates)" only where the shard made
    fewer updates than pushes (staleness 0: its versions)."""
    servers = 2 if "algorithm.servers=2" in sets else 1
    job = _job(
        "algorithm.name=async_ps",
        "model.name=timed",
        "model.params=64",
        "model.compute_ms=2",
        "run.steps=60",
        "run.eval_every=20",
        "checkpoint.every=0",
        "run.name=stale",
        *sets,
    )
    res = _mpiml(n, tmp_path, job)
    assert res.returncode == 0, res.stderr[-3000:]
    printed = _staleness_parts(res.stdout)
    logs = read_apply_logs(tmp_path / "stale", n, servers)
    assert len(printed) == len(logs) == servers, (printed, len(logs))
    spread = 0
    for s, (log, got) in enumerate(zip(logs, printed, strict=True)):
        stale = (log["version"] - log["version_read"]).astype(np.int64)
        versions = len(set(log["version"].tolist()))
        want = (
            int(stale.size),
            versions if versions != stale.size else None,
            f"{stale.mean():.2f}",
            f"{_lowest_reaching(stale, 0.5):g}",
            f"{_lowest_reaching(stale, 0.95):g}",
            f"{int(stale.max()):g}",
        )
        assert got == want, f"shard {s}: printed {got}, from ps_apply {want}"
        spread += len(set(stale.tolist()))
    if "algorithm.staleness=0" in sets:
        assert printed[0][1] == 60, printed  # 60 clocks of 2 pushes each
    else:
        assert spread > 2 * servers, "the asynchronous run's staleness was not spread: a weak check"


def test_a_server_failing_mid_run_ends_the_whole_job(tmp_path: Path) -> None:
    """MPIML_FAIL_AT=<server rank>:<step> (it used to be ignored on servers): the server
    raises once a worker completed the step; every rank ends within the timeout,
    status != 0, the error once."""
    job = _job(
        "algorithm.name=async_ps",
        "run.steps=100000",
        "run.eval_every=5",
        "model.name=timed",
        "model.params=64",
        "model.compute_ms=1",
    )
    res = _mpiml(3, tmp_path, job, env={"MPIML_FAIL_AT": "2:10"})
    assert res.returncode != 0, (res.stdout[-2000:], res.stderr[-3000:])
    msg = "injected failure on rank 2 (a server) once a worker completed step 10"
    assert res.stderr.count(msg) == 1, res.stderr[-3000:]
    assert "[mpiml rank 2]" in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize(("steps", "tau"), [(10, 4), (5, 10)], ids=["steps10-tau4", "steps5-tau10"])
def test_delta_mode_pushes_the_last_partial_period_and_replays_bit_for_bit(
    tmp_path: Path, steps: int, tau: int
) -> None:
    """push = "delta", run.steps not a multiple of tau (or tau > steps), 2 workers, 1
    server: every local step is pushed (ps_counts: pushed == applied == ceil(steps /
    tau) per worker), the final model is not x_0, and the serial replay of the apply
    log gives the server's final shard bit for bit."""
    n = 3
    sets = [
        "algorithm.name=async_ps",
        "algorithm.push=delta",
        f"algorithm.tau={tau}",
        f"run.steps={steps}",
        "run.eval_every=5",
        f"checkpoint.every={steps}",
        "data.batch_size=8",
        "run.name=delta",
    ]
    res = _mpiml(n, tmp_path, _job(*sets))
    assert res.returncode == 0, res.stderr[-3000:]
    pushes = -(-steps // tau)
    with h5py.File(tmp_path / "delta" / rank_file_name(n - 1), "r") as f:
        counts = f["ps_counts"][()]
    got = sorted(
        zip(counts["worker"].tolist(), counts["pushed"].tolist(), counts["applied"].tolist(), strict=True)
    )
    assert got == [(0, pushes, pushes), (1, pushes, pushes)], got
    final, _ = ckpt.read_rank(ckpt.rank_path(tmp_path / "delta" / "checkpoints", steps, n - 1))
    cfg = load_config(None, sets)
    logs = read_apply_logs(tmp_path / "delta", n, 1)
    (replayed,) = replay(cfg, logs, n - 1)
    assert np.array_equal(replayed, final["params"]), np.max(np.abs(replayed - final["params"]))
    data = build_data(cfg, 0, n - 1)
    x0 = initial_params(cfg, job_model(cfg, data.n_features, data.n_classes))
    assert not np.array_equal(final["params"], x0), "the servers' model is still x_0"


@pytest.mark.parametrize(
    "stale",
    [
        [0, 0, 1, 1],
        [0] * 19 + [5],
        [0] * 18 + [1, 7],
        [3],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [2] * 10 + [0] * 9,
    ],
)
def test_the_staleness_statistics_are_the_lowest_staleness_reaching_each_share(stale: list[int]) -> None:
    """Pure complement of the launched test (whose staleness distributions are what the
    run gave): the servers' statistics on chosen ones, where 50% / 95% is reached
    exactly at a count (the lowest such staleness, not the next)."""
    from mpiml.protocols.ps_log import StalenessHistogram

    h = StalenessHistogram()
    for k in stale:
        h.add(k)
    a = np.array(stale)
    want = [a.size, a.mean(), _lowest_reaching(a, 0.5), _lowest_reaching(a, 0.95), a.max()]
    assert h.stats().tolist() == pytest.approx(want, rel=0, abs=1e-12), (h.stats().tolist(), want)
