"""Helpers of the parameter server's launched tests (tests/test_ps_launch.py,
tests/test_ps_stop.py): the ``mpiml`` command, the repository, the time limit of one
job, and reading the one "stopped at step N" line. No MPI in this process."""

from __future__ import annotations

import re
import sys
from pathlib import Path

TIMEOUT = 120  # seconds for one launched job
MPIML = [sys.executable, "-m", "mpiml.cli"]
REPO = Path(__file__).resolve().parents[1]


def stopped_at(out: str, why: str) -> int:
    """The step of the single "mpiml: stopped at step N (why); ..." line of ``out``."""
    lines = [ln for ln in out.splitlines() if "stopped at step" in ln]
    assert len(lines) == 1, out
    m = re.fullmatch(
        rf"mpiml: stopped at step (\d+) \({re.escape(why)}\); checkpoint written; resume with --resume",
        lines[0],
    )
    assert m, lines
    return int(m.group(1))
