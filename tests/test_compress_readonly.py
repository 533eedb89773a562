"""A read-only install imports mpiml and trains (issue 16, item 9): importing the package
imports no numba, and a numba that cannot cache (no writable cache folder anywhere) falls
back to the numpy kernels with one line on stderr instead of aborting the job.

The install is made read-only by copying the package into a folder without write bits,
with NUMBA_CACHE_DIR and HOME read-only too. As root, permission bits do not bind, so the
subprocess runs under ``capsh`` with the capabilities that bypass them dropped (skipped,
with the reason, where root has no capsh)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _read_only(path: Path) -> None:
    for p in [path, *path.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _unprivileged(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    capsh = shutil.which("capsh")
    if capsh is None:
        pytest.skip("running as root without capsh: cannot make permission bits bind")
    drop = "cap_dac_override,cap_dac_read_search,cap_fowner"
    return [capsh, f"--drop={drop}", "--", "-c", shlex.join(cmd)]


@pytest.fixture
def read_only_install(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    base = tmp_path / "ro"
    pkg, cache, home, out = base / "pkg", base / "numba-cache", base / "home", base / "out"
    for p in (pkg, cache, home, out):
        p.mkdir(parents=True)
    shutil.copytree(ROOT / "mpiml", pkg / "mpiml", ignore=shutil.ignore_patterns("__pycache__"))
    for p in (pkg, cache, home):
        _read_only(p)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(pkg),
        "NUMBA_CACHE_DIR": str(cache),
        "HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    yield out, env
    for p in [base, *base.rglob("*")]:  # let pytest clean up
        if p.is_dir():
            p.chmod(0o755)


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _unprivileged(cmd), env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


QSGD_ENCODE = """
import sys
import numpy as np
import mpiml.protocols
assert "numba" not in sys.modules, "importing mpiml.protocols imported numba"
import mpiml.compress as c
x = np.linspace(-1.0, 1.0, 1000).astype(np.float32)
q = c.QSGD(seed=1)
y = q.decode(q.encode(x))
assert y.shape == x.shape and np.isfinite(y).all()
print("kernels", c.KERNELS)
"""


def test_read_only_install_encodes_with_one_warning(read_only_install: tuple[Path, dict[str, str]]) -> None:
    out, env = read_only_install
    res = _run([sys.executable, "-c", QSGD_ENCODE], env, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "kernels" in res.stdout
    warnings = [line for line in res.stderr.splitlines() if line.strip()]
    if "kernels numpy" in res.stdout:  # numba could not cache: one line says so, nothing else
        assert len(warnings) == 1 and "using the numpy kernels" in warnings[0], res.stderr
    else:
        assert warnings == [], res.stderr


def test_read_only_install_trains_sgd(read_only_install: tuple[Path, dict[str, str]]) -> None:
    out, env = read_only_install
    cmd = [sys.executable, "-m", "mpiml.cli", "train", "--out", str(out)]
    cmd += ["--set", "algorithm.name=sgd", "--set", "run.steps=10", "--set", "run.eval_every=10"]
    cmd += ["--set", "run.name=ro"]
    res = _run(cmd, env, out)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "done in" in res.stdout
    assert "numba" not in res.stderr, res.stderr


def test_importing_config_and_algorithms_imports_no_numba() -> None:
    code = (
        "import sys; import mpiml.config, mpiml.algorithms, mpiml.protocols, mpiml.compress, mpiml.run; "
        "print(sorted(m for m in sys.modules if m == 'numba' or m.startswith('numba.')))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
