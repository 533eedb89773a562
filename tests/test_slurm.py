"""launch/slurm/*.sbatch under a real, throwaway single-node SLURM (tests/slurm_cluster.py).

One cluster for the module. Each test submits the scripts as a user would (``sbatch``,
the environment passed on with the default ``--export=ALL``) and checks the run folder,
the job state and the job log: a 4-task training job completes; a 2-task job array gives
one run per override line; a job sent the warning signal checkpoints, requeues itself,
resumes and ends bit for bit where an uninterrupted run of the same job ends; a missing
job file fails the job with a message that says so.

Skipped, with the reason, where no cluster can be started (not root, slurm-wlm not
installed: ``apt-get install -y --no-install-recommends slurm-wlm``); set
``MPIML_REQUIRE_SLURM=1`` to turn that skip into a failure. The launch line that
train.sbatch builds from ``MPIML_SET`` is tested without SLURM too: stand-in
``scontrol`` and ``mpiexec`` commands record what the script would run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from slurm_cluster import SlurmCluster, why_no_slurm  # tests/ is on sys.path (rootdir-relative import)

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "launch" / "slurm" / "train.sbatch"
SWEEP = REPO / "launch" / "slurm" / "sweep.sbatch"
JOB_TIMEOUT = 150.0  # seconds for one job to finish (the VM has 2 cores; jobs ask for 4 tasks)

_WHY = why_no_slurm()
if _WHY and os.environ.get("MPIML_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"MPIML_REQUIRE_SLURM=1 but no SLURM test cluster can run here: {_WHY}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if _WHY:
        pytest.skip(_WHY)

    # SIGTERM (a CI runner giving up) ends the session like Ctrl-C: the daemons are stopped on the way out
    def on_term(signum: int, frame: object) -> None:
        pytest.exit(f"signal {signum}: stopping the SLURM test cluster", returncode=128 + signum)

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with SlurmCluster(tmp_path_factory.mktemp("slurm")) as c:
            yield c
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path


def _env(work: Path, **mpiml: str) -> dict[str, str | None]:
    """What the job sees on top of the cluster's environment: this interpreter and its
    mpiexec first on PATH, no MPIML_* from outside (None removes), results under ``work``."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MPIML_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env["PYTHON"] = sys.executable
    env["MPIML_OUT"] = str(work / "results")
    env["MPIML_HOME"] = str(REPO)
    env.update(mpiml)
    return env


def _submit(cluster: SlurmCluster, work: Path, script: Path, args: list[str], **mpiml: str) -> int:
    assert script.exists(), f"{script} is missing"
    return cluster.sbatch(args, script, env=_env(work, **mpiml), cwd=work)


def _log(work: Path, name: str) -> str:
    p = work / name
    return p.read_text(errors="replace") if p.exists() else f"<no job log {p}>"


def _wait(cluster: SlurmCluster, job: int, work: Path, log: str, want: str = "COMPLETED") -> None:
    state = cluster.wait(job, JOB_TIMEOUT)
    assert state == want, f"job {job} ended {state}, expected {want}\n{_log(work, log)}\n{cluster.logs()}"


def _final_params(run_dir: Path, step: int, ranks: int) -> list[np.ndarray]:
    from mpiml.io import checkpoint as ckpt

    return [
        ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", step, r))[0]["params"] for r in range(ranks)
    ]


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step-*/COMPLETE"))


@pytest.mark.slow
def test_cluster_runs_a_four_task_mpi_job(cluster: SlurmCluster, work: Path) -> None:
    """The cluster itself: 4 tasks fit on the node and mpiexec starts 4 ranks in the allocation."""
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; open(f'rank-{c.rank}-of-{c.size}', 'w').close()"
    cmd = f'mpiexec -n 4 {sys.executable} -c "{code}"'
    job = cluster.sbatch(["-n", "4", "-J", "mpi", "-o", "%x-%j.out", "--wrap", cmd], env=_env(work), cwd=work)
    _wait(cluster, job, work, f"mpi-{job}.out")
    assert sorted(p.name for p in work.glob("rank-*")) == [f"rank-{r}-of-4" for r in range(4)]


@pytest.mark.slow
def test_train_sbatch_completes_a_four_task_job(cluster: SlurmCluster, work: Path) -> None:
    from mpiml.io import load_run

    job = _submit(
        cluster, work, TRAIN, ["-n", "4", "-J", "short"], MPIML_SET="run.steps=200 checkpoint.every=50"
    )
    _wait(cluster, job, work, f"short-{job}.out")
    run_dir = work / "results" / f"short-{job}"
    assert (run_dir / "run.h5").exists(), f"no {run_dir}/run.h5\n{_log(work, f'short-{job}.out')}"
    run = load_run(run_dir)
    assert run.world_size == 4
    assert sorted(run.events) == [0, 1, 2, 3] and not run.missing_ranks
    assert all(len(ev) > 0 for ev in run.events.values())
    assert run.config["run"]["steps"] == 200 and run.config["run"]["name"] == f"short-{job}"
    steps, acc = run.metric("accuracy")
    assert steps[-1] == 200 and acc[-1] >= 0.9, (steps, acc)
    assert (run_dir / "checkpoints" / "step-000000200" / "COMPLETE").exists()


@pytest.mark.slow
def test_sweep_sbatch_gives_one_run_per_override_line(cluster: SlurmCluster, work: Path) -> None:
    from mpiml.io import load_run

    sweep = work / "sweep.txt"
    sweep.write_text(
        "# tau and seed per array task\nalgorithm.tau=2 run.seed=1\n\nalgorithm.tau=8 run.seed=2\n"
    )
    job = _submit(
        cluster,
        work,
        SWEEP,
        ["--array=0-1", "-n", "4", "-J", "sw"],
        MPIML_SWEEP=str(sweep),
        MPIML_SET="run.steps=40 run.eval_every=20 checkpoint.every=20",
    )
    state = cluster.wait(job, JOB_TIMEOUT)
    logs = "\n".join(_log(work, f"sw-{job}_{t}.out") for t in (0, 1))
    assert state == "COMPLETED", f"array job {job} ended {state}\n{logs}\n{cluster.logs()}"
    for task, (tau, seed) in enumerate([(2, 1), (8, 2)]):
        run_dir = work / "results" / f"sw-{job}_{task}"
        assert (run_dir / "run.h5").exists(), f"no {run_dir}/run.h5\n{_log(work, f'sw-{job}_{task}.out')}"
        cfg = load_run(run_dir).config
        assert cfg["algorithm"]["tau"] == tau and cfg["run"]["seed"] == seed, cfg
        assert cfg["run"]["steps"] == 40 and cfg["run"]["name"] == f"sw-{job}_{task}"
    assert sorted(p.name for p in (work / "results").iterdir() if not p.name.startswith(".")) == [
        f"sw-{job}_0",
        f"sw-{job}_1",
    ]


@pytest.mark.slow
def test_warning_signal_requeues_and_resumes_to_the_uninterrupted_result(
    cluster: SlurmCluster, work: Path
) -> None:
    """USR1 to the batch shell (what --signal=B:USR1@120 sends before the time limit):
    checkpoint, exit 75, requeue, resume; the end is bit for bit the uninterrupted run's."""
    from mpiml.io import load_run

    sets = "run.steps=2000 checkpoint.every=50 run.eval_every=100"
    cut = _submit(cluster, work, TRAIN, ["-n", "4", "-J", "cut"], MPIML_SET=sets)
    full = _submit(cluster, work, TRAIN, ["-n", "4", "-J", "full"], MPIML_SET=sets)
    cut_dir, full_dir = work / "results" / f"cut-{cut}", work / "results" / f"full-{full}"
    cut_log = f"cut-{cut}.out"

    deadline = time.monotonic() + JOB_TIMEOUT
    while not (cluster.state(cut) == "RUNNING" and _has_checkpoint(cut_dir)):
        state = cluster.state(cut)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {cut} {state}\n{_log(work, cut_log)}"
        assert time.monotonic() < deadline, f"job {cut} never checkpointed\n{_log(work, cut_log)}"
        time.sleep(0.1)
    cluster.run("scancel", "--signal=USR1", "--batch", str(cut))
    t_signal = time.monotonic()

    deadline = time.monotonic() + JOB_TIMEOUT
    while cluster.requeue_count(cut) < 1:
        state = cluster.state(cut)
        assert state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), (
            f"job {cut} ended {state} without a requeue (the signal came too late?)\n{_log(work, cut_log)}"
        )
        assert time.monotonic() < deadline, f"job {cut} not requeued\n{_log(work, cut_log)}"
        time.sleep(0.2)
    _wait(cluster, cut, work, cut_log)
    t_done = time.monotonic()
    _wait(cluster, full, work, f"full-{full}.out")

    log = _log(work, cut_log)
    rec = cluster.show_job(cut)[0]
    assert int(rec["Restarts"]) >= 1, rec
    assert "warning signal" in log and "stopped at step" in log and "requeueing job" in log, log
    assert "(restart 1)" in log and f"resuming {cut_dir} at step" in log, log

    run = load_run(cut_dir)
    resumed = [int(s) for s in np.atleast_1d(run.attrs.get("resumed_at_steps", []))]
    assert resumed and all(0 < s < 2000 for s in resumed), (resumed, log)
    assert sorted(run.events) == [0, 1, 2, 3]
    assert not (work / "results" / f".cut-{cut}.stop").exists()
    a, b = _final_params(full_dir, 2000, 4), _final_params(cut_dir, 2000, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), "resumed run ended elsewhere"
    ra = load_run(full_dir)
    for name in ("loss", "test_loss", "accuracy"):
        assert np.array_equal(ra.metrics[name]["value"], run.metrics[name]["value"]), name
    print(f"requeue: signal to COMPLETED in {t_done - t_signal:.1f}s, resumed at {resumed}")


@pytest.mark.slow
def test_missing_job_file_fails_the_job_and_says_so(cluster: SlurmCluster, work: Path) -> None:
    job = _submit(cluster, work, TRAIN, ["-n", "4", "-J", "bad"], MPIML_JOB="/nonexistent.toml")
    _wait(cluster, job, work, f"bad-{job}.out", want="FAILED")
    log = _log(work, f"bad-{job}.out")
    assert "job file '/nonexistent.toml' does not exist" in log, log
    assert cluster.show_job(job)[0].get("ExitCode") == "2:0"
    assert not (work / "results" / f"bad-{job}").exists()


def _launch_line(tmp_path: Path, mpiml_set: str) -> tuple[subprocess.CompletedProcess[str], list[str] | None]:
    """Run train.sbatch outside SLURM with stand-in ``scontrol`` and ``mpiexec`` that
    record their arguments; returns the script's result and mpiexec's argv (None when
    the script stopped before launching)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    argv = tmp_path / "mpiexec.argv"
    argv.unlink(missing_ok=True)
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "mpiexec").write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > "{argv}"\nexit 0\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    (tmp_path / "model.hidden=3").touch()  # what an unquoted [32] would glob to
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPIML_", "SLURM_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHON=sys.executable,
        PYTHONPATH=str(REPO),
        SLURM_JOB_ID="7",
        SLURM_NTASKS="2",
        MPIML_LAUNCHER="mpiexec",
        MPIML_OUT=str(tmp_path / "results"),
        MPIML_SET=mpiml_set,
    )
    res = subprocess.run(
        ["bash", str(TRAIN)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    return res, (argv.read_text().split("\0")[:-1] if argv.exists() else None)


def _sets(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


def test_train_sbatch_passes_values_with_spaces_intact_and_unglobbed(tmp_path: Path) -> None:
    res, argv = _launch_line(tmp_path, "model.hidden=[32, 32] run.steps=20\n  model.init_scale=0.5")
    assert res.returncode == 0 and argv is not None, (res.stdout, res.stderr)
    assert _sets(argv) == [
        "model.hidden=[32, 32]",
        "run.steps=20",
        "model.init_scale=0.5",
        "run.name=mpiml-7",
    ]
    assert argv[:3] == ["-n", "2", sys.executable], argv
    res, argv = _launch_line(tmp_path, "model.hidden=[32]")  # a glob pattern that matches a file here
    assert res.returncode == 0 and argv is not None and _sets(argv)[0] == "model.hidden=[32]", (
        argv,
        res.stderr,
    )


def test_train_sbatch_names_mpiml_set_when_a_value_cannot_be_parsed(tmp_path: Path) -> None:
    res, argv = _launch_line(tmp_path, "run.steps=20 model.hidden=[32,")
    assert res.returncode == 2 and argv is None, (res.stdout, res.stderr)
    assert res.stderr.strip() == (
        "train.sbatch: MPIML_SET: model.hidden must be a list of integers (got '[32,', a string)"
    ), res.stderr
    res, argv = _launch_line(tmp_path, "[32] run.steps=2")
    assert res.returncode == 2 and argv is None, (res.stdout, res.stderr)
    assert res.stderr.strip() == "train.sbatch: MPIML_SET must start with section.key=value (got '[32]')"
