"""Start-up: the digits come from mpiml's own data file (the same arrays as
scikit-learn's), ``mpiml train`` imports no heavy module a job does not need, and the
first things a user sees say what they should (a one-rank hint, ``--version``).

Timings are measured in benchmarks/startup.py, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mpiml
from mpiml.testing import launch_env, run_ranks

ROOT = Path(__file__).parents[1]
MPIML = [sys.executable, "-m", "mpiml.cli"]
TIMEOUT = 120
HEAVY = ("sklearn", "scipy", "matplotlib", "pandas", "numba")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env or launch_env(),
        timeout=TIMEOUT,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_digits_are_the_arrays_scikit_learn_gives() -> None:
    datasets = pytest.importorskip(
        "sklearn.datasets", reason="scikit-learn (the test extra) compares the data"
    )
    from mpiml.data.digits import digits_arrays

    x, y = digits_arrays()
    ref_x, ref_y = datasets.load_digits(return_X_y=True)
    assert x.dtype == np.float64 and x.shape == (1797, 64) and x.flags.c_contiguous
    assert y.dtype == np.int64 and y.shape == (1797,)
    assert x.tobytes() == np.ascontiguousarray(ref_x, dtype=np.float64).tobytes()  # bit for bit, same order
    assert np.array_equal(y, ref_y.astype(np.int64))


def test_the_data_file_and_its_licence_note_are_package_data() -> None:
    setup_cfg = (ROOT / "setup.cfg").read_text()
    assert "mpiml.data = digits.csv.gz, digits.README.md" in setup_cfg
    note = (ROOT / "mpiml" / "data" / "digits.README.md").read_text()
    assert "CC BY 4.0" in note and "10.24432/C50P49" in note


def test_loading_digits_imports_no_scikit_learn() -> None:
    code = (
        "import sys; from mpiml.data import load_digits; ds = load_digits(0.2, 0); "
        "print(len(ds.x_train) + len(ds.x_test), 'sklearn' in sys.modules)"
    )
    assert _python(code).split() == ["1797", "False"]


def test_train_print_job_imports_no_heavy_module() -> None:
    """`mpiml train` decides what the job needs before importing it: the default job
    (no codec, no gossip, no data frame, no plot) reaches the point where the job is
    known without scipy, numba, scikit-learn, matplotlib or pandas."""
    from mpiml.compress import _kernels

    env = launch_env()
    if "KERNELS" in vars(
        _kernels
    ):  # kernels chosen (numba imported) at import: before the lazy-kernels change
        env["MPIML_COMPRESS_KERNELS"] = "numpy"
    code = (
        "import io, sys, contextlib; from mpiml.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()): rc = main(['train', '--print-job'])\n"
        f"print(rc, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert _python(code, env=env).strip() == "0 []"


def test_version() -> None:
    out = subprocess.run([*MPIML, "--version"], capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"mpiml {mpiml.__version__}"


def _train_alone(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mpiml train` without mpiexec (a singleton MPI process), 2 steps."""
    cmd = [*MPIML, "train", "--out", str(tmp / "results"), "--set", "run.steps=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=launch_env(), timeout=TIMEOUT)


def test_one_rank_gets_a_hint_naming_mpiexec(tmp_path: Path) -> None:
    out = _train_alone(tmp_path, "--set", "run.name=alone")
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stdout.splitlines() if line.startswith("mpiml: note:")]
    assert len(notes) == 1 and "running on 1 rank;" in notes[0]
    assert "`mpiexec -n 4 mpiml train --out" in notes[0] and "run.name=alone" in notes[0]
    header = out.stdout.splitlines()[1]
    assert " on 1 rank " in header and "1 ranks" not in out.stdout + out.stderr


def test_no_hint_when_the_job_asks_for_one_rank_or_runs_on_more(tmp_path: Path) -> None:
    out = _train_alone(tmp_path, "--set", "run.world_size=1")
    assert out.returncode == 0, out.stderr
    assert "mpiml: note" not in out.stdout + out.stderr
    res = run_ranks(
        2,
        [*MPIML, "train", "--out", str(tmp_path / "r2"), "--set", "run.steps=2"],
        TIMEOUT,
        cwd=str(tmp_path),
    )
    assert res.returncode == 0 and not res.timed_out, res.stderr
    assert "mpiml: note" not in res.stderr and " on 2 ranks " in res.stdout


def test_on_one_rank_a_job_error_is_still_one_line_on_stderr(tmp_path: Path) -> None:
    out = _train_alone(tmp_path, "--set", "data.name=hdf5", "--set", "data.path=nowhere.h5")
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "data.path" in lines[0], out.stderr
