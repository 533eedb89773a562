"""The ``mpiml`` command under mpiexec: bad jobs fail cleanly on every rank, an
exception on one rank aborts the job, the default job trains, resume works from the CLI."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiml.testing import run_ranks

TIMEOUT = 120
MPIML = [sys.executable, "-m", "mpiml.cli"]


def _tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _train(tmp: Path, *args: str, n: int = 2) -> tuple[int, str, str]:
    res = run_ranks(n, [*MPIML, "train", *args, "--out", str(tmp / "results")], TIMEOUT, cwd=str(tmp))
    assert not res.timed_out, f"hung: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.returncode, res.stdout, res.stderr


BAD_JOBS = [
    ("malformed.toml", "[run\nsteps = 1\n", "is not valid TOML"),
    ("unknown_section.toml", "[runn]\nsteps = 1\n", "unknown section [runn]"),
    ("unknown_key.toml", "[run]\nstepz = 1\n", "unknown key run.stepz"),
    ("zero_steps.toml", "[run]\nsteps = 0\n", "run.steps must be >= 1 (got 0)"),
    ("negative_lr.toml", "[optimizer]\nlr = -1.0\n", "optimizer.lr must be > 0.0 (got -1.0)"),
    ("wrong_type.toml", '[data]\nbatch_size = "big"\n', "data.batch_size must be an integer"),
    (
        "batch_too_large.toml",
        "[data]\nbatch_size = 5000\n",
        "data.batch_size = 5000 is larger than the smallest shard",
    ),
    (
        "missing_data_file.toml",
        '[data]\nname = "hdf5"\npath = "nowhere.h5"\n',
        "data.path 'nowhere.h5' does not exist",
    ),
    ("no_x.toml", '[data]\nname = "hdf5"\npath = "nox.h5"\n', "has no dataset /x"),
    ("world_size.toml", "[run]\nworld_size = 3\n", "run.world_size = 3 but the job runs on"),
    ("bad_optimizer.toml", '[optimizer]\nname = "lbfgs"\n', "optimizer.name must be one of"),
    ("bad_dtype.toml", '[model]\ndtype = "float16"\n', "model.dtype must be one of 'float32', 'float64'"),
    ("strings_x.toml", '[data]\nname = "hdf5"\npath = "strx.h5"\n', "/x in 'strx.h5' must hold numbers"),
    ("binary.toml", "\udcff\udcfe binary", "is not UTF-8 text"),
    (
        "delay_ge_tau.toml",
        '[algorithm]\nname = "dasgd"\ntau = 4\ndelay = 4\n',
        "algorithm.delay must be < algorithm.tau (got delay=4, tau=4)",
    ),
    (
        "negative_delay.toml",
        '[algorithm]\nname = "dasgd"\ndelay = -1\n',
        "algorithm.delay must be >= 0 (got -1)",
    ),
    (
        "xi_above_one.toml",
        '[algorithm]\nname = "dasgd"\nxi = 1.5\n',
        "algorithm.xi must be in [0.0, 1.0] (got 1.5)",
    ),
    (
        "xi_negative.toml",
        '[algorithm]\nname = "dasgd"\nxi = -0.1\n',
        "algorithm.xi must be in [0.0, 1.0] (got -0.1)",
    ),
    ("tau_zero.toml", '[algorithm]\nname = "local_sgd"\ntau = 0\n', "algorithm.tau must be >= 1 (got 0)"),
    (
        "library_progress.toml",
        '[algorithm]\nname = "dasgd"\nprogress = "library"\n',
        "export MPIR_CVAR_ASYNC_PROGRESS=1",
    ),
    (
        "quantized_uncompressed.toml",
        '[algorithm]\nname = "qpr_sgd"\n[compression]\ncodec = "none"\n',
        "compression.codec = 'none' contradicts algorithm.name = 'qpr_sgd'",
    ),
    (  # odd index: runs on 4 ranks, where one-peer exponential changes every round
        "dcd_time_varying.toml",
        '[algorithm]\nname = "dqpr_sgd"\ntopology = "one_peer_exponential"\n',
        "compressed gossip (Algorithm 2, DCD) keeps copies of its neighbours' models and needs a static one",
    ),
]


@pytest.mark.parametrize(
    ("name", "text", "message", "n"),
    [(*b, 2 + 2 * (i % 2)) for i, b in enumerate(BAD_JOBS)],  # half on 2 ranks, half on 4
    ids=[b[0] for b in BAD_JOBS],
)
def test_bad_job_fails_cleanly_on_every_rank(
    tmp_path: Path, name: str, text: str, message: str, n: int
) -> None:
    with h5py.File(tmp_path / "nox.h5", "w") as f:
        f["y"] = np.zeros(10, np.int64)
    with h5py.File(tmp_path / "strx.h5", "w") as f:
        f["x"] = np.array([b"a", b"b"] * 5)
        f["y"] = np.zeros(10, np.int64)
    # an earlier run of the same name must survive untouched
    old = tmp_path / "results" / "default"
    old.mkdir(parents=True)
    (old / "run.h5").write_bytes(b"earlier run")
    before = _tree_digest(tmp_path / "results")
    job = tmp_path / name
    body = text + ('\n[run]\nname = "default"\n' if "[run]" not in text else "")
    job.write_bytes(body.encode("utf-8", "surrogateescape"))
    code, out, err = _train(tmp_path, str(job), n=n)
    assert code == 2, (code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # rank 0 prints the one line; every rank exits 2 (mpiexec returns the worst exit status)
    assert lines == [lines[0]] and lines[0].startswith("mpiml: error: ") and message in lines[0], err
    assert "Traceback" not in err + out
    assert _tree_digest(tmp_path / "results") == before


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    args = ["--set", "run.name=x", "--set", "run.steps=20", "--set", "checkpoint.every=0"]
    assert _train(tmp_path, *args)[0] == 0
    code, _, err = _train(tmp_path, *args)
    assert code == 2 and "already holds a run; use --resume" in err
    assert _train(tmp_path, *args, "--overwrite")[0] == 0


def test_resume_without_checkpoint_is_an_error(tmp_path: Path) -> None:
    code, _, err = _train(tmp_path, "--resume", "--set", "run.steps=5")
    assert code == 2 and "--resume: no checkpoint in" in err and "Traceback" not in err


def test_resume_skips_a_truncated_checkpoint_and_rejects_another_world_size(tmp_path: Path) -> None:
    args = ["--set", "run.steps=30", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *args)[0] == 0
    ckdir = tmp_path / "results" / "default" / "checkpoints"
    newest = ckdir / "step-000000030" / "rank-00001.h5"
    newest.write_bytes(newest.read_bytes()[:100])
    code, out, err = _train(tmp_path, *args, "--resume")
    assert code == 0, err
    assert "skipping checkpoint" in err and "rank-00001.h5 cannot be read" in err
    assert "resuming" in out and "at step 20" in out
    code, _, err = _train(tmp_path, *args, "--resume", n=4)
    assert code == 2 and "written by 2 ranks, this job has 4" in err


def test_resume_with_an_incompatible_job_names_the_fields(tmp_path: Path) -> None:
    args = ["--set", "run.steps=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *args)[0] == 0
    code, _, err = _train(tmp_path, *args, "--set", "optimizer.lr=0.5", "--resume")
    assert code == 2 and "optimizer.lr (0.05 in the checkpoint, 0.5 now)" in err


ABORT_SCRIPT = """
import sys, time
from mpi4py import MPI
from mpiml.comm import install_abort_handler
install_abort_handler()
comm = MPI.COMM_WORLD
if comm.Get_rank() == 1:
    raise RuntimeError("injected failure on rank 1")
comm.Barrier()   # the others would wait here forever
"""


@pytest.mark.parametrize("n", [2, 4])
def test_exception_on_one_rank_aborts_the_job(tmp_path: Path, n: int) -> None:
    script = tmp_path / "fail.py"
    script.write_text(ABORT_SCRIPT)
    res = run_ranks(n, [sys.executable, str(script)], 60, cwd=str(tmp_path))
    assert not res.timed_out, "the job hung instead of aborting"
    assert res.returncode != 0
    assert (
        res.stderr.count("RuntimeError: injected failure on rank 1") == 1 and "[mpiml rank 1]" in res.stderr
    )


def test_default_job_reaches_095_and_writes_the_run_file(tmp_path: Path) -> None:
    res = run_ranks(4, [*MPIML, "train", "--out", str(tmp_path / "results")], 300, cwd=str(tmp_path))
    assert res.returncode == 0 and not res.timed_out, res.stderr
    assert "run file:" in res.stdout and "compute" in res.stdout and "wait" in res.stdout
    from mpiml.io import load_run

    run = load_run(tmp_path / "results" / "default" / "run.h5")
    steps, acc = run.metric("accuracy")
    assert acc[-1] >= 0.95 and steps[-1] == run.config["run"]["steps"]
    assert sorted(run.events) == [0, 1, 2, 3] and not run.missing_ranks
    for ev in run.events.values():
        kinds = set(ev["kind"])
        assert {"compute", "update", "iallreduce", "wait", "merge"} <= kinds  # the default job is dasgd
        assert np.all(ev["t_end"] >= ev["t_start"]) and np.all(np.diff(ev["step"]) >= 0)
    _, bytes_sent = run.metric("bytes_sent")
    assert np.all(np.diff(bytes_sent) > 0)
    _, dist = run.metric("consensus_distance")
    assert np.all(dist >= 0.0) and np.any(dist > 0.0)  # local steps: the ranks' models differ between merges


def test_info_reports_the_setup(tmp_path: Path) -> None:
    res = run_ranks(2, [*MPIML, "info"], 60, cwd=str(tmp_path))
    assert res.returncode == 0
    for field in (
        "MPI library",
        "ranks           2 on 1 host(s)",
        "thread level",
        "CUDA-aware MPI",
        "parallel HDF5",
        "cupy",
        "codec kernels   numba",
    ):
        assert field in res.stdout, res.stdout


def test_pandas_and_h5py_read_the_run_file_as_it_is(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra; install mpiml[test]")
    # dpsgd on 2 ranks: a ring round each step, one send and one recv per step and rank
    args = ("--set", "run.steps=10", "--set", "run.eval_every=5", "--set", "algorithm.name=dpsgd")
    assert _train(tmp_path, *args)[0] == 0
    with h5py.File(tmp_path / "results" / "default" / "run.h5", "r") as f:
        events = pd.DataFrame(f["ranks/1/events"][()])
        loss = pd.DataFrame(f["metrics/loss"][()])
        kinds = pd.DataFrame(f["kinds"][()])
        schema, layout = f.attrs["schema"], f.attrs["layout"]
    columns = ["step", "kind", "t_start", "t_end", "nbytes", "peer", "msg"]
    assert list(events.columns) == columns and len(events) > 10
    assert list(loss["step"]) == [5, 10]
    assert schema == "mpiml-run/2" and isinstance(layout, str)
    # the kinds table: plain fixed-width byte strings, one row per kind
    assert list(kinds.columns) == ["name", "category", "doc"]
    cats = dict(zip(kinds["name"].str.decode("ascii"), kinds["category"].str.decode("ascii"), strict=True))
    assert cats["send"] == cats["recv"] == cats["gossip"] == "in_flight" and cats["compute"] == "compute"
    # rank 1's messages to (from) rank 0: ids 0..9, one per step
    for kind in (b"send", b"recv"):
        rows = events[events["kind"] == kind]
        assert list(rows["msg"]) == list(range(10)) and set(rows["peer"]) == {0}, rows
    assert set(events[~events["kind"].isin([b"send", b"recv"])]["msg"]) == {-1}
    shutil.rmtree(tmp_path / "results")


EXAMPLES = sorted(Path(__file__).parents[1].joinpath("examples").glob("*.toml"))


@pytest.mark.parametrize("job", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_runs_as_written(tmp_path: Path, job: Path) -> None:
    res = run_ranks(4, [*MPIML, "train", str(job), "--out", str(tmp_path)], 300, cwd=str(tmp_path))
    assert res.returncode == 0 and not res.timed_out, res.stderr[-3000:]
    assert "run file:" in res.stdout


def test_h5dump_reads_the_run_file_through_its_links(tmp_path: Path) -> None:
    import subprocess

    h5dump = shutil.which("h5dump")
    if h5dump is None:
        pytest.skip("h5dump not installed (Debian: apt-get install hdf5-tools; .ci/run installs it)")
    assert _train(tmp_path, "--set", "run.steps=4", "--set", "run.eval_every=2")[0] == 0
    out = subprocess.run(
        [
            h5dump,
            "-d",
            "/ranks/1/events",
            "-d",
            "/kinds",
            "-a",
            "/layout",
            str(tmp_path / "results" / "default" / "run.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert out.returncode == 0 and '"iallreduce' in out.stdout and 'H5T_STD_I64LE "step"' in out.stdout
    assert (
        'H5T_STD_I64LE "msg"' in out.stdout
        and 'DATASET "/kinds"' in out.stdout
        and '"in_flight' in out.stdout
    )
    assert 'ATTRIBUTE "layout"' in out.stdout


def test_a_crash_loses_at_most_one_flush_interval(tmp_path: Path) -> None:
    """Rank 2 fails at step 35 (MPIML_FAIL_AT); files are flushed every 10 steps."""
    import os

    from mpiml.io import load_run

    env = dict(os.environ, MPIML_FAIL_AT="2:35")
    args = ["train", "--set", "run.steps=100", "--set", "run.eval_every=5", "--set", "trace.flush_every=10"]
    res = run_ranks(4, [*MPIML, *args, "--out", str(tmp_path)], TIMEOUT, cwd=str(tmp_path), env=env)
    assert not res.timed_out and res.returncode != 0
    assert "injected failure on rank 2 at step 35" in res.stderr and "[mpiml rank 2]" in res.stderr
    run = load_run(tmp_path / "default")
    assert run.events[2]["step"].max() == 34  # the failing rank flushed everything on its way out
    for r in (0, 1, 3):  # the others were killed: they lose at most the steps since their last flush
        assert run.events[r]["step"].max() >= 29
    steps, _ = run.metric("loss")
    assert steps.max() >= 30


def test_argument_errors_are_printed_once(tmp_path: Path) -> None:
    res = run_ranks(3, [*MPIML, "train", "--resume", "--overwrite"], 60, cwd=str(tmp_path))
    assert res.returncode == 2 and res.stderr.count("not allowed with argument --resume") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "/etc/hostname/results"], "'/etc/hostname' is not a folder"),
        (["examples"], "job file 'examples' is not a file"),
    ],
)
def test_bad_arguments_fail_cleanly(tmp_path: Path, args: list[str], message: str) -> None:
    res = run_ranks(2, [*MPIML, "train", *args], 60, cwd=str(Path(__file__).parents[1]))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr, res.stderr


def _final_params(run_dir: Path, step: int, ranks: int) -> list[np.ndarray]:
    from mpiml.io import checkpoint as ckpt

    return [
        ckpt.read_rank(ckpt.rank_path(run_dir / "checkpoints", step, r))[0]["params"] for r in range(ranks)
    ]


def test_crash_then_resume_ends_where_the_uninterrupted_run_ends(tmp_path: Path) -> None:
    """A run killed by a failure at step 45 and resumed from its step-40 checkpoint ends
    with the same parameters, bit for bit, and the same metric tables as a run never stopped."""
    import os

    from mpiml.io import load_run

    job = [
        "--set",
        "run.steps=60",
        "--set",
        "run.eval_every=7",
        "--set",
        "checkpoint.every=20",
        "--set",
        "data.partition=dirichlet",
        "--set",
        "optimizer.name=adam",
        "--set",
        "optimizer.lr=0.003",
    ]
    out = str(tmp_path)
    full = run_ranks(4, [*MPIML, "train", *job, "--set", "run.name=full", "--out", out], TIMEOUT, cwd=out)
    assert full.returncode == 0, full.stderr
    env = dict(os.environ, MPIML_FAIL_AT="1:45")
    crash = run_ranks(
        4, [*MPIML, "train", *job, "--set", "run.name=cut", "--out", out], TIMEOUT, cwd=out, env=env
    )
    assert crash.returncode != 0 and not crash.timed_out
    resumed = run_ranks(
        4, [*MPIML, "train", *job, "--set", "run.name=cut", "--out", out, "--resume"], TIMEOUT, cwd=out
    )
    assert resumed.returncode == 0 and "at step 40" in resumed.stdout, resumed.stderr
    a, b = _final_params(tmp_path / "full", 60, 4), _final_params(tmp_path / "cut", 60, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    ra, rb = load_run(tmp_path / "full"), load_run(tmp_path / "cut")
    for name in ("loss", "test_loss", "accuracy", "bytes_sent"):
        assert np.array_equal(ra.metrics[name]["step"], rb.metrics[name]["step"]), name
        assert np.array_equal(ra.metrics[name]["value"], rb.metrics[name]["value"]), name
    for r in range(4):
        ka, kb = (np.unique(run.events[r]["kind"], return_counts=True) for run in (ra, rb))
        assert np.array_equal(ka[0], kb[0]) and np.array_equal(ka[1], kb[1])
        assert np.all(np.diff(rb.events[r]["t_start"]) >= 0)  # the run clock goes on across the resume
    assert list(rb.attrs["resumed_at_steps"]) == [40]


def test_resume_past_run_steps_is_refused(tmp_path: Path) -> None:
    args = ["--set", "run.steps=40", "--set", "checkpoint.every=20"]
    assert _train(tmp_path, *args)[0] == 0
    code, _, err = _train(tmp_path, "--set", "run.steps=10", "--set", "checkpoint.every=20", "--resume")
    assert code == 2 and "is past run.steps = 10" in err


def test_resume_moves_a_damaged_run_file_aside(tmp_path: Path) -> None:
    args = ["--set", "run.steps=20", "--set", "run.eval_every=10", "--set", "checkpoint.every=10"]
    assert _train(tmp_path, *args)[0] == 0
    run_h5 = tmp_path / "results" / "default" / "run.h5"
    damaged = run_h5.read_bytes()[:300]
    run_h5.write_bytes(damaged)
    code, out, err = _train(tmp_path, *args, "--set", "run.steps=30", "--resume")
    assert code == 0, err
    assert "could not be opened" in err and "moved to run.h5.damaged-0" in err
    assert (run_h5.parent / "run.h5.damaged-0").read_bytes() == damaged  # kept, not deleted
    from mpiml.io import load_run

    run = load_run(run_h5)
    assert list(run.metric("loss")[0]) == [30] and sorted(run.events) == [0, 1]


def test_plan_subcommand_needs_no_mpiexec() -> None:
    import subprocess

    res = subprocess.run(
        [*MPIML, "plan", "--tp", "100", "--tc", "150", "--workers", "4", "--local-batch", "16"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    # eq. 3: the smallest d with t_c < d t_p is 2; tau = d + 1 (§VI.D); eq. 6 step = t_p
    assert "delay          2" in res.stdout and "tau            3" in res.stdout
    assert "100.00" in res.stdout.split("DaSGD")[-1]
    bad = subprocess.run(
        [*MPIML, "plan", "--tp", "-1", "--tc", "1"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "tp" in bad.stderr


def test_stop_file_checkpoints_and_auto_resume_finishes_bit_for_bit(tmp_path: Path) -> None:
    """What a requeued SLURM job does: stop on request, then --auto-resume."""
    import os

    job = ["--set", "run.steps=60", "--set", "run.eval_every=20", "--set", "checkpoint.every=0"]
    out = str(tmp_path)
    fresh = run_ranks(
        2, [*MPIML, "train", *job, "--set", "run.name=a", "--out", out, "--auto-resume"], TIMEOUT, cwd=out
    )
    assert (
        fresh.returncode == 0
        and "no checkpoint in" in fresh.stdout
        and "starting from scratch" in fresh.stdout
    )
    stop = tmp_path / "STOP"
    stop.touch()  # present from the start: the run stops at the first check (step 10)
    env = dict(os.environ, MPIML_STOP_FILE=str(stop))
    cut = run_ranks(
        2, [*MPIML, "train", *job, "--set", "run.name=b", "--out", out], TIMEOUT, cwd=out, env=env
    )
    assert cut.returncode == 75 and "stopped at step 10" in cut.stdout, (cut.stdout, cut.stderr)
    stop.unlink()
    again = run_ranks(
        2, [*MPIML, "train", *job, "--set", "run.name=b", "--out", out, "--auto-resume"], TIMEOUT, cwd=out
    )
    assert again.returncode == 0 and "resuming" in again.stdout and "at step 10" in again.stdout
    from mpiml.io import load_run

    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    assert np.array_equal(a.metrics["test_loss"]["value"], b.metrics["test_loss"]["value"])
    assert list(b.attrs["resumed_at_steps"]) == [10]


def test_a_key_the_algorithm_does_not_read_is_reported_once_and_still_checked(tmp_path: Path) -> None:
    """dasgd reads no topology: a valid one is a note (once, from rank 0); a misspelt one
    is still an error naming the allowed topologies."""
    code, out, err = _train(tmp_path, "--set", "algorithm.topology=ring", "--set", "run.steps=4")
    assert code == 0, err
    assert out.count("mpiml: note: algorithm.topology is not used by dasgd (ignored)") == 1, out
    code, out, err = _train(tmp_path, "--set", "algorithm.topology=rign", "--set", "run.steps=4")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "algorithm.topology" in lines[0] and "ring" in lines[0], err
