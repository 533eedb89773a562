"""One ``pytest`` runs everything: serial tests here, multi-rank tests under mpiexec.

Tests marked ``@pytest.mark.mpi`` (pytest-mpi) are not run in the serial session.
Instead, each test file that holds them becomes one test per rank count
(``[mpiexec -n 2]``, ``[mpiexec -n 4]``) that launches
``mpiexec -n N python -m mpi4py -m pytest --with-mpi FILE`` under a timeout that kills
every rank. Inside, each test has its own pytest-timeout (thread method: the stuck
rank dumps its stacks and exits, and mpiexec takes the others down), and an
exception on one rank aborts all of them (``python -m mpi4py``).

Run one file by hand: ``mpiexec -n 4 python -m mpi4py -m pytest --with-mpi tests/test_mpi_allreduce.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mpiml.testing import launch_env, python_command, run_ranks

RANK_COUNTS = (2, 4)
FILE_TIMEOUT = 300.0  # seconds for one file at one rank count, all its tests included
TEST_TIMEOUT = 120  # seconds per multi-rank test (pytest-timeout inside the ranks)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from mpiml.testing import mpi_flavor

    lines = [f"mpiexec flavour: {mpi_flavor()}"]
    if config.getoption("with_mpi", False):
        from mpi4py import MPI

        c = MPI.COMM_WORLD
        lines.append(
            f"MPI: {MPI.Get_library_version().splitlines()[0]}; rank {c.Get_rank()} of {c.Get_size()}"
        )
    return lines


class MPIFile(pytest.Item):
    """All mpi-marked tests of one file, run on ``n`` ranks."""

    def __init__(self, *, path: Path, n: int, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.file = path
        self.n = n

    def runtest(self) -> None:
        args = python_command(
            "-m",
            "pytest",
            "--with-mpi",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"--timeout={TEST_TIMEOUT}",
            "--timeout-method=thread",
            str(self.file),
        )
        env = launch_env()
        env["MPIML_TEST_RANKS"] = str(self.n)
        res = run_ranks(self.n, args, FILE_TIMEOUT, cwd=str(self.config.rootpath), env=env)
        if res.timed_out or res.returncode != 0:
            why = (
                f"timed out after {FILE_TIMEOUT:.0f}s (all ranks killed)"
                if res.timed_out
                else f"exit status {res.returncode}"
            )
            tail = (res.stdout[-12000:] + "\n--- stderr ---\n" + res.stderr[-6000:]).strip()
            raise MPIFailure(f"{self.n} ranks: {why}\n{tail}")
        summary = [ln for ln in res.stdout.splitlines() if " passed" in ln or " skipped" in ln]
        last = summary[-1] if summary else ""
        self.user_properties.append(("summary", last))
        if " passed" not in last:  # every test inside was skipped: say so, do not report a pass
            reasons = sorted(
                {ln.split("] ", 1)[-1] for ln in res.stdout.splitlines() if ln.startswith("SKIPPED")}
            )
            pytest.skip(f"{self.n} ranks: {last.strip(' =')}: {'; '.join(reasons)}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: object = None) -> str:
        if isinstance(excinfo.value, MPIFailure):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.file, 0, f"{self.file.name} [mpiexec -n {self.n}]"


class MPIFailure(Exception):
    pass


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.getoption("with_mpi", False):
        return  # inside mpiexec: pytest-mpi runs the marked tests
    keep, files, counts = [], {}, {}
    for item in items:
        if item.get_closest_marker("mpi") is not None:
            path = Path(str(item.fspath))
            files.setdefault(path, item.parent)
            # a file may ask for other rank counts: RANK_COUNTS = (2, 4, 8)
            counts.setdefault(path, getattr(getattr(item, "module", None), "RANK_COUNTS", RANK_COUNTS))
        else:
            keep.append(item)
    for path, parent in files.items():
        for n in counts[path]:
            keep.append(MPIFile.from_parent(parent, name=f"mpiexec -n {n}", path=path, n=n))
    items[:] = keep


@pytest.fixture
def comm():  # type: ignore[no-untyped-def]
    """mpiml's communicator (a duplicate of COMM_WORLD) inside an MPI test."""
    from mpiml.comm import default_comm

    return default_comm()


os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.dont_write_bytecode = True


@pytest.fixture
def shared_tmp(comm):  # type: ignore[no-untyped-def]
    """A temporary folder made by rank 0 and shared by every rank (removed afterwards)."""
    import shutil
    import tempfile

    path = comm.bcast(tempfile.mkdtemp(prefix="mpiml-test-") if comm.Get_rank() == 0 else None, root=0)
    yield Path(path)
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
